#!/usr/bin/env bash
# The toy world's baselines tuned as the paper tuned its own: on held-out training prompts, never on
# test. DPO's learning rate and beta, and ILR's max_replace, at a demo's sizes (DEMO=small by
# default), one seed; every run scores on `--eval_on=heldout` prompts.
#
#   bash benchmarks/sweep_baselines.sh                       # results under demo_results/sweep-small
#   DPO_LRS="1e-4 2e-5" BETAS="0.1" MAX_REPLACES="0.15" bash benchmarks/sweep_baselines.sh
#
# Refined label sets are named by method and round only, so two settings of one method in one
# results folder would share them: each setting gets its own folder, a copy of a base folder that
# holds what they share (the evaluator and the weak run), and a rerun skips finished steps.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=${DEMO:-small}
DPO_LRS=${DPO_LRS:-"1e-4 2e-5 5e-6"}  # 1e-4: the tiny models' registered DPO learning rate
BETAS=${BETAS:-"0.1 0.5"}
MAX_REPLACES=${MAX_REPLACES:-"0.15 0.3"}
OUT=${OUT:-demo_results/sweep-$DEMO}
export DEMO EXTRA_FLAGS="--eval_on=heldout"

# The base: the evaluator and the weak run (a DPO pipeline of no rounds also trains round 0).
RESULTS_FOLDER=$OUT/base PIPELINES=dpo ROUNDS=0 bash "$HERE/scripts/demo.sh" >/dev/null

setting() {  # setting NAME PIPELINE [VAR=VALUE...]: one setting in its own copy of the base
  local name=$1 pipeline=$2; shift 2
  if [ "${DRY_RUN:-0}" != 1 ] && [ ! -d "$OUT/$name" ]; then
    cp -r "$OUT/base" "$OUT/$name.tmp" && mv "$OUT/$name.tmp" "$OUT/$name"
  fi
  echo "== $name"
  env "$@" RESULTS_FOLDER="$OUT/$name" PIPELINES="$pipeline" bash "$HERE/scripts/demo.sh" | tail -n 12
}
for lr in $DPO_LRS; do
  for beta in $BETAS; do
    setting "dpo-lr$lr-beta$beta" dpo BETA="$beta" DPO_FLAGS="--lr=$lr"
  done
done
for m in $MAX_REPLACES; do
  setting "ilr-max_replace$m" ilr MAX_REPLACE="$m"
done
