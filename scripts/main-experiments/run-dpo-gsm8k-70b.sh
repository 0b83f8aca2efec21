#!/usr/bin/env bash
# GSM8K SFT+DPO with a Llama-3-70B strong model; Mistral-7B is weak model and evaluator base.
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-gsm8k}
export BETA=${BETA:-0.1}
export SUBSAMPLE=${SUBSAMPLE:-0.15}
export WEAK_MODEL=${WEAK_MODEL:-mistralai/Mistral-7B-v0.1}
export EVALUATOR_MODEL=${EVALUATOR_MODEL:-mistralai/Mistral-7B-v0.1}
export STRONG_MODEL=${STRONG_MODEL:-meta-llama/Meta-Llama-3-70B}
exec bash "$(dirname "$0")/../sft_dpo.sh" "$@"
