#!/usr/bin/env bash
# GSM8K evaluator on gemma-2b.
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-gsm8k}
export EVALUATOR_MODEL=${EVALUATOR_MODEL:-google/gemma-2b}
exec bash "$(dirname "$0")/../evaluator.sh" "$@"
