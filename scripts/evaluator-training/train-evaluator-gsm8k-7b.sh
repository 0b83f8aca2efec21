#!/usr/bin/env bash
# GSM8K evaluator on Mistral-7B, for the 70B runs (weak model and evaluator are Mistral-7B).
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-gsm8k}
export EVALUATOR_MODEL=${EVALUATOR_MODEL:-mistralai/Mistral-7B-v0.1}
exec bash "$(dirname "$0")/../evaluator.sh" "$@"
