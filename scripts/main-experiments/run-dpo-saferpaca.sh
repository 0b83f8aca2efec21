#!/usr/bin/env bash
# SaferPaca SFT+DPO: 4 epochs (the task entry samples weak labels and pairs at temperature 1.0).
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-saferpaca}
export BETA=${BETA:-0.1}
export SUBSAMPLE=${SUBSAMPLE:-0.15}
export EPOCHS=${EPOCHS:-4}
export WEAK_EPOCHS=${WEAK_EPOCHS:-4}
exec bash "$(dirname "$0")/../sft_dpo.sh" "$@"
