# Shared by every pipeline script: settings, dry runs, resumable steps, run dirs from the project.
# Source it; do not run it. Every setting is an environment variable with the paper's default
# (set by the pipeline scripts before sourcing), so `ROUNDS=2 bash scripts/gsm8k/ilr.sh` just works.
set -euo pipefail

ILR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -f "$ILR_ROOT/.env" ]; then
  set -a; . "$ILR_ROOT/.env"; set +a
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ILR_ROOT/.venv/bin/python" ]; then PYTHON="$ILR_ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
DRY_RUN=${DRY_RUN:-0}      # 1: print every command with the real model names, run nothing
PARALLEL=${PARALLEL:-0}    # 1: run the two half-data jobs of a round at once (one large GPU)
PARALLEL_THREADS=${PARALLEL_THREADS:-}  # CPU threads of each of those jobs (a CPU: half the cores)
SEED=${SEED:-0}
SWEEP=${SWEEP:-default}
RESULTS_FOLDER=${RESULTS_FOLDER:-${ILR_SAVE_PATH:-results}}
EXTRA_FLAGS=${EXTRA_FLAGS:-}   # appended to every experiments.main call
NUM_BEAMS=${NUM_BEAMS:-4}      # beam search of test evaluation and temperature-0 labels (the reference's 4)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# py MODULE FLAGS...: run `python -m iterative_label_refinement.MODULE`, or only print it in a dry run.
py() {
  local module=$1; shift
  printf '+ python -m iterative_label_refinement.%s %s\n' "$module" "$*"
  if [ "$DRY_RUN" != 1 ]; then
    "$PYTHON" -m "iterative_label_refinement.$module" "$@"
  fi
}

# query MODULE FLAGS...: the last line a CLI prints for --print_save_path (cheap: no model is loaded).
query() {
  local module=$1; shift
  "$PYTHON" -m "iterative_label_refinement.$module" "$@" --print_save_path | tail -n 1
}

common_flags() {
  echo "--ds_name=$DS_NAME --n_docs=$N_DOCS --n_test_docs=$N_TEST_DOCS --seed=$SEED --batch_size=$BATCH_SIZE" \
       "--lora_rank=$LORA_RANK --num_beams=$NUM_BEAMS --results_folder=$RESULTS_FOLDER --sweep_subfolder=$SWEEP" \
       "$EXTRA_FLAGS"
}

# train OUTPUTS FLAGS...: one experiments.main run, skipped when every file in OUTPUTS (space
# separated, relative to its run dir) exists. Sets RUN_DIR to the run dir (printed by the project).
train() {
  local outputs=$1; shift
  # shellcheck disable=SC2046
  RUN_DIR=$(query experiments.main $(common_flags) "$@")
  local done=1 out
  for out in $outputs; do [ -e "$RUN_DIR/$out" ] || done=0; done
  if [ "$done" = 1 ] && [ "$DRY_RUN" != 1 ]; then
    log "done already: $RUN_DIR"
    return 0
  fi
  log "train: $RUN_DIR"
  # shellcheck disable=SC2046
  py experiments.main $(common_flags) "$@"
}

# refine OUTPUT MODULE FLAGS...: an ilr/naive/dpo step, skipped when its label set exists.
refine() {
  local output=$1; shift
  if [ -e "$output" ] && [ "$DRY_RUN" != 1 ]; then
    log "done already: $output"
    return 0
  fi
  log "refine: $output"
  py "$@"
}

# method_prefix: cor? + ora? as the refinement CLIs name their outputs.
method_prefix() {
  local p=""
  if [ "${CORRECT:-0}" = 1 ]; then p="${p}cor"; fi
  if [ "${ORACLE:-0}" = 1 ]; then p="${p}ora"; fi
  echo "$p"
}

correct_flag() {
  if [ "${CORRECT:-0}" = 1 ]; then echo "--start_with_correct_labels=True"; fi
}

# feedback_flags: seed, cor, and the feedback source (oracle or the evaluator) of ilr/dpo steps.
feedback_flags() {
  local f="--seed=$SEED $(correct_flag)"
  if [ "${ORACLE:-0}" = 1 ]; then
    f="$f --use_oracle_feedback=True"
  else
    f="$f --evaluator_path=$(evaluator_path)"
  fi
  echo "$f"
}

# evaluator_path: EVALUATOR_PATH if set, else where scripts/evaluator.sh puts the evaluator.
evaluator_path() {
  if [ -n "${EVALUATOR_PATH:-}" ]; then echo "$EVALUATOR_PATH"; return; fi
  query core.train_evaluator --ds_name="$(evaluator_data_name)" --model_size="$EVALUATOR_MODEL" --seed="$SEED" \
    --results_folder="$RESULTS_FOLDER" ${EVALUATOR_FLAGS:-}
}

evaluator_data_name() {
  query experiments.generate_evaluator_data --model_size="$EVALUATOR_MODEL" --ds_name="$DS_NAME" --seed="$SEED" \
    --results_folder="$RESULTS_FOLDER"
}

# weak_run: the weak supervisor, trained on ground truth half A; its labels of half B are the
# unreliable demonstrations. Sets WEAK_DIR.
weak_run() {
  train "results_summary.json weak_labels" --model_size="$WEAK_MODEL" --epochs="$WEAK_EPOCHS" $WEAK_FLAGS
  WEAK_DIR=$RUN_DIR
}
