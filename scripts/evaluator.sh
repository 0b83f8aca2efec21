#!/usr/bin/env bash
# The comparison evaluator: a ground-truth small model saved every 10% of training, answers sampled
# from each checkpoint, pairs of a better and a worse answer to the same prompt, then a classifier
# trained to tell which of two answers is the better one.
# SaferPaca builds its pairs from a general-only and a safety-only model (4 epochs each).
set -euo pipefail
DS_NAME=${DS_NAME:-gsm8k}
EVALUATOR_MODEL=${EVALUATOR_MODEL:-google/gemma-2b}
GT_EPOCHS=${GT_EPOCHS:-2}             # SaferPaca: 4 per mode
SAVE_FREQUENCY=${SAVE_FREQUENCY:-0.1}
TEMPERATURE=${TEMPERATURE:-0.6}       # sampling temperature of the checkpoint answers
N_DOCS=${N_DOCS:-20000}
N_TEST_DOCS=${N_TEST_DOCS:-10000}
BATCH_SIZE=${BATCH_SIZE:-32}
LORA_RANK=${LORA_RANK:-64}
GT_FLAGS=${GT_FLAGS:-}                # extra flags of the ground-truth run(s)
EVALUATOR_FLAGS=${EVALUATOR_FLAGS:-}  # extra flags of core.train_evaluator (epochs, lr, evaluator_kind, ...)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The task's ground-truth runs (GT_RUNS: the extra flags of each, one per mode of its registry entry)
# and EVALUATOR_STEPS (experiments.query evaluator).
ask evaluator --ds_name="$DS_NAME"
set_total "$EVALUATOR_STEPS"
log "evaluator for $DS_NAME on $EVALUATOR_MODEL"
plan_memory evaluator
gt="--model_size=$EVALUATOR_MODEL --epochs=$GT_EPOCHS --save_frequency=$SAVE_FREQUENCY --generate_weak_labels=False \
$GT_FLAGS"
GT_DIR=
for gt_run in "${GT_RUNS[@]}"; do
  train $gt $gt_run
  GT_DIR=${GT_DIR:-$RUN_DIR}  # the evaluator data starts from the first one (and finds the others)
done
write_manifest  # once the ground-truth run passed its checks: a refused pipeline records nothing
DATA=$(evaluator_data_name)
refine "$DATA" experiments.generate_evaluator_data --save_path="$GT_DIR" --model_size="$EVALUATOR_MODEL" \
  --ds_name="$DS_NAME" --seed="$SEED" --temperature="$TEMPERATURE" --results_folder="$RESULTS_FOLDER"
EVALUATOR_DIR=$(evaluator_path)
refine "$EVALUATOR_DIR/results_summary.json" core.train_evaluator --ds_name="$DATA" --model_size="$EVALUATOR_MODEL" \
  --seed="$SEED" --results_folder="$RESULTS_FOLDER" $EVALUATOR_FLAGS
log "evaluator: $EVALUATOR_DIR"
