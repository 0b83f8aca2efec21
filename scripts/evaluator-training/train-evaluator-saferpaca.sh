#!/usr/bin/env bash
# SaferPaca evaluator from a general-only and a safety-only gemma-2b model (4 epochs each).
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-saferpaca}
export EVALUATOR_MODEL=${EVALUATOR_MODEL:-google/gemma-2b}
export GT_EPOCHS=${GT_EPOCHS:-4}
exec bash "$(dirname "$0")/../evaluator.sh" "$@"
