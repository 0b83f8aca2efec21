#!/usr/bin/env bash
# GSM8K SFT+DPO with oracle comparisons (ora).
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-gsm8k}
export BETA=${BETA:-0.1}
export SUBSAMPLE=${SUBSAMPLE:-0.15}
export ORACLE=${ORACLE:-1}
exec bash "$(dirname "$0")/../sft_dpo.sh" "$@"
