#!/usr/bin/env bash
# BIRD SFT+DPO with oracle comparisons.
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-bird}
export BETA=${BETA:-0.1}
export SUBSAMPLE=${SUBSAMPLE:-0.15}
export STRONG_MODEL=${STRONG_MODEL:-meta-llama/Meta-Llama-3-70B}
export ORACLE=${ORACLE:-1}
exec bash "$(dirname "$0")/../sft_dpo.sh" "$@"
