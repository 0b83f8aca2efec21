"""Command lines: unknown flags are refused before anything runs; `--help` anywhere runs nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from iterative_label_refinement.core.cli import check_command_line
from iterative_label_refinement.core.common import ConfigError


def step(ds_name: str, max_replace: float = 0.1, force: bool = False, seed: int = 0) -> None:
    """A stand-in with the shape of the project's steps."""


def build(*model_sizes: str, force: bool = False) -> None:
    """A stand-in for `build_models` (positional names)."""


@pytest.mark.parametrize(
    "args",
    [
        ["--ds_name=gsm8k", "--max_replace=0.5"],
        ["--ds_name", "gsm8k", "--max_replace", "-0.5"],  # `--flag value`; a negative number is a value
        ["gsm8k", "--force"],  # a positional value, a bare boolean
        ["--ds_name=gsm8k", "--noforce", "--seed=1"],  # fire's --no<flag>
        ["--ds-name=gsm8k", "--max-replace=0.5"],  # fire reads hyphens as underscores
        ["--ds_name=gsm8k", "-m", "0.2"],  # fire's one-letter shortcut, when one parameter starts with it
        ["--ds_name=gsm8k", "--", "--trace"],  # fire's own flags after `--`
    ],
)
def test_valid_command_lines_pass(args):
    check_command_line(step, args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ds_name=gsm8k", "--max_replac=0.5"], "unknown flag '--max_replac': did you mean --max_replace?"),
        (["--forse"], "unknown flag '--forse': did you mean --force?"),
        (["--ds_name", "gsm8k", "--sed", "3"], "unknown flag '--sed': did you mean --seed?"),
        (["--ds_name=gsm8k", "-x"], "unknown flag '-x'"),
        (["--ds_name=gsm8k", "--", "--tarce"], "unknown fire flag '--tarce' after '--'"),
        (["gsm8k", "0.5", "true", "1", "extra"], "unexpected argument 'extra'"),
        (["--ds_name=gsm8k", "0.5", "true", "1", "2"], "unexpected argument '2'"),  # ds_name is taken
    ],
)
def test_unknown_flags_and_stray_arguments_are_refused(args, message):
    with pytest.raises(ConfigError, match="^" + message.replace("?", r"\?").replace("(", r"\(")):
        check_command_line(step, args)


def test_positional_names_for_varargs():
    check_command_line(build, ["tiny-llama-weak", "tiny-llama-strong", "--force"])
    with pytest.raises(ConfigError, match="did you mean --force"):
        check_command_line(build, ["tiny-llama-weak", "--forced"])


def _run(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ILR_SAVE_PATH=str(cwd / "results"), ILR_DATA_PATH=str(cwd / "data"), PAGER="cat")
    return subprocess.run(
        [sys.executable, "-m", f"iterative_label_refinement.{module}", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_mistyped_flag_exits_2_and_writes_nothing(tmp_path):
    """`ilr --max_replac=0.5` with otherwise runnable flags: refused before anything is read or written."""
    args = ["--ds_name=toy_arith", f"--weak_model_path={tmp_path}", f"--model1_path={tmp_path}",
            f"--model2_path={tmp_path}", "--max_replac=0.5"]  # fmt: skip
    run = _run("experiments.ilr", args, tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]  # one line
    assert "'--max_replac'" in run.stderr and "did you mean --max_replace?" in run.stderr
    assert _files(tmp_path) == []


def test_help_after_real_flags_runs_nothing(shared_data, tmp_path):
    """Without the fix this prepares GSM8K into data/gsm8k; with it, only the help is printed."""
    args = ["--ds_name=gsm8k", f"--raw_path={shared_data / 'gsm8k'}", f"--out_path={tmp_path / 'out'}", "--help"]
    run = _run("experiments.prepare_data", args, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "--raw_path" in run.stderr + run.stdout and "--out_path" in run.stderr + run.stdout  # fire's help
    assert _files(tmp_path) == []


def test_help_anywhere_in_a_training_command_runs_nothing(tmp_path):
    args = ["--ds_name=toy_arith", "--model_size=tiny-random", "-h", "--n_docs=8", "--epochs=1"]
    run = _run("experiments.main", args, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "--weak_labels_path" in run.stderr + run.stdout
    assert _files(tmp_path) == []
