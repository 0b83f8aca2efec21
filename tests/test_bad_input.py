"""Bad input on the real CLIs: one line naming the bad value and what is valid, exit status 2, and no
file under the results folder created, changed or removed.

The runs and label sets are synthetic (a run's `experiment_config.json` and `weak_labels`): every
refusal here comes before a model or dataset is loaded, so nothing trains.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from iterative_label_refinement.core.files import write_json

TINY = ["--ds_name=toy_arith", "--model_size=tiny-random", "--n_docs=16", "--n_test_docs=4", "--batch_size=8",
        "--minibatch_size_per_device=8", "--epochs=1", "--lora_rank=4"]  # fmt: skip


def cli(module: str, args: list[str], folder: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ILR_SAVE_PATH=str(folder / "results"), ILR_DATA_PATH=str(folder / "data"), PAGER="cat")
    return subprocess.run([sys.executable, "-m", f"iterative_label_refinement.{module}", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def refused(run: subprocess.CompletedProcess, message: str) -> None:
    """Exit 2, no traceback, and one error line, the last: `error: <message...>` (progress bars of the
    data loading that came first may stand above it)."""
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[-1].startswith(f"error: {message}"), run.stderr[-2000:]


def _labels(n: int = 8) -> list[dict]:
    return [{"question": f"q{i}", "answer": f"#### {i}", "gt_answer": f"#### {i}", "acc": 1.0} for i in range(n)]


@pytest.fixture
def world(tmp_path) -> dict[str, Path]:
    """A finished weak run of toy_arith in the results folder, with naive round 0's label set."""
    weak = tmp_path / "results" / "default" / "weak"
    Dataset.from_list(_labels()).save_to_disk(str(weak / "weak_labels"))
    write_json(weak / "experiment_config.json", {"model_size": "tiny-random", "ds_name": "toy_arith", "round_id": 0,
                                                  "model_weights": "tiny-random-x"})  # fmt: skip
    naive = weak / "naive0.3_0_weak_labels"
    Dataset.from_list(_labels()).save_to_disk(str(naive))
    write_json(naive / "provenance.json", {"artifact": "label_set", "method": "naive0.3", "round_id": 0})
    return {"root": tmp_path, "weak": weak, "naive": naive}


# ---------------------------------------------------------------------------------------------
# Inputs that contradict each other
# ---------------------------------------------------------------------------------------------


def test_a_label_set_given_by_path_must_be_for_the_runs_method_and_round(world):
    """Naive labels passed as `--method=ilr0.3 --round_id=1` trained into ILR round 1's run dir."""
    before = snapshot(world["root"])
    run = cli("experiments.main", [*TINY, f"--weak_labels_path={world['naive']}", "--method=ilr0.3", "--round_id=1"],
              world["root"])  # fmt: skip
    refused(run, f"--weak_labels_path={world['naive']} holds the labels of naive0.3 round 1, but this run is "
                 "--method=ilr0.3 --round_id=1")  # fmt: skip
    run = cli("experiments.main", [*TINY, f"--weak_labels_path={world['naive']}", "--method=naive0.3", "--round_id=2"],
              world["root"])  # fmt: skip
    refused(run, f"--weak_labels_path={world['naive']} holds the labels of naive0.3 round 1, but this run is "
                 "--method=naive0.3 --round_id=2")  # fmt: skip
    # without a record the name says it: round 0's `weak_labels` train round 0 only
    run = cli("experiments.main", [*TINY, f"--weak_labels_path={world['weak'] / 'weak_labels'}", "--method=ilr0.3",
                                   "--round_id=1"], world["root"])  # fmt: skip
    refused(run, f"--weak_labels_path={world['weak'] / 'weak_labels'} holds the labels of round 0, but")
    assert snapshot(world["root"]) == before


def test_a_refinement_step_refuses_another_tasks_rule(world):
    """`ilr --ds_name=gsm8k` on a toy_arith weak run applied GSM8K's agreement rule and wrote labels."""
    halves = []
    for half in (1, 2):
        run = world["root"] / "results" / "default" / f"h{half}-ri=0"
        Dataset.from_list(_labels()).save_to_disk(str(run / "weak_labels"))
        write_json(run / "experiment_config.json", {"round_id": 0, "ds_name": "toy_arith"})
        halves.append(run)
    before = snapshot(world["root"])
    run = cli("experiments.ilr", ["--ds_name=gsm8k", f"--weak_model_path={world['weak']}", f"--model1_path={halves[0]}",
                                  f"--model2_path={halves[1]}", "--use_oracle_feedback=True"], world["root"])  # fmt: skip
    refused(run, f"--ds_name=gsm8k, but the weak run {world['weak']} is of toy_arith")
    assert snapshot(world["root"]) == before


# ---------------------------------------------------------------------------------------------
# Damaged or odd files and paths
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["state.json", "dataset_info.json", "arrow", "no rows"])
def test_a_damaged_label_set_is_one_line(world, damage):
    labels = world["naive"]
    if damage == "arrow":
        arrow = next(labels.glob("*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    elif damage == "no rows":
        shutil.rmtree(labels)
        Dataset.from_list(_labels()).select([]).save_to_disk(str(labels))
    else:
        text = (labels / damage).read_text()
        (labels / damage).write_text(text[: len(text) // 2])
    before = snapshot(world["root"])
    run = cli("experiments.main", [*TINY, f"--weak_labels_path={labels}", "--method=naive0.3", "--round_id=1"],
              world["root"])  # fmt: skip
    refused(run, f"Label set {labels} ")
    assert ("has no rows" in run.stderr) == (damage == "no rows") and "remake it with --force" in run.stderr
    assert snapshot(world["root"]) == before


def test_a_file_as_results_folder_is_one_line(tmp_path):
    (tmp_path / "results.txt").write_text("not a folder")
    before = snapshot(tmp_path)
    run = cli("experiments.main", [*TINY, f"--results_folder={tmp_path / 'results.txt'}"], tmp_path)
    refused(run, f"--results_folder={tmp_path / 'results.txt'} is a file, not a folder")
    assert snapshot(tmp_path) == before


def test_a_sweep_subfolder_cannot_escape_the_results_folder(tmp_path):
    """`--sweep_subfolder=../../escape` wrote a run dir outside the results folder."""
    before = snapshot(tmp_path)
    for name in ("../../escape", "/tmp/escape", "a/../../b"):
        run = cli("experiments.main", [*TINY, f"--sweep_subfolder={name}", "--print_save_path"], tmp_path)
        refused(run, f"--sweep_subfolder must be a relative path that stays inside its folder (no '..'), got {name!r}")
    assert snapshot(tmp_path) == before
    run = cli("experiments.main", [*TINY, "--sweep_subfolder=sweeps/lr", "--print_save_path"], tmp_path)
    assert run.returncode == 0 and Path(run.stdout.strip().splitlines()[-1]).parent.parent.name == "sweeps"


def test_report_of_damaged_records_is_one_line(world):
    config = world["weak"] / "experiment_config.json"
    config.write_text(config.read_text()[:20])
    (world["weak"] / "results_summary.json").write_text('{"accuracy": 0.')
    before = snapshot(world["root"])
    run = cli("experiments.report", [f"--results_folder={world['root'] / 'results'}"], world["root"])
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr[-2000:]
    assert str(world["weak"]) in run.stderr and ".json" in run.stderr
    assert snapshot(world["root"]) == before


def test_a_file_as_report_out_dir_is_one_line(world):
    (world["weak"] / "results_summary.json").write_text('{"accuracy": 0.5, "accuracy_stderr": 0.1, "n_test": 4}')
    (world["root"] / "report.txt").write_text("mine")
    before = snapshot(world["root"])
    run = cli("experiments.report", [f"--results_folder={world['root'] / 'results'}",
                                     f"--out_dir={world['root'] / 'report.txt'}"], world["root"])  # fmt: skip
    refused(run, f"--out_dir={world['root'] / 'report.txt'} is a file, not a folder")
    assert snapshot(world["root"]) == before


WRAPPER = """import errno, sys
from datasets import DatasetDict
def refuse(self, path, *args, **kwargs):
    raise OSError(errno.{code}, {text!r}, path)
DatasetDict.save_to_disk = refuse
from iterative_label_refinement.core.cli import run_cli
from iterative_label_refinement.experiments.prepare_data import main
run_cli(main)
"""


@pytest.mark.parametrize(
    ("code", "text", "message"),
    [
        (
            "ENOSPC",
            "No space left on device",
            r"the disk is full writing \S+\.tmp: No space left on device \(the "
            r"write needs about (?!0\.0 )[\d.]+ KiB\); \d+ MiB free in {out}; free space there",
        ),
        ("EROFS", "Read-only file system", r"cannot write \S+\.tmp: Read-only file system; choose a folder you can"),
    ],
)
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(tmp_path, code, text, message):
    """The disk refuses the write (simulated: the dataset's save raises what the OS raises)."""
    import re

    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "test"):
        (raw / f"{split}.jsonl").write_text('{"question": "1+2?", "answer": "1+2=3\\n#### 3"}\n' * 3)
    script = tmp_path / "refusing_disk.py"
    script.write_text(WRAPPER.format(code=code, text=text))
    out = tmp_path / "data"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = subprocess.run([sys.executable, str(script), "--ds_name=gsm8k", f"--raw_path={raw}",
                          f"--out_path={out / 'gsm8k'}"], capture_output=True, text=True, env=env)  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: " + message.format(out=re.escape(str(out))) + ".*", last), last
    assert list(out.iterdir()) == []  # no dataset, no hidden half-written sibling


# ---------------------------------------------------------------------------------------------
# Every flag typed, finite and in range before anything is written
# ---------------------------------------------------------------------------------------------

HALVES = ["--ds_name=toy_arith", "--weak_model_path=w", "--model1_path=a", "--model2_path=b"]
FLAG_CASES = [
    ("experiments.main", ["--lr=abc"], "--lr must be a finite number > 0 or None, got 'abc'"),
    ("experiments.main", ["--seed=1.5"], "--seed must be an integer >= 0, got 1.5"),
    ("experiments.main", ["--num_beams=0"], "--num_beams must be an integer > 0, got 0"),
    ("experiments.main", ["--lora_rank=-1"], "--lora_rank must be an integer >= 0, got -1"),
    ("experiments.main", ["7"], "unexpected argument '7': every value needs its flag (--name=value)"),
    ("experiments.main", ["--lr=nan"], "--lr must be a finite number > 0 or None, got 'nan'"),
    ("experiments.main", ["--lr=0"], "--lr must be a finite number > 0 or None, got 0"),
    ("experiments.main", ["--lr=1e400"], "--lr must be a finite number > 0 or None, got inf"),
    ("experiments.main", ["--epochs=1e400"], "--epochs must be a finite number > 0, got inf"),
    ("experiments.main", ["--warmup_ratio=2"], "--warmup_ratio must be a finite number in [0, 1), got 2"),
    ("experiments.main", ["--save_frequency=-1"], "--save_frequency must be a finite number in [0, 1), got -1"),
    ("experiments.main", ["--label_temp=nan"], "--label_temp must be a finite number >= 0, got 'nan'"),
    ("experiments.main", ["--gpu_usage=5"], "--gpu_usage must be a finite number in (0, 1], got 5"),
    ("experiments.main", ["--max_len=0"], "--max_len must be an integer > 0 or None, got 0"),
    ("experiments.main", ["--eval_batch_size=0"], "--eval_batch_size must be an integer > 0 or None, got 0"),
    ("experiments.main", ["--force_retrain=maybe"], "--force_retrain must be True or False, got 'maybe'"),
    ("experiments.main", ["--inference_backend=tpu"], "--inference_backend must be one of hf, vllm, got 'tpu'"),
    ("experiments.prepare_data", ["--ds_name=gsm8k", "--force=maybe"], "--force must be True or False, got 'maybe'"),
    ("experiments.generate_evaluator_data", ["--temperature=-1"], "--temperature must be a finite number >= 0, got -1"),
    ("experiments.generate_evaluator_data", ["--n_docs=0"], "--n_docs must be an integer > 0 or None, got 0"),
    ("core.train_evaluator", ["--ds_name=x", "--epochs=0"], "--epochs must be a finite number > 0, got 0"),
    ("core.train_evaluator", ["--ds_name=x", "--evaluator_kind=oracle"],
     "--evaluator_kind must be one of classifier, likelihood, got 'oracle'"),
    ("experiments.dpo", ["--ds_name=x", "--weak_model_path=w", "--strong_model_path=s", "--subsample=1.5"],
     "--subsample must be a finite number in (0, 1], got 1.5"),
    ("experiments.ilr", [*HALVES, "--use_oracle_feedback=maybe"], "--use_oracle_feedback must be True or False, got "
     "'maybe'"),
    ("experiments.ilr", [*HALVES, "--max_replace=0"], "--max_replace must be a finite number in (0, 1], got 0"),
    ("experiments.naive", [*HALVES, "--seed=-2"], "--seed must be an integer >= 0, got -2"),
    ("experiments.refine", ["--kind=ilr", *HALVES, "--round_id=0.5"], "--round_id must be an integer >= 0, got 0.5"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "args", "message"), FLAG_CASES)
def test_a_flag_out_of_its_type_or_range_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, module,
                                                                              args, message):  # fmt: skip
    """Through `run_cli`, as each CLI's `__main__` calls it (in this process: 28 interpreters would
    take a minute); the next test runs a few as `python -m`."""
    import importlib

    from iterative_label_refinement.core.cli import run_cli

    (tmp_path / "results").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ILR_SAVE_PATH", str(tmp_path / "results"))
    monkeypatch.setenv("ILR_DATA_PATH", str(tmp_path / "data"))
    base = [*TINY, f"--results_folder={tmp_path / 'results'}"] if module == "experiments.main" else []
    with pytest.raises(SystemExit) as exit_status:
        run_cli(importlib.import_module(f"iterative_label_refinement.{module}").main, [*base, *args])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"  # the one line, nothing before it
    assert snapshot(tmp_path) == {"results": None}


@pytest.mark.parametrize("case", [0, 4, 17, 23])
def test_the_real_clis_refuse_a_flag_out_of_range_alike(tmp_path, case):
    module, args, message = FLAG_CASES[case]
    (tmp_path / "results").mkdir()
    base = [*TINY, f"--results_folder={tmp_path / 'results'}"] if module == "experiments.main" else []
    run = cli(module, [*base, *args], tmp_path)
    assert run.returncode == 2 and run.stderr == f"error: {message}\n"
    assert snapshot(tmp_path) == {"results": None}


def test_the_flag_table_in_the_docs_is_the_declarations():
    from iterative_label_refinement.experiments import flag_table

    doc = flag_table.DOC.read_text()
    assert f"{flag_table.BEGIN}\n{flag_table.table()}\n{flag_table.END}" in doc
    rows = flag_table.table().splitlines()
    assert "| `experiments.main` | `--lr` | a finite number > 0 or None | `None` |" in rows
    assert "| `experiments.report` | `--sweep_subfolder` | a relative path that stays inside its folder (no '..') or " \
           "None | `None` |" in rows  # fmt: skip
    for module in flag_table.CLIS:  # every CLI, every flag it takes
        import importlib
        import inspect

        fn = importlib.import_module(f"iterative_label_refinement.{module}").main
        assert sum(row.startswith(f"| `{module}` |") for row in rows) == len(inspect.signature(fn).parameters), module
