#!/usr/bin/env bash
# The offline demo: the whole paper pipeline on the toy arithmetic task with tiny models, on a CPU.
# Evaluator -> weak model -> SFT -> rounds of SFT+ILR, SFT+DPO and naive ILR -> the report.
# DEMO=quick (CI: plumbing only, random tiny models), small (default), full (the size where the
# effects can be measured; it adds ILR and DPO with oracle comparisons, the ceiling of the feedback).
# The comparison evaluator is trained on the strong base (the one whose comparisons carry signal in
# the toy world, docs/toy_world.md); EVALUATOR_MODEL=tiny-llama-weak trains it on the weak base.
# EVALUATOR=judge asks an LLM judge instead (ILR_FEEDBACK_JUDGE_BASE_URL, ILR_FEEDBACK_JUDGE_MODEL;
# core.judge): no evaluator is trained, the pipelines are ilr and dpo, and the results get their own folder.
# SEEDS=0,1,2 runs the whole pipeline once per seed into the same results folder (run dirs are
# named by seed), then one report over all of them. Rerunning skips every finished step.
set -euo pipefail
DEMO=${DEMO:-small}
HERE=$(dirname "${BASH_SOURCE[0]}")
export DS_NAME=toy_arith
SEEDS=${SEEDS:-${SEED:-0}}
IFS=, read -r -a seeds <<<"$SEEDS"
for seed in "${seeds[@]}"; do
  case "$seed" in
    '' | *[!0-9]*) echo "SEEDS must be comma-separated integers (e.g. 0,1,2), got '$SEEDS'" >&2; exit 2 ;;
  esac
done
export SWEEP=${SWEEP:-toy} EVALUATOR=${EVALUATOR:-trained}
export BATCH_SIZE=16 WEAK_EPOCHS=4 GT_EPOCHS=3 SUBSAMPLE=0.15 LABEL_TEMP=0.7
# ILR's (and naive ILR's) budget and DPO's beta: the best on held-out prompts (benchmarks/sweep_baselines.sh)
export MAX_REPLACE=${MAX_REPLACE:-0.3} BETA=${BETA:-0.5}
export WEAK_FLAGS=""      # the weak supervisor: the same LoRA recipe on the weak base
export GT_FLAGS="--lora_rank=0 --lr=1e-3"
export PARALLEL=1 PARALLEL_THREADS=1  # the two half-data jobs of a round share the CPU cores
export NUM_BEAMS=1          # greedy decoding: beam search would cost the CPU demo 4x in generation
# small and full: the toy world's bases and recipe; quick replaces them with random tiny models.
export WEAK_MODEL=tiny-llama-weak STRONG_MODEL=tiny-llama-strong EVALUATOR_MODEL=${EVALUATOR_MODEL:-tiny-llama-strong}
export EPOCHS=4 LORA_RANK=16 SAVE_FREQUENCY=0.25 EVALUATOR_FLAGS="--epochs=2 --evaluator_kind=likelihood"
case "$DEMO" in
  quick)
    export PARALLEL=0
    export WEAK_MODEL=tiny-random STRONG_MODEL=tiny-random EVALUATOR_MODEL=tiny-random
    export N_DOCS=64 N_TEST_DOCS=16 ROUNDS=${ROUNDS:-1} EPOCHS=1 WEAK_EPOCHS=1 GT_EPOCHS=1 LORA_RANK=4 BATCH_SIZE=8
    export SAVE_FREQUENCY=0.5 EVALUATOR_FLAGS="--epochs=1 --evaluator_kind=likelihood" ;;
  small) export N_DOCS=1000 N_TEST_DOCS=200 ROUNDS=${ROUNDS:-2} ;;
  full) export N_DOCS=2000 N_TEST_DOCS=400 ROUNDS=${ROUNDS:-3} ;;
  *) echo "DEMO must be quick, small or full, got '$DEMO'" >&2; exit 2 ;;
esac
case "$EVALUATOR_MODEL" in
  tiny-*) ;;
  *) echo "EVALUATOR_MODEL must be a tiny model offline (tiny-llama-weak or tiny-llama-strong), got '$EVALUATOR_MODEL'" >&2
     exit 2 ;;
esac
# Refined label sets are named by method, not by evaluator: another evaluator gets its own folder.
default_folder=demo_results/$DEMO
if [ "$EVALUATOR" = judge ]; then
  default_folder+="-judge"
elif [ "$DEMO" != quick ] && [ "$EVALUATOR_MODEL" != tiny-llama-strong ]; then
  default_folder+="-evaluator-$EVALUATOR_MODEL"
fi
export RESULTS_FOLDER=${RESULTS_FOLDER:-$default_folder}
. "$HERE/lib.sh"
# PIPELINES: what each seed runs after the evaluator. full adds both methods with oracle comparisons
# (orailr, oradpo), to tell bad feedback from bad optimisation.
default_pipelines=ilr,naive,dpo
if [ "$DEMO" = full ]; then default_pipelines+=,orailr,oradpo; fi
if [ "$EVALUATOR" = judge ]; then default_pipelines=ilr,dpo; fi  # the others ask no judge
PIPELINES=${PIPELINES:-$default_pipelines}
IFS=, read -r -a pipelines <<<"$PIPELINES"
# What each pipeline runs ([cor][ora]<kind>: SCRIPTS, ENVS, STEPS; experiments.query pipelines) and
# the evaluator's steps. Progress is numbered across every sub-pipeline of every seed: they add to
# these. An unknown pipeline stops here, before anything runs.
ask pipelines "${pipelines[@]}" --rounds="$ROUNDS"
per_seed=0
if [ "$EVALUATOR" != judge ]; then
  ask evaluator --ds_name="$DS_NAME"
  per_seed=$EVALUATOR_STEPS
fi
for steps in "${STEPS[@]}"; do per_seed=$((per_seed + steps)); done
export PROGRESS_START PROGRESS_TOTAL=$((${#seeds[@]} * per_seed))
log "demo ($DEMO), seeds $SEEDS: $PROGRESS_TOTAL steps, results in $RESULTS_FOLDER"
# The tiny bases are installed once from their shipped weights (seconds); a base without shipped
# weights is built from its recipe on one thread, so both build at once (about 5 min here).
built=$(mktemp -d)
trap 'rm -rf "$built"' EXIT
builds=()
for model in weak strong; do  # one output file each (quick uses one model for both)
  name=${model^^}_MODEL
  OMP_NUM_THREADS=1 py experiments.build_models "${!name}" >"$built/$model" &
  builds+=($!)
done
for pid in "${builds[@]}"; do wait "$pid"; done
cat "$built/weak" "$built/strong"  # their commands, then the paths they resolved
# Run dirs are named by model name, not by weights, so a finished step made with other bases would
# be reused: the results folder records its bases' cache dirs (named by recipe) and refuses others.
if [ "$DRY_RUN" != 1 ]; then
  bases=$(for model in weak strong; do basename "$(tail -n 1 "$built/$model")"; done | paste -sd ' ')
  if [ -f "$RESULTS_FOLDER/bases.txt" ]; then
    recorded=$(cat "$RESULTS_FOLDER/bases.txt")
    if [ "$recorded" != "$bases" ]; then
      echo "$RESULTS_FOLDER holds results of other tiny bases ($recorded, now $bases): move it away or set RESULTS_FOLDER" >&2
      exit 2
    fi
  elif [ -d "$RESULTS_FOLDER/$SWEEP" ]; then
    echo "$RESULTS_FOLDER holds results without a record of their tiny bases (bases.txt; made before it was kept): move it away or set RESULTS_FOLDER" >&2
    exit 2
  else
    mkdir -p "$RESULTS_FOLDER" && echo "$bases" >"$RESULTS_FOLDER/bases.txt"
  fi
fi

# pipeline STEPS COMMAND...: one sub-pipeline, its steps numbered after those run before it.
steps_before=0
pipeline() {
  local steps=$1; shift
  PROGRESS_DONE=$steps_before "$@"
  steps_before=$((steps_before + steps))
}
for SEED in "${seeds[@]}"; do
  export SEED
  log "seed $SEED"
  if [ "$EVALUATOR" != judge ]; then pipeline "$EVALUATOR_STEPS" bash "$HERE/evaluator.sh"; fi
  for i in "${!pipelines[@]}"; do
    # shellcheck disable=SC2086
    pipeline "${STEPS[$i]}" env ${ENVS[$i]} bash "$HERE/${SCRIPTS[$i]}"
  done
done
log "demo ($DEMO) finished in $(($(date +%s) - PROGRESS_START)) s; the report (its table, then the plot):"
py experiments.report --results_folder="$RESULTS_FOLDER" --sweep_subfolder="$SWEEP"
