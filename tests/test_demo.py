"""The main job in quick mode, through the real scripts: killed mid-ILR, resumed, then reported.

Quick mode uses random tiny models: it checks the plumbing (every method and round, resumption,
complete label sets), not the toy world's effects, which `make demo DEMO=full` measures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from iterative_label_refinement.core.models import get_model_config

REPO = Path(__file__).resolve().parents[1]


def demo(results: Path) -> subprocess.Popen:
    env = dict(os.environ, DEMO="quick", RESULTS_FOLDER=str(results), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.Popen(["bash", str(REPO / "scripts" / "demo.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def snapshot(results: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file() and ".tmp" not in str(p)}


def test_quick_demo_killed_mid_ilr_resumes_and_reports(tmp_path):
    results = tmp_path / "demo"
    proc = demo(results)
    # Kill (SIGKILL, the whole process group) once round 0's first half-data model is being trained.
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if list(results.rglob("*hd=1*ri=0*/experiment_config.json")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the demo ended before the ILR round started:\n" + proc.stdout.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = snapshot(results)
    assert before, "nothing was written before the kill"

    proc = demo(results)
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-5000:]
    # the folder records the bases it was made with (their cache dirs, named by recipe)
    random_base = f"tiny-random-{get_model_config('tiny-random').build_id}"
    assert (results / "bases.txt").read_text() == f"{random_base} {random_base}\n"
    after = snapshot(results)
    finished_before = {p for p in before if p.endswith(("results_summary.json", "state.json"))}
    assert all(after[p] == before[p] for p in finished_before), "a finished step was redone"
    # every label set is complete and loadable
    for state in results.rglob("state.json"):
        assert len(load_from_disk(str(state.parent))) > 0
    assert not list(results.rglob(".*.tmp"))
    # the report lists every method and round
    table = out.split("Test accuracy (%) by round:")[1].split("Accuracy (%)")[0]
    header = table.split()[:3]
    assert header == ["method", "r0", "r1"]
    rows = {line.split()[0]: line.split()[1:] for line in table.strip().splitlines()[2:]}
    assert set(rows) >= {"ilr0.3", "naive0.3", "dpo0.50.15"}
    assert all(len(v) == 2 and "-" not in v for m, v in rows.items() if m in ("ilr0.3", "naive0.3", "dpo0.50.15"))
    assert list(results.rglob("accuracy_toy_arith_*.png")) and list(results.rglob("report.csv"))
    # the demo ends with the report: its table, then where the plot is
    plots = [line[len("plot: ") :] for line in out.split("Test accuracy (%) by round:")[1].splitlines()
             if line.startswith("plot: ")]  # fmt: skip
    assert plots and all(Path(p).is_file() for p in plots), out[-2000:]
    # a training run names its run dir before it trains, not only at its end
    first_train = out.index("train_runtime")
    assert "Run dir: " in out[:first_train], out[:first_train][-3000:]
    check_curves(results)
    page = next(results.rglob("report.html")).read_text()
    assert page.count('src="data:image/png;base64,') >= 5  # accuracy, labels, DPO, losses, the evaluator

    # a third run finds every step done
    start = time.time()
    proc = demo(results)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "train:" not in out and "refine:" not in out, out[-3000:]
    assert snapshot(results).keys() >= after.keys()
    print(f"rerun of a finished quick demo: {time.time() - start:.1f} s")


def check_curves(results: Path) -> None:
    """Every training run (each experiments.main run dir, the evaluator) kept its log history and
    TensorBoard events; TensorBoard's own reader gives the Trainer's loss at every logged step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p.parent for p in results.rglob("experiment_config.json") if "round_id" in json.loads(p.read_text())]
    evaluators = [p.parent for p in results.rglob("evaluators/*/*/results_summary.json")]
    assert len(runs) >= 8 and len(evaluators) == 1, (runs, evaluators)
    for run in runs + evaluators:
        log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        losses = {r["step"]: r["loss"] for r in log if "loss" in r}
        assert losses and any("train_loss" in r for r in log), run  # every step, then the run's summary
        assert list((run / "tensorboard").glob("events.out.tfevents.*")), run
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        # the last event of a step: a resumed run logs again the steps its killed attempt logged after its checkpoint
        logged = {e.step: e.value for e in events.Scalars("train/loss")}
        assert logged.keys() == losses.keys(), run
        assert all(logged[s] == pytest.approx(losses[s], rel=1e-6) for s in losses), run  # stored as float32
