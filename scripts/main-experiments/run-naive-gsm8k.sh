#!/usr/bin/env bash
# GSM8K naive ILR: random replacement by proposals, no feedback.
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-gsm8k}
export REFINER=${REFINER:-naive}
export MAX_REPLACE=${MAX_REPLACE:-0.15}
exec bash "$(dirname "$0")/../sft_ilr.sh" "$@"
