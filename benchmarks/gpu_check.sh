#!/usr/bin/env bash
# GPU readiness check: the GPU paths on the real small model (SmolLM2-135M-Instruct, offline from its
# packaged copy), sized to finish in under 10 minutes on one GPU. It installs nothing: run `make gpu-setup`
# first where the registry is reachable (.venv-gpu, pinned by requirements-gpu.txt), then on the GPU node,
# from the repository root:
#
#     bash benchmarks/gpu_check.sh            # results and logs in gpu_check_results/ (or $OUT_DIR)
#
# Steps (each PASS / FAIL / N/A with its time, then a summary; a step that cannot run FAILS, and only a
# step that does not apply to the GPUs visible says N/A and why):
#   env       the GPUs and their compute capability, the dtype policy (core.devices), the versions
#   tests     the tests that touch models, on CUDA (FULL_SUITE=1: the whole suite)
#   dtypes    LoRA base in the card's dtype, every trained parameter (full fine-tunes, LoRA adapters, the
#             evaluator's score head) in float32, and one AdamW step at lr 1e-6: the fraction of weights it
#             changes, bf16 vs fp32 weights
#   train     SFT (with checkpoints), the classifier evaluator and a DPO round via the CLIs
#   ddp       torchrun on all visible GPUs, compared with one process (N/A with one GPU)
#   fsdp      the train step's DPO round 1 under `accelerate launch --config_file configs/accelerate/fsdp.yaml`
#             on all visible GPUs (one GPU: FSDP with one shard), compared with it on one process
#   vllm      vLLM with the run's LoRA adapter against the HF backend on the same prompts: greedy
#             outputs equal, the same sampling settings, batched throughput of both; then a full
#             fine-tune through experiments.main --inference_backend=vllm (the hand-off of the GPU's memory
#             from the trained model to the engine, the trained weights served as the model)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-gpu/bin/python}
OUT=${OUT_DIR:-gpu_check_results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
export ILR_SAVE_PATH="$OUT/results" ILR_DATA_PATH="$OUT/data"
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

NOT_APPLICABLE=77  # the exit status of a step that does not apply to the GPUs visible (it says why)
step() {  # step NAME COMMAND...: runs it, logs to $OUT/NAME.log, records PASS/FAIL/N/A and seconds
    local name=$1 start rc status
    shift
    start=$(date +%s)
    "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    status=$([ $rc -eq 0 ] && echo PASS || { [ $rc -eq $NOT_APPLICABLE ] && echo N/A || echo "FAIL (rc $rc)"; })
    printf '%-6s %-12s %4ss  %s\n' "$name" "$status" "$(($(date +%s) - start))" "$(tail -n 1 "$OUT/$name.log")" | tee -a "$SUMMARY"
}

if [ ! -x "$PY" ] || ! $PY -c "import vllm" 2>/dev/null; then
    echo "FAIL: $PY has no vLLM: run \`make gpu-setup\` where the registry is reachable (or set PY)" | tee -a "$SUMMARY"
    exit 1
fi
if [ "$NGPU" -lt 1 ]; then
    echo "FAIL: no CUDA device visible to $PY: nothing to check." | tee -a "$SUMMARY"
    exit 1
fi

step env $PY -c "
import torch, transformers, peft, vllm
from iterative_label_refinement.core.devices import default_dtype, mixed_precision, vllm_dtype
for i in range(torch.cuda.device_count()):
    print(i, torch.cuda.get_device_name(i), f'{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB',
          'compute capability', torch.cuda.get_device_capability(i))
print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, '
      f'peft {peft.__version__}, vllm {vllm.__version__}, GPUs {torch.cuda.device_count()}, autocast '
      f'{mixed_precision()}, LoRA base {default_dtype()}, vLLM {vllm_dtype()}')
"

# GSM8K-style rows (the real data, when present, can be prepared into $ILR_DATA_PATH instead).
step data $PY -c "
import sys; sys.path.insert(0, 'tests')
from datasets import Dataset, DatasetDict
from test_real_model import gsm8k_like_rows
DatasetDict({'train': Dataset.from_list(gsm8k_like_rows(64, 0)), 'test': Dataset.from_list(gsm8k_like_rows(32, 1))}
            ).save_to_disk('$ILR_DATA_PATH/gsm8k')
print('64 train / 32 test rows')
"

if [ "${FULL_SUITE:-0}" = 1 ]; then
    step tests timeout 480 $PY -m pytest -q -x
else
    step tests timeout 300 $PY -m pytest -q -x tests/test_models.py tests/test_real_model.py tests/test_main.py \
        tests/test_feedback_rounds.py tests/test_distributed.py
fi

step dtypes $PY - <<'EOF'
import torch
from iterative_label_refinement.core.devices import mixed_precision
from iterative_label_refinement.core.models import load_model
from iterative_label_refinement.core.train_evaluator import _model

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
lora_base = load_model(MODEL)
full = load_model(MODEL, kind="classifier", full_finetune=True)
trained = {p.dtype for p in _model(MODEL, "classifier", 8, 2).parameters() if p.requires_grad}
print("autocast", mixed_precision(), "| LoRA base", lora_base.dtype, "| full fine-tune", full.dtype, full.device,
      "| LoRA evaluator's adapters and score head", trained)
assert full.dtype == torch.float32 and lora_base.dtype == (torch.bfloat16 if mixed_precision() == "bf16" else torch.float32)
assert trained == {torch.float32}
fractions = {}
for dtype in (torch.bfloat16, torch.float32):
    model = load_model(MODEL, kind="classifier", dtype=dtype)
    model.config.pad_token_id = 2
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    ids = torch.randint(3, 1000, (4, 64), device=model.device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mixed_precision() == "bf16"):
        loss = model(input_ids=ids, labels=torch.tensor([0, 1, 0, 1], device=model.device)).loss
    loss.backward()
    opt.step()
    changed = sum((p.detach() != b).sum().item() for p, b in zip(model.parameters(), before))
    fractions[str(dtype)] = changed / sum(b.numel() for b in before)
print("one AdamW step at lr 1e-6 changed", {k: f"{v:.2%}" for k, v in fractions.items()}, "of the weights")
EOF

COMMON=(--ds_name=gsm8k --model_size=$MODEL --n_docs=64 --n_test_docs=32 --batch_size=8 --minibatch_size_per_device=4
        --lora_rank=8 --eval_batch_size=32 --max_len=48 --lr=3e-3)
train_all() (  # a subshell: set -e and exit stay inside the step
    set -e
    local gt r0 data ev
    gt=$($PY -m iterative_label_refinement.experiments.main "${COMMON[@]}" --epochs=3 --save_frequency=0.5 --save_model=True | tail -n 1)
    data=$($PY -m iterative_label_refinement.experiments.generate_evaluator_data --save_path="$gt" | tail -n 1)
    ev=$($PY -m iterative_label_refinement.core.train_evaluator --ds_name="$data" --model_size=$MODEL --epochs=1 \
        --batch_size=8 --minibatch_size_per_device=4 | tail -n 1)
    r0=$($PY -m iterative_label_refinement.experiments.main "${COMMON[@]}" --epochs=1 --weak_labels_path="$gt" \
        --method=dpo0.10.5 --label_temp=0.7 --num_samples=2 --force_eval=False | tail -n 1)
    $PY -m iterative_label_refinement.experiments.dpo --ds_name=gsm8k --weak_model_path="$gt" --strong_model_path="$r0" \
        --evaluator_path="$ev" --subsample=0.5 >/dev/null
    $PY -m iterative_label_refinement.experiments.main "${COMMON[@]}" --epochs=1 --weak_labels_path="$gt" \
        --method=dpo0.10.5 --round_id=1 --dpo_path="$r0" --label_temp=0.7 --num_samples=2 --force_eval=False >/dev/null
    echo "$gt" >"$OUT/gt_run_dir"
    echo "$r0" >"$OUT/dpo_r0_dir"
    $PY -c "import json; print('GT run', json.load(open('$gt/results_summary.json')), '| evaluator',
        json.load(open('$ev/results_summary.json'))['pair_accuracy'])"
)
step train train_all

# same_adapters FILE ONE MANY: the adapters FILE of a 1-process run dir and an N-process one hold the same
# weights (bf16 noise aside), and no frozen DPO reference adapter was saved with them.
same_adapters() {
    $PY - "$@" <<'EOF'
import sys
from safetensors.torch import load_file
name, one, many = sys.argv[1:]
a, b = load_file(f"{one}/{name}"), load_file(f"{many}/{name}")
assert a.keys() == b.keys() and not any("reference" in k for k in a), sorted(a)[:3]
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"{name}: max |1 process - N processes| = {diff:.2e}")
assert diff < 1e-2, diff
EOF
}

ddp() (  # a subshell: set -e and exit stay inside the step
    set -e
    [ "$NGPU" -gt 1 ] || { echo "does not apply: one GPU visible, DDP compares 1 process with 2 or more"; exit $NOT_APPLICABLE; }
    local one many
    one=$($PY -m iterative_label_refinement.experiments.main "${COMMON[@]}" --epochs=1 --save_model=True \
        --results_folder="$OUT/ddp1" | tail -n 1)
    many=$(torchrun --nproc_per_node "$NGPU" -m iterative_label_refinement.experiments.main "${COMMON[@]}" --epochs=1 \
        --save_model=True --results_folder="$OUT/ddpN" | tail -n 1)
    same_adapters adapter_model.safetensors "$one" "$many"
)
step ddp ddp

fsdp() (  # a subshell: set -e and exit stay inside the step
    set -e
    [ -f "$OUT/dpo_r0_dir" ] || { echo "no DPO round 0 (the train step failed)"; exit 1; }
    local one many args
    # The train step's DPO round 1 (its preference set exists), retrained into fresh folders; AdamW, since
    # RMSprop magnifies the float noise between two runs.
    args=("${COMMON[@]}" --epochs=1 --weak_labels_path="$(cat "$OUT/gt_run_dir")" --method=dpo0.10.5 --round_id=1
          --dpo_path="$(cat "$OUT/dpo_r0_dir")" --label_temp=0.7 --num_samples=2 --force_eval=False --optim=adamw)
    one=$($PY -m iterative_label_refinement.experiments.main "${args[@]}" --results_folder="$OUT/fsdp1" | tail -n 1)
    many=$(.venv/bin/accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes "$NGPU" \
        -m iterative_label_refinement.experiments.main "${args[@]}" --results_folder="$OUT/fsdpN" | tail -n 1)
    same_adapters train_adapter/adapter_model.safetensors "$one" "$many"
)
step fsdp fsdp

vllm_check() (  # a subshell: set -e and exit stay inside the step
    set -e
    [ -f "$OUT/gt_run_dir" ] || { echo "no trained adapter (the train step failed)"; exit 1; }
    $PY benchmarks/gpu_check_vllm.py "$(cat "$OUT/gt_run_dir")"
    # A full fine-tune: its saved weights are the model vLLM serves, on the memory the trained model held.
    $PY -m iterative_label_refinement.experiments.main "${COMMON[@]}" --lora_rank=0 --lr=1e-5 --epochs=1 \
        --num_beams=1 --inference_backend=vllm --results_folder="$OUT/vllm_full" | tail -n 1
)
step vllm vllm_check

echo "---- summary ($SUMMARY) ----"
cat "$SUMMARY"
! grep -q FAIL "$SUMMARY"
