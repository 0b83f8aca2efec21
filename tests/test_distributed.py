"""A 2-process CPU data-parallel run (torchrun, gloo) trains one tiny run and saves one adapter.

`accelerate launch --cpu --num_processes 2` silently starts one process, so torchrun is used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_torchrun_two_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun) if torchrun.exists() else shutil.which("torchrun"), "--nproc_per_node", "2",
           "-m", "iterative_label_refinement.experiments.main", "--ds_name=toy_arith", "--model_size=tiny-random",
           "--n_docs=32", "--n_test_docs=4", "--batch_size=8", "--minibatch_size_per_device=2", "--epochs=1",
           "--lora_rank=4", "--save_model=True", f"--results_folder={tmp_path}"]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapters = list(tmp_path.rglob("adapter_model.safetensors"))
    assert len(adapters) == 1
    run_dir = adapters[0].parent
    assert json.loads((run_dir / "experiment_config.json").read_text())["world_size"] == 2
    assert (run_dir / "weak_labels").is_dir() and (run_dir / "results_summary.json").exists()
