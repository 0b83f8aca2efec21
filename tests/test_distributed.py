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
from safetensors.torch import load_file

FLAGS = ["--ds_name=toy_arith", "--model_size=tiny-random", "--n_docs=32", "--n_test_docs=4", "--batch_size=8",
         "--minibatch_size_per_device=2", "--epochs=2", "--lr=1e-2", "--lora_rank=4", "--save_model=True"]  # fmt: skip


def _run(launcher: list[str], folder: Path) -> Path:
    cmd = [*launcher, "-m", "iterative_label_refinement.experiments.main", *FLAGS, f"--results_folder={folder}"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapters = list(folder.rglob("adapter_model.safetensors"))
    assert len(adapters) == 1, adapters
    return adapters[0].parent


def test_two_processes_train_the_weights_of_one(tmp_path):
    """16 rows of unequal length, effective batch 8 = 2 rows x 4 accumulation steps on one process, or
    2 rows x 2 steps x 2 processes: the same rows meet in every optimizer step, so the adapters match.
    Two independent replicas (each on all rows) or a halved effective batch would move them apart."""
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
