#!/usr/bin/env bash
# GSM8K orailr (SFT+ILR with oracle comparisons), the two half-data jobs of each round at once on
# one large GPU.
# The settings are those of ../run-orailr-gsm8k.sh (one place); only PARALLEL differs.
set -euo pipefail
export PARALLEL=${PARALLEL:-1}
exec bash "$(dirname "$0")/../run-orailr-gsm8k.sh" "$@"
