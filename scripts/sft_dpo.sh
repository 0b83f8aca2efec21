#!/usr/bin/env bash
# SFT+DPO, the RLHF baseline (any kind declared in core.methods for sft_dpo with REFINER). Every setting can be overridden from the environment; the defaults are
# the paper's GSM8K settings. Rerunning skips every finished step.
#
#   round 0: SFT on the weak labels, drawing 6 samples per prompt at LABEL_TEMP;
#   round r = 1..ROUNDS: `dpo` round r-1 turns round r-1's samples into preferences, then a DPO
#   round r continues from round r-1's trained model (its adapter; experiments.query run's model_dir).
set -euo pipefail
DS_NAME=${DS_NAME:-gsm8k}
WEAK_MODEL=${WEAK_MODEL:-google/gemma-2b}
STRONG_MODEL=${STRONG_MODEL:-mistralai/Mistral-7B-v0.1}
EVALUATOR_MODEL=${EVALUATOR_MODEL:-google/gemma-2b}
REFINER=${REFINER:-dpo}               # dpo | any kind of core.methods that sft_dpo runs
ROUNDS=${ROUNDS:-6}
EPOCHS=${EPOCHS:-2}
WEAK_EPOCHS=${WEAK_EPOCHS:-2}
BETA=${BETA:-0.1}
SUBSAMPLE=${SUBSAMPLE:-0.15}
N_DOCS=${N_DOCS:-20000}
N_TEST_DOCS=${N_TEST_DOCS:-10000}
BATCH_SIZE=${BATCH_SIZE:-32}
LORA_RANK=${LORA_RANK:-64}
ORACLE=${ORACLE:-0}
CORRECT=${CORRECT:-0}
WEAK_FLAGS=${WEAK_FLAGS:-}
STRONG_FLAGS=${STRONG_FLAGS:-}
DPO_FLAGS=${DPO_FLAGS:-}              # extra flags of the DPO rounds (r >= 1), e.g. --lr=...
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Sampling temperatures (0 is beam search): the task's, from its registry entry, unless set here.
WEAK_LABEL_TEMP=${WEAK_LABEL_TEMP:-$(dataset_fact weak_label_temp)}  # the weak model's labels
LABEL_TEMP=${LABEL_TEMP:-$(dataset_fact dpo_sample_temp)}            # the 6 samples per prompt of a round

# REFINER's step with these settings (experiments.query refiner): METHOD (the runs' --method), its
# REFINER_COMMAND, STEPS; or REFUSAL.
REFUSAL=
ask refiner --kind="$REFINER" --pipeline=sft_dpo --rounds="$ROUNDS" --beta="$BETA" --subsample="$SUBSAMPLE" \
  --oracle="$(is_set "$ORACLE")" --correct_start="$(is_set "$CORRECT")"
if [ -n "$REFUSAL" ]; then echo "$REFUSAL" >&2; exit 2; fi
set_total "$STEPS"
log "SFT+DPO on $DS_NAME: weak $WEAK_MODEL, strong $STRONG_MODEL, $ROUNDS rounds"
plan_memory sft_dpo
FEEDBACK=$(feedback_flags)  # asked once (the evaluator's path is a Python query that loads torch)

# dpo_flags ROUND STRONG_RUN: the step that turns round ROUND's samples into pairs, with its flags.
dpo_flags() {
  echo "${REFINER_COMMAND[*]} --ds_name=$DS_NAME --weak_model_path=$WEAK_DIR --strong_model_path=$2" \
       "--round_id=$1 --subsample=$SUBSAMPLE --beta=$BETA $FEEDBACK"
}

weak_run
# Round 0's step is asked with all its flags before anything trains on the method (the weak run
# stands in for the SFT model): a refusal stops the pipeline here.
query $(dpo_flags 0 "$WEAK_DIR") >/dev/null
log "method $METHOD"
write_manifest  # once the weak run and the method passed their checks: a refused pipeline records nothing
on_labels="--model_size=$STRONG_MODEL --epochs=$EPOCHS --weak_labels_path=$WEAK_DIR --weak_model_size=$WEAK_MODEL \
--method=$METHOD --dpo_beta=$BETA --label_temp=$LABEL_TEMP $STRONG_FLAGS"

train $on_labels --round_id=0
PREV=$RUN_DIR
ADAPTER=$MODEL_DIR  # what the next DPO round continues from (a DPO round's adapter is inside its run dir)
for ((r = 1; r <= ROUNDS; r++)); do
  PAIRS=$(query $(dpo_flags $((r - 1)) "$PREV"))  # where round r-1's pairs go
  refine "$PAIRS" $(dpo_flags $((r - 1)) "$PREV")
  # The last round's samples would only feed a round that is not run: it trains and evaluates.
  last=""
  if [ "$r" -eq "$ROUNDS" ]; then last="--generate_weak_labels=False"; fi
  train $on_labels --round_id=$r --dpo_path="$ADAPTER" $DPO_FLAGS $last
  PREV=$RUN_DIR
  ADAPTER=$MODEL_DIR
done
log "SFT+DPO finished: results under $RESULTS_FOLDER/$SWEEP"
