#!/usr/bin/env bash
# SaferPaca SFT+ILR: 4 epochs (the task entry samples weak labels and proposals at temperature 1.0).
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-saferpaca}
export REFINER=${REFINER:-ilr}
export MAX_REPLACE=${MAX_REPLACE:-0.15}
export EPOCHS=${EPOCHS:-4}
export WEAK_EPOCHS=${WEAK_EPOCHS:-4}
exec bash "$(dirname "$0")/../sft_ilr.sh" "$@"
