#!/usr/bin/env bash
# SFT+ILR (naive ILR with REFINER=naive; any kind declared in core.methods for sft_ilr). Every setting can be overridden from the environment;
# the defaults are the paper's GSM8K settings. Rerunning skips every finished step.
#
#   for r in 0..ROUNDS-1: two half-data strong models on round r's labels (cross-fitting), then
#   `ilr` (or `naive`) round r; full strong models for rounds 1..ROUNDS train from the base model
#   on <method>_<r-1>_weak_labels. Round 0's full model is plain SFT on the weak labels.
set -euo pipefail
DS_NAME=${DS_NAME:-gsm8k}
WEAK_MODEL=${WEAK_MODEL:-google/gemma-2b}
STRONG_MODEL=${STRONG_MODEL:-mistralai/Mistral-7B-v0.1}
EVALUATOR_MODEL=${EVALUATOR_MODEL:-google/gemma-2b}
REFINER=${REFINER:-ilr}               # ilr | naive | any kind of core.methods that sft_ilr runs
ROUNDS=${ROUNDS:-6}
EPOCHS=${EPOCHS:-2}
WEAK_EPOCHS=${WEAK_EPOCHS:-2}
MAX_REPLACE=${MAX_REPLACE:-0.15}
N_DOCS=${N_DOCS:-20000}
N_TEST_DOCS=${N_TEST_DOCS:-10000}
BATCH_SIZE=${BATCH_SIZE:-32}
LORA_RANK=${LORA_RANK:-64}
ORACLE=${ORACLE:-0}                   # 1: oracle comparisons (ora*)
CORRECT=${CORRECT:-0}                 # 1: start from the correct demonstrations only (cor*)
WEAK_FLAGS=${WEAK_FLAGS:-}            # extra flags of the weak model's run
STRONG_FLAGS=${STRONG_FLAGS:-}        # extra flags of every strong model's run
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Sampling temperatures (0 is beam search): the task's, from its registry entry, unless set here.
WEAK_LABEL_TEMP=${WEAK_LABEL_TEMP:-$(dataset_fact weak_label_temp)}  # the weak model's labels
PROPOSAL_TEMP=${PROPOSAL_TEMP:-$(dataset_fact proposal_temp)}        # the half models' proposals

# REFINER's step with these settings (experiments.query refiner): METHOD (the strong runs' --method;
# the name depends on the settings only), REFINER_COMMAND (the module running the step), TAKES_FEEDBACK
# (naive replaces labels at random; other kinds ask the evaluator or the oracle), STEPS; or REFUSAL.
REFUSAL=
ask refiner --kind="$REFINER" --pipeline=sft_ilr --rounds="$ROUNDS" --max_replace="$MAX_REPLACE" \
  --oracle="$(is_set "$ORACLE")" --correct_start="$(is_set "$CORRECT")"
if [ -n "$REFUSAL" ]; then echo "$REFUSAL" >&2; exit 2; fi
set_total "$STEPS"
log "SFT+$REFINER on $DS_NAME: weak $WEAK_MODEL, strong $STRONG_MODEL, $ROUNDS rounds"
plan_memory sft_ilr
# The feedback's flags, asked once (the evaluator's path is a Python query that loads torch).
if [ "$TAKES_FEEDBACK" = 1 ]; then FEEDBACK=$(feedback_flags); else FEEDBACK="--seed=$SEED $(correct_flag)"; fi

# refiner_flags ROUND MODEL1 MODEL2: the flags of round ROUND's refinement step.
refiner_flags() {
  echo "--ds_name=$DS_NAME --weak_model_path=$WEAK_DIR --model1_path=$2 --model2_path=$3 --round_id=$1" \
       "--max_replace=$MAX_REPLACE $FEEDBACK"
}

weak_run
# Round 0's step is asked with all its flags before anything trains on the method (the weak run
# stands in for its half models): a refusal stops the pipeline here.
query "${REFINER_COMMAND[@]}" $(refiner_flags 0 "$WEAK_DIR" "$WEAK_DIR") >/dev/null
log "method $METHOD"
write_manifest  # once the weak run and the method passed their checks: a refused pipeline records nothing
on_labels="--model_size=$STRONG_MODEL --epochs=$EPOCHS --weak_labels_path=$WEAK_DIR --weak_model_size=$WEAK_MODEL \
--method=$METHOD $STRONG_FLAGS"

train $on_labels --round_id=0 --generate_weak_labels=False
for ((r = 0; r < ROUNDS; r++)); do
  half_runs=()
  for half in 1 2; do
    if [ "$PARALLEL" = 1 ]; then
      (
        if [ -n "$PARALLEL_THREADS" ]; then export OMP_NUM_THREADS=$PARALLEL_THREADS; fi
        train $on_labels --round_id=$r --half_data=$half --label_temp="$PROPOSAL_TEMP"
      ) &
      half_runs+=($!)
      STEP=$((STEP + 1))  # the background job numbered this step in its own copy of STEP
    else
      train $on_labels --round_id=$r --half_data=$half --label_temp="$PROPOSAL_TEMP"
    fi
  done
  for pid in "${half_runs[@]}"; do wait "$pid"; done
  ask run $(common_flags) $on_labels --round_id=$r --half_data=1 --label_temp="$PROPOSAL_TEMP"
  H1=$RUN_DIR
  ask run $(common_flags) $on_labels --round_id=$r --half_data=2 --label_temp="$PROPOSAL_TEMP"
  H2=$RUN_DIR
  step=("${REFINER_COMMAND[@]}" $(refiner_flags $r "$H1" "$H2"))
  LABELS=$(query "${step[@]}")  # where the step writes round r's refined labels
  refine "$LABELS" "${step[@]}"
  train $on_labels --round_id=$((r + 1)) --generate_weak_labels=False
done
log "SFT+$REFINER finished: results under $RESULTS_FOLDER/$SWEEP"
