"""A run killed mid-training resumes from its last complete checkpoint and ends with the weights of an
uninterrupted run; torn checkpoints are skipped; no schedule leaves every optimizer step at lr 0."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from iterative_label_refinement.core.checkpoints import checkpoint_dirs, checkpoint_problem, resume_point
from iterative_label_refinement.core.datasets import load_dataset, tokenize_dataset
from iterative_label_refinement.core.layout import refined_path
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.core.train import TrainConfig, add_lora, train_sft, warmup_steps
from iterative_label_refinement.experiments import generate_evaluator_data as ged
from iterative_label_refinement.experiments import main as main_module

REPO = Path(__file__).resolve().parents[1]
KILLED_RUN = Path(__file__).with_name("killed_run.py")
# 24 training rows (half A of 48), effective batch 8: 3 optimizer steps per epoch, 9 in all; a
# checkpoint every ceil(0.2 x 9) = 2 steps (2, 4, 6, 8, and the last, 9). Killed while saving
# checkpoint-6, the run resumes from checkpoint-4: one step into its second epoch, so the resumed
# epoch's order (the sampler's epoch 1) and the skipped batches both matter; dropout (0.1, see
# tests/killed_run.py) makes the RNG state matter too.
FLAGS = dict(ds_name="toy_arith", model_size="tiny-random", n_docs=48, n_test_docs=4, batch_size=8,
             minibatch_size_per_device=4, epochs=3, lr=1e-2, lora_rank=4, save_frequency=0.2, save_model=True,
             train_with_dropout=True, generate_weak_labels=False, force_eval=False)  # fmt: skip


def launch(results: Path, kill_at: int = 0, processes: int = 1, **flags) -> subprocess.CompletedProcess:
    """experiments.main through tests/killed_run.py (attention dropout 0.1): killed while saving
    checkpoint-`kill_at`, or (0) not; on `processes` CPU processes (torchrun, DDP)."""
    args = [f"--{k}={v}" for k, v in {**FLAGS, **flags, "results_folder": results}.items()]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun) if torchrun.exists() else shutil.which("torchrun"), "--nproc_per_node", str(processes)]
    cmd = [*(launcher if processes > 1 else [sys.executable]), str(KILLED_RUN), str(kill_at), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def run_dir_of(results: Path) -> Path:
    (config,) = results.rglob("experiment_config.json")
    return config.parent


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def kill_and_resume(results: Path, kill_at: int, processes: int = 1, **flags) -> tuple[Path, str]:
    """Killed (SIGKILL) while saving checkpoint-`kill_at`, then rerun as it was; (run dir, the rerun's stderr)."""
    killed = launch(results, kill_at, processes, **flags)
    assert killed.returncode == (-9 if processes == 1 else 1), killed.stderr[-3000:]  # torchrun: 1 if one died
    run_dir = run_dir_of(results)
    torn = run_dir / f"checkpoint-{kill_at}"
    assert (torn / "adapter_model.safetensors").exists() and not (torn / "trainer_state.json").exists()
    before = {p: p.stat().st_mtime_ns for p in run_dir.glob("checkpoint-*/trainer_state.json")}
    rerun = launch(results, processes=processes, **flags)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # Resumed, not redone: the checkpoints before the kill are the ones the killed run wrote.
    assert before and all(p.stat().st_mtime_ns == t for p, t in before.items())
    return run_dir, rerun.stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("uninterrupted")
    done = launch(results)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir_of(results)


def test_killed_sft_run_resumes_from_its_last_complete_checkpoint(uninterrupted, tmp_path):
    run_dir, log = kill_and_resume(tmp_path / "killed", kill_at=6)
    assert "Skipping torn checkpoint-6 (no trainer_state.json" in log
    assert "INFO iterative_label_refinement.core.train: Resuming from checkpoint-4 (step 4 of 9)" in log
    final = load_file(uninterrupted / "adapter_model.safetensors")
    assert max(v.abs().max().item() for k, v in final.items() if "lora_B" in k) > 1e-2  # lora_B starts at 0
    assert max_difference(final, load_file(run_dir / "adapter_model.safetensors")) < 1e-6
    # Every checkpoint is there again, complete, the same as the uninterrupted run's: the evaluator's
    # data samples from them. The final model saved, only their weights are kept.
    assert [p.name for p in ged.find_checkpoints(run_dir)] == [f"checkpoint-{k}" for k in (2, 4, 6, 8, 9)]
    for k in (6, 8):
        a, b = (load_file(d / f"checkpoint-{k}" / "adapter_model.safetensors") for d in (uninterrupted, run_dir))
        assert max_difference(a, b) < 1e-6
    assert not list(run_dir.glob("checkpoint-*/optimizer.pt")) and not list(run_dir.glob("checkpoint-*/rng_state*"))


def test_killed_run_on_two_processes_resumes_mid_epoch_in_the_order_of_that_epoch(tmp_path):
    """torchrun, 2 CPU processes (DDP): the same 9 steps, resumed one step into epoch 1. Under DDP the
    Trainer's batch skipping hides the sampler from `set_epoch`: without `_SamplerEpoch` the resumed
    epoch took epoch 0's rows (measured: 1e-2 off). Every rank restores its own RNG state."""
    done = launch(tmp_path / "uninterrupted", processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir, log = kill_and_resume(tmp_path / "killed", kill_at=6, processes=2)
    assert "Resuming from checkpoint-4 (step 4 of 9)" in log
    final = load_file(run_dir_of(tmp_path / "uninterrupted") / "adapter_model.safetensors")
    assert max_difference(final, load_file(run_dir / "adapter_model.safetensors")) < 1e-6


def test_killed_dpo_round_resumes_from_its_last_complete_checkpoint(uninterrupted, tmp_path):
    """A DPO round (its checkpoints hold the frozen reference adapter too) on 12 pairs, effective
    batch 4: 3 steps per epoch, 9 in all; killed while saving checkpoint-6, it resumes from 4."""
    method = "dpo0.10.5"
    halves = load_dataset("toy_arith", seed=0, split_sizes={"train": 48})["train"].train_test_split(
        test_size=0.5, seed=0
    )
    rows = [dict(question=r["question"], chosen=r["answer"], rejected=r["answer"] + "7", gt_answer=r["answer"],
                 score=0.9, acc=1.0) for r in halves["train"].select(range(12))]  # fmt: skip
    weak = tmp_path / "weak"  # the uninterrupted SFT run: the weak run and the previous round's adapter
    shutil.copytree(uninterrupted, weak, ignore=shutil.ignore_patterns("checkpoint-*"))
    Dataset.from_list(rows).save_to_disk(str(refined_path(weak, method, 0)))
    dpo = dict(weak_labels_path=weak, dpo_path=weak, method=method, round_id=1, batch_size=4,
               minibatch_size_per_device=2, label_temp=1.0, lr=1e-3, optim="adamw")  # fmt: skip
    done = launch(tmp_path / "uninterrupted", **dpo)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir, log = kill_and_resume(tmp_path / "killed", kill_at=6, **dpo)
    assert (run_dir / "checkpoint-4" / "reference" / "adapter_model.safetensors").exists()
    assert "Skipping torn checkpoint-6 (no trainer_state.json" in log
    assert "INFO iterative_label_refinement.core.train: Resuming from checkpoint-4 (step 4 of 9)" in log
    start = load_file(weak / "adapter_model.safetensors")
    final = load_file(run_dir_of(tmp_path / "uninterrupted") / "train_adapter" / "adapter_model.safetensors")
    assert max_difference(start, final) > 1e-4  # DPO moved the policy
    assert max_difference(final, load_file(run_dir / "train_adapter" / "adapter_model.safetensors")) < 1e-6


# ---------------------------------------------------------------------------------------------
# What a complete checkpoint is
# ---------------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


TEARS = {  # how a save killed midway (or a lost write) leaves a checkpoint, and whether its model is still whole
    "no trainer_state.json": (lambda c: (c / "trainer_state.json").unlink(), False),
    "truncated trainer_state.json": (lambda c: truncate(c / "trainer_state.json"), False),
    "trainer_state.json of another step": (
        lambda c: (c / "trainer_state.json").write_text(json.dumps({"global_step": 3, "max_steps": 6})), False),
    "no adapter": (lambda c: (c / "adapter_model.safetensors").unlink(), False),
    "truncated adapter": (lambda c: truncate(c / "adapter_model.safetensors"), False),
    "adapter with bytes missing at its end": (
        lambda c: (c / "adapter_model.safetensors").write_bytes((c / "adapter_model.safetensors").read_bytes()[:-4]),
        False),
    "no optimizer.pt": (lambda c: (c / "optimizer.pt").unlink(), True),
    "truncated optimizer.pt": (lambda c: truncate(c / "optimizer.pt"), True),
    "truncated scheduler.pt": (lambda c: truncate(c / "scheduler.pt"), True),
    "no rng_state.pth": (lambda c: (c / "rng_state.pth").unlink(), True),
    "truncated training_args.bin": (lambda c: truncate(c / "training_args.bin"), True),
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """train_sft on 12 rows, batch 4, 2 epochs: 6 steps, a checkpoint every 3 (checkpoint-3, -6)."""
    out = tmp_path_factory.mktemp("checkpointed")
    tok = load_tokenizer("tiny-random")
    torch.manual_seed(0)
    model = add_lora(load_model("tiny-random", dropout=False), 4)
    ds = tokenize_dataset(load_dataset("toy_arith", seed=0, split_sizes={"train": 12})["train"], tok)
    train_sft(model, tok, ds, TrainConfig(output_dir=str(out), lr=1e-2, epochs=2, batch_size=4,
                                          minibatch_size_per_device=4, save_frequency=0.5))  # fmt: skip
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-3", "checkpoint-6"]
    return out


@pytest.mark.parametrize("tear", sorted(TEARS))
def test_a_torn_checkpoint_is_skipped_for_the_one_before(checkpointed, tmp_path, tear):
    damage, model_whole = TEARS[tear]
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed, run_dir)
    damage(run_dir / "checkpoint-6")
    # The evaluator's data samples from every checkpoint whose model is whole, and only from those.
    expected = ["checkpoint-3", "checkpoint-6"] if model_whole else ["checkpoint-3"]
    assert [p.name for p in ged.find_checkpoints(run_dir)] == expected
    assert checkpoint_problem(run_dir / "checkpoint-3", resumable=True) is None
    assert checkpoint_problem(run_dir / "checkpoint-6", resumable=True) is not None
    # Resuming takes the one before and deletes the torn one, which training writes again.
    assert resume_point(run_dir, resume=True, main_process=True) == run_dir / "checkpoint-3"
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["checkpoint-3"]
    # Training afresh (--force_retrain) deletes them all; a non-main process deletes nothing.
    shutil.copytree(checkpointed / "checkpoint-6", run_dir / "checkpoint-6")
    assert resume_point(run_dir, resume=True, main_process=False) == run_dir / "checkpoint-6"
    assert resume_point(run_dir, resume=False, main_process=True) is None and not checkpoint_dirs(run_dir)


def test_a_checkpoint_of_another_schedule_is_refused(checkpointed, tmp_path):
    """16 rows instead of 12 make 8 steps, not the 6 the checkpoints were saved for: resuming would
    follow another lr schedule and data order, so it is refused before the first step."""
    shutil.copytree(checkpointed, tmp_path / "run")
    tok = load_tokenizer("tiny-random")
    model = add_lora(load_model("tiny-random", dropout=False), 4)
    ds = tokenize_dataset(load_dataset("toy_arith", seed=0, split_sizes={"train": 16})["train"], tok)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), lr=1e-2, epochs=2, batch_size=4, minibatch_size_per_device=4,
                      save_frequency=0.5)  # fmt: skip
    with pytest.raises(ConfigError, match="checkpoint-6 was saved by a run of 6 optimizer steps, this one has 8"):
        train_sft(model, tok, ds, cfg)


# ---------------------------------------------------------------------------------------------
# Warmup: no run trains nothing
# ---------------------------------------------------------------------------------------------


def test_warmup_steps_keep_transformers_count_below_the_whole_run():
    for total in range(1, 400):
        today = math.ceil(total * 0.05)  # transformers' rounding of a ratio warmup
        assert warmup_steps(0.05, total) == (today if today < total else total - 1)
    assert [warmup_steps(0.05, n) for n in (1, 2, 20, 21, 60)] == [0, 1, 1, 2, 3]
    assert [warmup_steps(1.0, n) for n in (1, 2, 10)] == [0, 1, 9] and warmup_steps(0, 10) == 0


@pytest.mark.parametrize("schedule", ["cosine_warmup", "cosine_anneal_warmup", "linear", "constant"])
def test_one_and_two_step_runs_train(tmp_path, schedule):
    """4 rows, batch 4: 1 optimizer step with 1 epoch, 2 with 2. By hand: W = min(ceil(0.05 n), n - 1)
    warmup steps, 0 for n = 1 and 1 for n = 2; step s runs at lr x s / W while s < W, then at lr x the
    schedule's decay, which is 1 at s = W (cosine: 0.5 (1 + cos 0); with a floor: 0.1 + 0.9 x that;
    linear: (n - W) / (n - W); constant: 1). So 1 step: [lr]; 2 steps: [0, lr]. Before, W = ceil(0.05 n)
    = 1 for n = 1: the only step ran at lr 0 and the adapter stayed as it was initialised."""
    lr = 1e-2
    expected = {1: [lr], 2: [0.0, lr]}
    tok = load_tokenizer("tiny-random")
    ds = tokenize_dataset(load_dataset("toy_arith", seed=0, split_sizes={"train": 4})["train"], tok)
    for steps, lrs in expected.items():
        torch.manual_seed(0)
        model = add_lora(load_model("tiny-random", dropout=False), 4)
        out = tmp_path / str(steps)
        cfg = TrainConfig(output_dir=str(out), lr=lr, epochs=steps, batch_size=4, minibatch_size_per_device=4,
                          lr_schedule=schedule, save_frequency=0.5)  # fmt: skip
        train_sft(model, tok, ds, cfg)
        history = json.loads((checkpoint_dirs(out)[-1] / "trainer_state.json").read_text())["log_history"]
        assert [h["learning_rate"] for h in history if "loss" in h] == pytest.approx(lrs, abs=1e-12)
        assert max(p.abs().max().item() for n, p in model.named_parameters() if "lora_B" in n) > 1e-4


def test_a_schedule_that_trains_nothing_is_refused_before_anything_is_written(tmp_path):
    results = tmp_path / "results"
    for flags, message in [(dict(lr=0), "--lr must be a positive number"),
                           (dict(lr=-1e-3), "--lr must be a positive number"),
                           (dict(warmup_ratio=1.5), r"--warmup_ratio must be in \[0, 1\]"),
                           (dict(warmup_ratio=-0.1), r"--warmup_ratio must be in \[0, 1\]")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            main_module.main(results_folder=str(results), **{**FLAGS, **flags})
    assert not results.exists()
    with pytest.raises(ConfigError, match=r"--save_frequency must be in \(0, 1\)"):
        TrainConfig(output_dir=str(tmp_path), lr=1e-3, save_frequency=1.5).training_arguments()
