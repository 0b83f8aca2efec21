#!/usr/bin/env bash
# GSM8K SFT+ILR from correct demonstrations with oracle comparisons (corora).
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-gsm8k}
export REFINER=${REFINER:-ilr}
export MAX_REPLACE=${MAX_REPLACE:-0.15}
export ORACLE=${ORACLE:-1}
export CORRECT=${CORRECT:-1}
exec bash "$(dirname "$0")/../sft_ilr.sh" "$@"
