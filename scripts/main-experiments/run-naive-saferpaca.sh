#!/usr/bin/env bash
# SaferPaca naive ILR: weak labels and proposals sampled at temperature 1.0, 4 epochs.
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-saferpaca}
export REFINER=${REFINER:-naive}
export MAX_REPLACE=${MAX_REPLACE:-0.15}
export PROPOSAL_TEMP=${PROPOSAL_TEMP:-1.0}
export EPOCHS=${EPOCHS:-4}
export WEAK_EPOCHS=${WEAK_EPOCHS:-4}
export WEAK_FLAGS=${WEAK_FLAGS:---label_temp=1.0}
exec bash "$(dirname "$0")/../sft_ilr.sh" "$@"
