# Shared by every pipeline script: settings, dry runs, resumable steps, run dirs from the project.
# Source it; do not run it. Every setting is an environment variable with the paper's default
# (set by the pipeline scripts before sourcing), so
# `ROUNDS=2 bash scripts/main-experiments/run-ilr-gsm8k.sh` just works.
set -euo pipefail

ILR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Settings from $ILR_ROOT/.env, under the environment's, as in the Python CLIs (core.settings.load_env):
# a variable the environment sets, even to "", keeps its value. bash reads .env as shell code, so a
# value with spaces needs quotes; the environment's values are put back exactly, whatever they hold.
if [ -f "$ILR_ROOT/.env" ]; then
  declare -A _ilr_environment=()
  for _ilr_name in $(compgen -e); do _ilr_environment[$_ilr_name]=${!_ilr_name-}; done
  set -a; . "$ILR_ROOT/.env"; set +a
  for _ilr_name in "${!_ilr_environment[@]}"; do
    if [ "${!_ilr_name-}" != "${_ilr_environment[$_ilr_name]}" ]; then
      printf -v "$_ilr_name" '%s' "${_ilr_environment[$_ilr_name]}"
    fi
  done
  unset _ilr_environment _ilr_name
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
EVALUATOR=${EVALUATOR:-trained}  # the comparisons of ilr/dpo steps: `trained` (evaluator.sh's) or `judge` (core.judge)
# Checked here, once: a refusal inside the command substitutions that build the steps' flags would not stop the script.
case "$EVALUATOR" in
  trained | judge) ;;
  *) echo "EVALUATOR must be trained or judge, got '$EVALUATOR'" >&2; exit 2 ;;
esac

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Progress: every train/refine step logs "step N/TOTAL (+ELAPSED s, ETA in S s) ...", S from the mean
# time of the steps finished so far (none yet: no ETA; steps found done count too). A pipeline run on its own
# numbers its own steps from its own start; demo.sh runs several and exports PROGRESS_TOTAL (the steps
# of all of them), PROGRESS_DONE (the steps before this one) and PROGRESS_START (when it started).
PROGRESS_START=${PROGRESS_START:-$(date +%s)}
STEP=${PROGRESS_DONE:-0}
TOTAL_STEPS=?

# set_total N: this pipeline's number of steps, unless a caller counts for several pipelines.
set_total() { TOTAL_STEPS=${PROGRESS_TOTAL:-$1}; }

progress() {
  STEP=$((STEP + 1))
  local elapsed=$(($(date +%s) - PROGRESS_START)) finished=$((STEP - 1)) eta=
  if [ "$finished" -gt 0 ] && [ "$TOTAL_STEPS" != "?" ]; then
    eta=", ETA in $((elapsed * (TOTAL_STEPS - finished) / finished)) s"
  fi
  log "step $STEP/$TOTAL_STEPS (+$elapsed s$eta) $*"
}

# ask QUESTION FLAGS...: set the variables of the project's answer (experiments.query): what a
# pipeline runs, its method and step count, where a run goes and whether it is done. The scripts
# match no method or dataset name and parse no path: Python knows them. A refusal stops the script.
ask() {
  local answer
  answer=$("$PYTHON" -m iterative_label_refinement.experiments.query "$@" --format=shell) || exit $?
  eval "$answer"
}

# py MODULE FLAGS...: run `python -m iterative_label_refinement.MODULE`, or only print it in a dry run.
py() {
  local module=$1; shift
  printf '+ python -m iterative_label_refinement.%s %s\n' "$module" "$*"
  if [ "$DRY_RUN" != 1 ]; then
    "$PYTHON" -m "iterative_label_refinement.$module" "$@"
  fi
}

# write_manifest: record this pipeline run in <results>/<sweep>/manifests/ (its settings, the commit,
# the library versions). The shell variables go to Python on stdin, which keeps those the script reads.
write_manifest() {
  if [ "$DRY_RUN" = 1 ]; then return 0; fi
  local name path
  path=$(for name in $(compgen -v); do printf '%s=%s\0' "$name" "${!name-}"; done |
    "$PYTHON" -m iterative_label_refinement.experiments.manifest --script="$0" --results_folder="$RESULTS_FOLDER" \
      --sweep_subfolder="$SWEEP" | tail -n 1)
  log "manifest: $path"
}

# plan_memory PIPELINE: before the first step, refuse in one line a step that cannot fit the GPUs (the
# visible ones, or PLAN_GPUS GPUs of PLAN_GPU_MEM GB each); DRY_RUN=1 prints every step's need. The
# shell variables go to Python on stdin (experiments.plan reads the settings; bash parses none).
plan_memory() {
  local name show=False
  if [ "$DRY_RUN" = 1 ]; then show=True; fi
  for name in $(compgen -v); do printf '%s=%s\0' "$name" "${!name-}"; done |
    "$PYTHON" -m iterative_label_refinement.experiments.plan --pipeline="$1" --show=$show \
      ${PLAN_GPUS:+--gpus="$PLAN_GPUS"} ${PLAN_GPU_MEM:+--gpu_mem="$PLAN_GPU_MEM"}
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

# train FLAGS...: one experiments.main run. Sets RUN_DIR to the run dir and MODEL_DIR to where its
# model is saved (a DPO round's adapter; experiments.query run). Skipped when main would find it
# finished (its commit point and outputs); otherwise main runs: it resumes a killed run from its checkpoints.
train() {
  # shellcheck disable=SC2046
  ask run $(common_flags) "$@"
  if [ "$RUN_DONE" = 1 ] && [ "$DRY_RUN" != 1 ]; then
    progress "done already: $RUN_DIR"
    return 0
  fi
  progress "train: $RUN_DIR"
  # shellcheck disable=SC2046
  py experiments.main $(common_flags) "$@"
}

# refine OUTPUT MODULE FLAGS...: an ilr/naive/dpo (or evaluator) step. When OUTPUT exists the step is
# still asked, quietly: it reuses OUTPUT only when the record beside it says these inputs made it
# (core.provenance), and otherwise stops the pipeline with one line.
refine() {
  local output=$1; shift
  if [ -e "$output" ] && [ "$DRY_RUN" != 1 ]; then
    local module=$1; shift
    "$PYTHON" -m "iterative_label_refinement.$module" "$@" >/dev/null
    progress "done already: $output"
    return 0
  fi
  progress "refine: $output"
  py "$@"
}

# is_set VALUE: True when a 0/1 setting (ORACLE, CORRECT) is 1, else False (a Python flag's value).
is_set() {
  if [ "${1:-0}" = 1 ]; then echo True; else echo False; fi
}

correct_flag() {
  if [ "${CORRECT:-0}" = 1 ]; then echo "--start_with_correct_labels=True"; fi
}

# feedback_flags: seed, cor, and the feedback source of ilr/dpo steps: the oracle, the trained
# evaluator, or with EVALUATOR=judge an LLM judge at ILR_FEEDBACK_JUDGE_BASE_URL serving ILR_FEEDBACK_JUDGE_MODEL
# (environment or .env; core.judge).
feedback_flags() {
  local f="--seed=$SEED $(correct_flag)"
  if [ "${ORACLE:-0}" = 1 ]; then
    f="$f --use_oracle_feedback=True"
  elif [ "$EVALUATOR" = judge ]; then
    f="$f --feedback=judge"
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
# dataset_fact FACT: a fact of $DS_NAME's registry entry, e.g. its sampling temperatures, so that no
# script spells one again (an unknown task stops the pipeline here with one line).
dataset_fact() {
  "$PYTHON" -m iterative_label_refinement.core.datasets --ds_name="$DS_NAME" --fact="$1"
}

weak_run() {
  train --model_size="$WEAK_MODEL" --epochs="$WEAK_EPOCHS" \
    --label_temp="$WEAK_LABEL_TEMP" $WEAK_FLAGS
  WEAK_DIR=$RUN_DIR
}
