#!/usr/bin/env bash
# GSM8K SFT+ILR with the two half-data jobs of each round at once on one large GPU.
# The settings are those of ../run-ilr-gsm8k.sh (one place); only PARALLEL differs.
set -euo pipefail
export PARALLEL=${PARALLEL:-1}
exec bash "$(dirname "$0")/../run-ilr-gsm8k.sh" "$@"
