#!/usr/bin/env bash
# GSM8K SFT+ILR: gemma-2b weak labels, Mistral-7B strong, max_replace 0.15, 6 rounds.
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-gsm8k}
export REFINER=${REFINER:-ilr}
export MAX_REPLACE=${MAX_REPLACE:-0.15}
exec bash "$(dirname "$0")/../sft_ilr.sh" "$@"
