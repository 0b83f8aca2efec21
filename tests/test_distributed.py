"""Data parallelism on CPUs: `torchrun --nproc_per_node 2` (gloo) trains the weights one process trains.

`accelerate launch --cpu --num_processes 2` silently starts one process, so torchrun is used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

FLAGS = ["--ds_name=toy_arith", "--model_size=tiny-random", "--n_docs=42", "--n_test_docs=4", "--batch_size=8",
         "--minibatch_size_per_device=2", "--epochs=2", "--lr=1e-2", "--lora_rank=4", "--save_model=True"]  # fmt: skip


def _run(launcher: list[str], folder: Path) -> Path:
    cmd = [*launcher, "-m", "iterative_label_refinement.experiments.main", *FLAGS, f"--results_folder={folder}"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapters = list(folder.rglob("adapter_model.safetensors"))
    assert len(adapters) == 1, adapters
    return adapters[0].parent


def test_two_processes_train_the_weights_of_one(tmp_path):
    """21 rows of unequal length, effective batch 8 = 2 rows x 4 accumulation steps on one process, or
    2 rows x 2 steps x 2 processes: the same rows meet in every optimizer step, so the adapters match.
    Two independent replicas (each on all rows) or a halved effective batch would move them apart.
    The last step of an epoch has 5 rows, minibatches of 2, 2 and 1: one process gets 2 rows and
    (1 row + a padding row), the other 2 rows and a minibatch of padding, which must weigh nothing
    (accelerate's own evening out repeats the epoch's first rows: 2e-2 apart)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    one = _run([sys.executable], tmp_path / "one")
    two = _run([str(torchrun) if torchrun.exists() else shutil.which("torchrun"), "--nproc_per_node", "2"],
               tmp_path / "two")  # fmt: skip
    a = load_file(one / "adapter_model.safetensors")
    b = load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    lora_b = [k for k in a if "lora_B" in k]
    assert max(a[k].abs().max().item() for k in lora_b) > 1e-2  # lora_B starts at 0: training moved it
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6

    assert json.loads((two / "experiment_config.json").read_text())["world_size"] == 2
    # The curves are written once, by rank 0: one event file, one log with every optimizer step.
    for run in (one, two):
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1, run
        log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log if "loss" in r] == list(range(1, 7)), run  # 2 epochs of 3 steps (21 rows / 8)
    # Evaluation and labels come from rank 0 alone: one complete set, as in the 1-process run.
    for run in (one, two):
        assert (run / "results_summary.json").exists()
    from datasets import load_from_disk

    assert load_from_disk(str(one / "weak_labels"))["question"] == load_from_disk(str(two / "weak_labels"))["question"]
    assert json.loads((one / "results_summary.json").read_text()) == pytest.approx(
        json.loads((two / "results_summary.json").read_text())
    )


def test_each_rank_loads_onto_its_own_gpu(monkeypatch):
    """Under torchrun, LOCAL_RANK picks the GPU; without GPUs everything stays on the CPU."""
    import torch

    from iterative_label_refinement.core.models import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert default_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert default_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert default_device() == torch.device("cpu")


def test_training_arguments_pick_data_parallel_cpu_processes(tmp_path, monkeypatch):
    """On CPUs the Trainer must be told to use them (use_cpu), with gloo when several processes run:
    without use_cpu, accelerate starts no process group and each process trains alone."""
    import torch

    from iterative_label_refinement.core.train import TrainConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = TrainConfig(output_dir=str(tmp_path), lr=1e-3, batch_size=8, minibatch_size_per_device=2)
    args = cfg.training_arguments()
    assert args.use_cpu and args.ddp_backend is None and args.gradient_accumulation_steps == 4


WORKER = Path(__file__).with_name("distributed_dpo_worker.py")
EVALUATOR_WORKER = Path(__file__).with_name("distributed_evaluator_worker.py")


def _worker(mode: str, out: Path, processes: int) -> dict:
    """Runs tests/distributed_dpo_worker.py alone or under torchrun; rank 0's saved result."""
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun) if torchrun.exists() else shutil.which("torchrun"), "--nproc_per_node", str(processes)]
    cmd = [*(launcher if processes > 1 else [sys.executable]), str(WORKER), mode, str(out)]
    # The worker is a script: the repository root on the path makes it import this checkout's package.
    # A native abort (SIGABRT) then prints each thread's Python stack, to say where it happened.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parents[1]),
               PYTHONFAULTHANDLER="1")  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-8000:]  # torchrun's own summary alone is 2,000
    return torch.load(out / "result.pt")


def test_dpo_reference_runs_through_ddp_and_two_processes_train_the_weights_of_one(tmp_path):
    """DPO on 21 pairs, effective batch 8 in minibatches of 2: 1 process, or 2 processes with DDP. The
    reference log-probs are computed by the DDP-wrapped model (each rank 11 rows, in 2 batches of at
    most 8), gathered to the full column on every rank, equal to one process's; the trained adapters
    match, also through the last step of each epoch, whose 5 pairs leave the processes unequal
    minibatches (2 + 1 pairs, 2 + 0), evened out with padding pairs of no weight. The logged DPO
    diagnostics are means over the step's pairs on both processes: those one process logs."""
    from iterative_label_refinement.core.dpo import DPO_METRICS

    one = _worker("trainer", tmp_path / "one", 1)
    two = _worker("trainer", tmp_path / "two", 2)
    assert one["reference"].shape == (21, 2) and torch.equal(one["reference"], two["reference"])
    steps = [[h for h in run["history"] if "rewards/margins" in h] for run in (one, two)]
    assert [h["step"] for h in steps[0]] == [h["step"] for h in steps[1]] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(*steps):
        assert {k: b[k] for k in DPO_METRICS} == pytest.approx({k: a[k] for k in DPO_METRICS}, abs=1e-5)
    assert len({h["rewards/margins"] for h in steps[0]}) == 6  # the policy moved: the margins are not all 0
    for rank in (0, 1):
        active = json.loads((tmp_path / "two" / f"active{rank}.json").read_text())
        # 2 reference forwards, then 2 epochs x 6 rows of policy forwards, all through DDP.
        assert active == ["reference"] * 2 + ["default"] * 12, active
    lora_b = [k for k in one["policy"] if "lora_B" in k]
    assert lora_b and max((one["policy"][k] - two["policy"][k]).abs().max().item() for k in one["policy"]) < 1e-6
    start = load_file(tmp_path / "one" / "sft0" / "adapter_model.safetensors")  # the policy before training
    assert max((one["policy"][k] - start[k.replace(".default", "")]).abs().max().item() for k in lora_b) > 1e-3


def test_both_evaluator_kinds_on_two_processes_train_the_weights_of_one(tmp_path):
    """`core.train_evaluator`, effective batch 8 in minibatches of 2, 1 process or 2: the classifier on
    25 rows (its last step 1 row: one process gets it with a padding row, the other 2 padding rows)
    and the likelihood evaluator on 13 answers (last step 5: minibatches of 2, 2, 1) save the same
    weights (accelerate's evening out with repeated rows: 2e-4 and 9e-4 apart)."""
    from datasets import DatasetDict

    from iterative_label_refinement.core.evaluator_pairs import pairs_to_rows
    from iterative_label_refinement.core.models import load_model

    # 15 pairs of unequal lengths, two rows each (<reject>, <accept>): 13 to train on, 2 held out.
    pairs = [dict(question=f"What is {a} plus {b}?", better=f"{a}+{b}={a + b}\n#### {a + b}",
                  worse=f"#### {a + b + 1 + a % 5}", kind="gold_vs_wrong")
             for a, b in zip(range(3, 63, 4), range(40, 10, -2))]  # fmt: skip
    rows = pairs_to_rows(pairs)
    train_rows = rows[:26]
    del train_rows[-2]  # the 13th pair's <reject> row: 25 classifier rows, 13 <accept> rows
    data = tmp_path / "data"
    DatasetDict({"train": Dataset.from_list(train_rows), "test": Dataset.from_list(rows[26:])}).save_to_disk(str(data))
    torchrun = Path(sys.executable).with_name("torchrun")
    torchrun = str(torchrun) if torchrun.exists() else shutil.which("torchrun")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(EVALUATOR_WORKER.parents[1]),
               PYTHONFAULTHANDLER="1")  # fmt: skip
    saved = {}
    for run, launcher in (("one", [sys.executable]), ("two", [torchrun, "--nproc_per_node", "2"])):
        cmd = [*launcher, str(EVALUATOR_WORKER), str(data), str(tmp_path / run)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-8000:]
        found = sorted((tmp_path / run / "evaluators" / "data").rglob("model.safetensors"))
        assert len(found) == 2, found
        for path in found:
            kind = json.loads((path.parent / "experiment_config.json").read_text())["evaluator_kind"]
            saved[run, kind] = load_file(path)
    for kind in ("classifier", "likelihood"):
        one, two = saved["one", kind], saved["two", kind]
        assert one.keys() == two.keys()
        assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-6, kind
        start = load_model("tiny-random", kind="classifier" if kind == "classifier" else "causal_lm").state_dict()
        moved = max((one[k] - start[k]).abs().max().item() for k in one if k in start and "score" not in k)
        assert moved > 1e-4, kind


def test_reference_logps_through_fsdp2_on_two_processes_equal_one(tmp_path):
    """torch's FSDP2 (`fully_shard`) runs on CPUs with gloo (FSDP1 and accelerate's FSDP do not, see
    BENCHMARKS.md): through it, with every weight sharded over 2 ranks, `reference_logps` on 11 pairs
    (one rank computes a padding row) gives one process's values, and those of the reference adapter;
    `save_trained` writes the adapter one process writes."""
    one = _worker("fsdp2", tmp_path / "one", 1)
    two = _worker("fsdp2", tmp_path / "two", 2)
    assert two["reference"].shape == (11, 2)
    assert (one["reference"] - two["reference"]).abs().max().item() < 1e-5
    assert (one["reference"] - one["policy"]).abs().max().item() > 0.1
    # Saving gathers the sharded adapter: the file one process writes, without the reference adapter.
    a, b = (load_file(tmp_path / run / "saved" / "adapter_model.safetensors") for run in ("one", "two"))
    assert a.keys() == b.keys() and not any("reference" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dpo_reference_pass_runs_after_accelerate_prepares_the_model(tmp_path, monkeypatch):
    """Under FSDP the weights exist only as shards once `accelerator.prepare` has run, so every
    forward of the reference adapter must come after it and go through the prepared model."""
    import accelerate
    import torch
    from datasets import Dataset

    from iterative_label_refinement.core.datasets import tokenize_dataset
    from iterative_label_refinement.core.dpo import REFERENCE, load_dpo_policy, train_dpo
    from iterative_label_refinement.core.models import load_model, load_tokenizer
    from iterative_label_refinement.core.train import TrainConfig, add_lora

    torch.manual_seed(0)
    add_lora(load_model("tiny-random"), 4).save_pretrained(str(tmp_path / "sft"))
    model = load_dpo_policy("tiny-random", str(tmp_path / "sft"))
    events, prepared = [], []
    prepare = accelerate.Accelerator.prepare

    def spy_prepare(self, *args, **kwargs):
        out = prepare(self, *args, **kwargs)
        prepared.extend(o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.nn.Module))
        events.append("prepare")
        return out

    def spy_forward(module, args, kwargs):
        if model.active_adapter == REFERENCE:
            events.append("reference" if any(module is m for m in prepared) else "reference outside the wrapper")

    monkeypatch.setattr(accelerate.Accelerator, "prepare", spy_prepare)
    model.register_forward_pre_hook(spy_forward, with_kwargs=True)
    tok = load_tokenizer("tiny-random")
    rows = [{"question": f"{a} plus {b}", "chosen": f"#### {a + b}", "rejected": f"#### {a + b + 1}"} for a, b in
            [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)]]  # fmt: skip
    ds = tokenize_dataset(Dataset.from_list(rows), tok, preference=True)
    cfg = TrainConfig(output_dir=str(tmp_path / "dpo"), lr=1e-3, epochs=1, batch_size=1, warmup_ratio=0)
    train_dpo(model, tok, ds, cfg)
    # 5 rows in one batch of 4 and one of 1, after the model (and the dataloader) were prepared.
    assert [e for e in events if e != "prepare"] == ["reference", "reference"], events
    assert events.index("reference") > events.index("prepare")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "error: DPO under DeepSpeed (accelerate launch with a DeepSpeed config) is "
         "not supported: use torchrun or accelerate launch --config_file configs/accelerate/{ddp,fsdp}.yaml"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "error: DPO under FSDP version 1 is not supported: "
         "use fsdp_version: 2 (accelerate launch --config_file configs/accelerate/fsdp.yaml)"),
    ],
)  # fmt: skip
def test_dpo_refuses_launchers_it_does_not_support(tmp_path, env, message):
    """What `accelerate launch` sets for a DeepSpeed or an FSDP version 1 config: a DPO round stops
    in one line, before anything is read (the paths named here do not exist), and exits non-zero."""
    cmd = [sys.executable, "-m", "iterative_label_refinement.experiments.main", "--ds_name=toy_arith",
           "--model_size=tiny-random", "--method=dpo0.10.5", "--round_id=1", f"--dpo_path={tmp_path}/r0",
           f"--weak_labels_path={tmp_path}/weak", f"--results_folder={tmp_path}/results"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [message]
    assert list(tmp_path.iterdir()) == []


def test_fsdp_on_cpus_is_refused_not_run_as_ddp(tmp_path, monkeypatch):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` on a machine without GPUs: accelerate
    would quietly train with DDP (it enables FSDP on accelerators only), so training stops in one line."""
    from iterative_label_refinement.core.settings import ConfigError
    from iterative_label_refinement.core.train import TrainConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    cfg = TrainConfig(output_dir=str(tmp_path), lr=1e-3, batch_size=8, minibatch_size_per_device=2)
    with pytest.raises(
        ConfigError, match=r"^FSDP needs GPUs \(accelerate runs DDP on CPUs\): on CPUs launch with torchrun$"
    ):
        cfg.training_arguments()


# ---------------------------------------------------------------------------------------------
# One process: a step of unequal minibatches trains the mean over its rows
# ---------------------------------------------------------------------------------------------


def _sgd(monkeypatch) -> None:
    """Plain SGD without clipping from every TrainConfig: a step is lr x the gradient, of any scale."""
    from iterative_label_refinement.core.train import TrainConfig

    arguments = TrainConfig.training_arguments
    monkeypatch.setattr(TrainConfig, "training_arguments",
                        lambda self, **kw: arguments(self, **{"optim": "sgd", "max_grad_norm": 0, **kw}))  # fmt: skip


def test_a_dpo_step_of_unequal_minibatches_trains_the_mean_over_its_pairs(tmp_path, monkeypatch):
    """5 pairs, effective batch 8 in minibatches of 2: one SGD step over minibatches of 2, 2 and 1 pairs
    moves the policy by lr x the gradient of the mean DPO loss of the 5 pairs, here pair by pair. The
    Trainer's mean per minibatch divided by 3 weighs the lone pair 1/3, each other 1/6 (1e-2 apart)."""
    from distributed_dpo_worker import ROWS, sft_adapter

    from iterative_label_refinement.core import dpo, train
    from iterative_label_refinement.core.datasets import tokenize_dataset
    from iterative_label_refinement.core.models import load_tokenizer

    lr, beta = 1.0, 0.1
    sft_adapter(tmp_path / "sft", seed=0)
    tok = load_tokenizer("tiny-random")
    ds = tokenize_dataset(Dataset.from_list(ROWS[:5]), tok, preference=True)
    model = dpo.load_dpo_policy("tiny-random", str(tmp_path / "sft"))
    losses = []
    for row in ds:  # the reference adapter is the policy's start: its log-probs are the policy's, fixed
        chosen, rejected = dpo._pair_logps(model, dpo._pair_batch([row], tok.pad_token_id), False)
        losses.append(dpo.dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta)[0])
    torch.cat(losses).mean().backward()
    policy = {n: p for n, p in model.named_parameters() if p.requires_grad}
    expected = {n: (p - lr * p.grad).detach() for n, p in policy.items()}

    _sgd(monkeypatch)
    model = dpo.load_dpo_policy("tiny-random", str(tmp_path / "sft"))
    cfg = train.TrainConfig(output_dir=str(tmp_path / "dpo"), lr=lr, epochs=1, batch_size=8,
                            minibatch_size_per_device=2, lr_schedule="constant", warmup_ratio=0)  # fmt: skip
    dpo.train_dpo(model, tok, ds, cfg, beta=beta)
    trained = dict(model.named_parameters())
    assert max((expected[n] - policy[n].detach()).abs().max().item() for n in policy) > 1e-3  # it moved
    assert max((expected[n] - trained[n].detach()).abs().max().item() for n in policy) < 1e-6


def test_a_classifier_step_of_unequal_minibatches_trains_the_mean_over_its_rows(tmp_path, monkeypatch):
    """The classifier evaluator on 5 rows of unequal length, one SGD step over minibatches of 2, 2 and
    1: lr x the gradient of the mean cross-entropy of the 5 rows, each computed alone."""
    import copy

    from iterative_label_refinement.core import train_evaluator
    from iterative_label_refinement.core.models import load_model, load_tokenizer
    from iterative_label_refinement.core.train import TrainConfig, collate

    lr = 0.5
    tok = load_tokenizer("tiny-random")
    prompts = [f"Is {i * 7} + {i} = {i * 8}?" + " Surely" * i for i in range(5)]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    ds = Dataset.from_dict({"input_ids": ids, "labels": [1, 0, 0, 1, 1]})
    torch.manual_seed(0)
    start = load_model("tiny-random", kind="classifier", dropout=False)
    start.config.pad_token_id = tok.pad_token_id
    model = copy.deepcopy(start)
    losses = [torch.nn.functional.cross_entropy(model(input_ids=torch.tensor([r["input_ids"]])).logits,
                                                torch.tensor([r["labels"]])) for r in ds]  # fmt: skip
    torch.stack(losses).mean().backward()
    expected = {n: (p - lr * p.grad).detach() for n, p in model.named_parameters()}

    _sgd(monkeypatch)
    model = copy.deepcopy(start)
    args = TrainConfig(output_dir=str(tmp_path), lr=lr, epochs=1, batch_size=8, minibatch_size_per_device=2,
                       lr_schedule="constant", warmup_ratio=0).training_arguments(
        eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="eval_loss",
        greater_is_better=False)  # fmt: skip
    train_evaluator.train(model, ds, ds, lambda rows: collate(rows, tok.pad_token_id), args, head_lr=None)
    trained, before = dict(model.named_parameters()), dict(start.named_parameters())
    assert max((expected[n] - before[n]).abs().max().item() for n in expected) > 1e-3  # it moved
    assert max((expected[n] - trained[n].detach()).abs().max().item() for n in expected) < 1e-6
