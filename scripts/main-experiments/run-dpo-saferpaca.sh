#!/usr/bin/env bash
# SaferPaca SFT+DPO: weak labels and pairs sampled at temperature 1.0, 4 epochs.
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-saferpaca}
export BETA=${BETA:-0.1}
export SUBSAMPLE=${SUBSAMPLE:-0.15}
export LABEL_TEMP=${LABEL_TEMP:-1.0}
export EPOCHS=${EPOCHS:-4}
export WEAK_EPOCHS=${WEAK_EPOCHS:-4}
export WEAK_FLAGS=${WEAK_FLAGS:---label_temp=1.0}
exec bash "$(dirname "$0")/../sft_dpo.sh" "$@"
