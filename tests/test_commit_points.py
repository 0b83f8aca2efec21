"""A run killed anywhere gives, once rerun, what an uninterrupted run gives: its outputs become
visible together at one commit point (`done.json`, written last), and the done-check is that point.

The kill is real (SIGKILL, so no `finally` runs) and comes just before each rename a run makes: the
wrapper counts the process's renames and kills it before the k-th. The reference is an uninterrupted
run in another folder; the report of each folder must be the same.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from datasets import load_from_disk

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--ds_name=toy_arith", "--model_size=tiny-random", "--n_docs=24", "--n_test_docs=6", "--batch_size=8",
         "--minibatch_size_per_device=8", "--epochs=1", "--lora_rank=4", "--num_beams=1"]  # fmt: skip

# Counts the renames of this process (os.replace: write_json, write_jsonl, a dataset's first save) in
# $RENAMES, and SIGKILLs the process before rename number $KILL_AT (0: never).
WRAPPER = """import os, signal, sys
renames, kill_at, log = 0, int(os.environ["KILL_AT"]), os.environ["RENAMES"]
replace = os.replace
def counted(src, dst, *args, **kwargs):
    global renames
    renames += 1
    with open(log, "a") as f:
        f.write(os.path.basename(str(dst)) + "\\n")
    if renames == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, *args, **kwargs)
os.replace = counted
from iterative_label_refinement.core.cli import run_cli
from iterative_label_refinement.experiments.main import main
run_cli(main, sys.argv[1:])
"""


def _main(folder: Path, wrapper: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), KILL_AT=str(kill_at), RENAMES=str(folder / "renames.log"),
               ILR_SAVE_PATH=str(folder / "results"))  # fmt: skip
    return subprocess.run([sys.executable, str(wrapper), *FLAGS], capture_output=True, text=True, env=env, timeout=600)


def _outcome(folder: Path) -> dict:
    """What the run left that anything later reads: its summary, its labels, its commit point."""
    (run_dir,) = [p for p in (folder / "results" / "default").iterdir() if p.is_dir()]
    return {"summary": json.loads((run_dir / "results_summary.json").read_text()),
            "labels": [dict(r) for r in load_from_disk(str(run_dir / "weak_labels"))],
            "done": json.loads((run_dir / "done.json").read_text()),
            "leftovers": sorted(p.name for p in run_dir.iterdir() if p.name.endswith((".tmp", ".old")))}  # fmt: skip


def _report(folder: Path) -> str:
    """The report of the run as the weak supervisor of a round-0 SFT run (its table shows the weak
    labels' accuracy, read from the weak run's summary)."""
    (weak,) = [p for p in (folder / "results" / "default").iterdir() if p.is_dir()]
    strong = subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.main", *FLAGS,
                             f"--weak_labels_path={weak}", "--method=ilr0.1", "--generate_weak_labels=False"],
                            capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO), ILR_SAVE_PATH=str(folder / "results")))  # fmt: skip
    assert strong.returncode == 0, strong.stderr[-2000:]
    report = subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.report",
                             f"--results_folder={folder / 'results'}", f"--out_dir={folder / 'report'}"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    assert report.returncode == 0, report.stderr[-2000:]
    return (folder / "report" / "report.csv").read_text().replace(str(folder), "<folder>")


def test_a_run_killed_before_any_rename_reruns_to_the_uninterrupted_result(tmp_path):
    wrapper = tmp_path / "killable.py"
    wrapper.write_text(WRAPPER)
    whole = tmp_path / "whole"
    assert _main(whole, wrapper).returncode == 0
    renames = (whole / "renames.log").read_text().split()
    assert renames[-2:] == ["results_summary.json", "done.json"]  # the commit point is the last write
    assert {"experiment_config.json", "test_results.jsonl", "weak_labels"} <= set(renames)
    expected = _outcome(whole)
    assert expected["summary"]["label_accuracy"] is not None and expected["leftovers"] == []
    for k in range(1, len(renames) + 1):
        folder = tmp_path / f"killed-{k}"
        killed = _main(folder, wrapper, kill_at=k)
        assert killed.returncode == -signal.SIGKILL, (k, killed.stderr[-2000:])
        (run_dir,) = [p for p in (folder / "results" / "default").iterdir() if p.is_dir()]
        assert not (run_dir / "done.json").exists()  # never taken as done
        rerun = _main(folder, wrapper)
        assert rerun.returncode == 0, (k, rerun.stderr[-2000:])
        assert "nothing to do" not in rerun.stderr, k
        assert _outcome(folder) == expected, f"killed before rename {k} ({renames[k - 1]})"
        if renames[k - 1] == "results_summary.json":  # the labels saved, their accuracy not yet recorded
            report = _report(whole)
            assert _report(folder) == report and all(r["label_accuracy"] for r in csv.DictReader(io.StringIO(report)))
            assert report.count("\n") > 1  # rows, not the header alone
