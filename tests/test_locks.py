"""One writer per artifact (core.locks): a second process refuses in one line naming the holder, and
the lock of a killed process is taken over without any cleaning by hand."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset

from iterative_label_refinement.core.files import write_json
from iterative_label_refinement.core.locks import lock_path, writing
from iterative_label_refinement.core.settings import ConfigError

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until the other process says it holds the lock (a polled file, not a timing assumption)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the holder never took its lock"
        time.sleep(0.05)


HOLDER = """import sys, time
from pathlib import Path
from iterative_label_refinement.core.locks import writing
with writing(sys.argv[1]):
    Path(sys.argv[2]).touch()
    while not Path(sys.argv[3]).exists():
        time.sleep(0.05)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    target = tmp_path / "results" / "ilr0.1_0_weak_labels"
    held, release = tmp_path / "held", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), str(held), str(release)], env=ENV)
    _wait_for(held, holder)
    with pytest.raises(ConfigError) as error:
        with writing(target):
            pytest.fail("two writers held one lock")
    message = str(error.value)
    assert message.startswith(f"{target} is being written by pid {holder.pid} on {socket.gethostname()} since ")
    assert message.endswith("(-c " + f"{target} {held} {release}); wait for that run to finish (a killed run's lock is "
                            "freed with it)")  # fmt: skip
    before = lock_path(target).read_bytes()
    with pytest.raises(ConfigError):
        with writing(target):
            pass
    assert lock_path(target).read_bytes() == before  # a refused writer changes nothing

    holder.send_signal(signal.SIGKILL)  # killed mid-write: no clean-up of its own
    holder.wait()
    with writing(target):  # the OS freed the lock with the process
        assert str(os.getpid()) in lock_path(target).read_text()
    with writing(target):  # and the block released it
        pass


STEP = """import sys, time
from pathlib import Path
import dataclasses
from iterative_label_refinement.core import methods
ilr = methods.method_kind("ilr")
def slow(step):
    Path(sys.argv[1]).touch()
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)
    return ilr.rows(step)
methods._KINDS["ilr"] = dataclasses.replace(ilr, rows=slow)
from iterative_label_refinement.core.cli import run_cli
from iterative_label_refinement.experiments.ilr import main
run_cli(main, sys.argv[3:])
"""


def _labels(n: int) -> list[dict]:
    return [{"question": f"q{i}", "answer": f"#### {i % 3}", "gt_answer": f"#### {i}", "acc": float(i % 3 == i)}
            for i in range(n)]  # fmt: skip


def test_two_refinement_steps_on_one_label_set(tmp_path):
    """A real `experiments.ilr` started while another is writing the same label set refuses in one line
    and changes nothing; once the first has finished, it finds the label set done."""
    runs = {}
    for name, rows in (("weak", _labels(12)), ("h1-ri=0", _labels(12)[:6]), ("h2-ri=0", _labels(12)[6:])):
        Dataset.from_list([dict(r, answer="#### 0") if name != "weak" else r for r in rows]).save_to_disk(
            str(tmp_path / name / "weak_labels"))  # fmt: skip
        write_json(tmp_path / name / "experiment_config.json", {"round_id": 0, "ds_name": "toy_arith"})
        runs[name] = tmp_path / name
    flags = ["--ds_name=toy_arith", f"--weak_model_path={runs['weak']}", f"--model1_path={runs['h1-ri=0']}",
             f"--model2_path={runs['h2-ri=0']}", "--use_oracle_feedback=True", "--max_replace=0.5"]  # fmt: skip
    out = runs["weak"] / "orailr0.5_0_weak_labels"
    held, release = tmp_path / "held", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", STEP, str(held), str(release), *flags], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(held, first)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    second = subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.ilr", *flags], env=ENV,
                            capture_output=True, text=True)  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"error: {out} is being written by pid {first.pid} on {socket.gethostname()} since "
        + second.stderr.split(" since ")[1].split(" (")[0] + f" (-c {held} {release} {' '.join(flags)}); wait for "
        "that run to finish (a killed run's lock is freed with it)"
    ]  # fmt: skip
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files and not out.exists()
    release.touch()
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(out) and (out / "provenance.json").exists()
    again = subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.ilr", *flags], env=ENV,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0 and "nothing to do" in again.stderr


RUN = """import sys, time
from pathlib import Path
from iterative_label_refinement.experiments import main as main_module
train_or_load = main_module._train_or_load
def slow(*args):
    Path(sys.argv[1]).touch()
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)
    return train_or_load(*args)
main_module._train_or_load = slow
from iterative_label_refinement.core.cli import run_cli
run_cli(main_module.main, sys.argv[3:])
"""


def test_a_second_run_of_one_run_dir_is_refused_and_cleans_nothing(tmp_path):
    """Run B's start-up used to clean run A's in-flight temporary files, and A crashed."""
    flags = ["--ds_name=toy_arith", "--model_size=tiny-random", "--n_docs=16", "--n_test_docs=4", "--batch_size=8",
             "--minibatch_size_per_device=8", "--epochs=1", "--lora_rank=4", f"--results_folder={tmp_path / 'r'}"]  # fmt: skip
    held, release = tmp_path / "held", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", RUN, str(held), str(release), *flags], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(held, first)
    (run_dir,) = [p for p in (tmp_path / "r" / "default").iterdir() if p.is_dir()]
    in_flight = run_dir / ".results_summary.json.0123.tmp"  # what a write of A's would have there
    in_flight.write_text("{}")
    second = subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.main", *flags], env=ENV,
                            capture_output=True, text=True)  # fmt: skip
    assert second.returncode == 2 and in_flight.exists()
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {run_dir} is being written by pid {first.pid} on {socket.gethostname()}"), last
    release.touch()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert (run_dir / "done.json").exists()
