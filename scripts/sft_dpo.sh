#!/usr/bin/env bash
# SFT+DPO, the RLHF baseline. Every setting can be overridden from the environment; the defaults are
# the paper's GSM8K settings. Rerunning skips every finished step.
#
#   round 0: SFT on the weak labels, drawing 6 samples per prompt at LABEL_TEMP;
#   round r = 1..ROUNDS: `dpo` round r-1 turns round r-1's samples into preferences, then a DPO
#   round r continues from round r-1's adapter (`<run dir>/train_adapter` from round 2 on).
set -euo pipefail
DS_NAME=${DS_NAME:-gsm8k}
WEAK_MODEL=${WEAK_MODEL:-google/gemma-2b}
STRONG_MODEL=${STRONG_MODEL:-mistralai/Mistral-7B-v0.1}
EVALUATOR_MODEL=${EVALUATOR_MODEL:-google/gemma-2b}
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

set_total "$(sft_dpo_steps)"
log "SFT+DPO on $DS_NAME: weak $WEAK_MODEL, strong $STRONG_MODEL, $ROUNDS rounds"
plan_memory sft_dpo

# dpo_flags ROUND STRONG_RUN: the flags of the `dpo` step that turns round ROUND's samples into pairs.
dpo_flags() {
  echo "--ds_name=$DS_NAME --weak_model_path=$WEAK_DIR --strong_model_path=$2 --round_id=$1 --subsample=$SUBSAMPLE" \
       "--beta=$BETA $(feedback_flags)"
}

weak_run
# The method (the strong runs' --method) is the one the `dpo` CLI names its label sets by. The name
# depends on the flags only, so round 0's is asked before the SFT model exists (the weak run stands in).
ROUND0_PAIRS=$(query experiments.dpo $(dpo_flags 0 "$WEAK_DIR"))  # an assignment: a refusal stops here
METHOD=$(method_of "$ROUND0_PAIRS" 0)
log "method $METHOD"
write_manifest  # once the weak run and the method passed their checks: a refused pipeline records nothing
on_labels="--model_size=$STRONG_MODEL --epochs=$EPOCHS --weak_labels_path=$WEAK_DIR --weak_model_size=$WEAK_MODEL \
--method=$METHOD --dpo_beta=$BETA --label_temp=$LABEL_TEMP $STRONG_FLAGS"

train $on_labels --round_id=0
PREV=$RUN_DIR
for ((r = 1; r <= ROUNDS; r++)); do
  PAIRS=$(query experiments.dpo $(dpo_flags $((r - 1)) "$PREV"))  # where round r-1's pairs go
  refine "$PAIRS" experiments.dpo $(dpo_flags $((r - 1)) "$PREV")
  ADAPTER=$PREV
  if [ "$r" -ge 2 ]; then ADAPTER=$PREV/train_adapter; fi
  # The last round's samples would only feed a round that is not run: it trains and evaluates.
  last=""
  if [ "$r" -eq "$ROUNDS" ]; then last="--generate_weak_labels=False"; fi
  train $on_labels --round_id=$r --dpo_path="$ADAPTER" $DPO_FLAGS $last
  PREV=$RUN_DIR
done
log "SFT+DPO finished: results under $RESULTS_FOLDER/$SWEEP"
