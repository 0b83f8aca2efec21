"""Command lines: unknown flags are refused before anything runs; `--help` anywhere runs nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest

from iterative_label_refinement.core.cli import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    FlagType,
    Valid,
    check_command_line,
    checked,
    flag_types,
)
from iterative_label_refinement.core.settings import ConfigError


def step(ds_name: str, max_replace: float = 0.1, force: bool = False, seed: int = 0) -> None:
    """A stand-in with the shape of the project's steps."""


def build(*model_sizes: str, force: bool = False) -> None:
    """A stand-in for `build_models` (positional names)."""


@pytest.mark.parametrize(
    "args",
    [
        ["--ds_name=gsm8k", "--max_replace=0.5"],
        ["--ds_name", "gsm8k", "--max_replace", "-0.5"],  # `--flag value`; a negative number is a value
        ["--ds_name", "gsm8k", "--force"],  # a bare boolean
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
        (["gsm8k", "--force"], "unexpected argument 'gsm8k': every value needs its flag"),
        (["--ds_name=gsm8k", "3"], "unexpected argument '3'"),  # would land in the next free parameter
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


# ---------------------------------------------------------------------------------------------
# Flag values: each flag's type and valid range, declared in the signature, checked before the run
# ---------------------------------------------------------------------------------------------


def typed(
    ds_name: str,
    lr: Annotated[float | None, POSITIVE] = None,
    seed: Annotated[int, NON_NEGATIVE] = 0,
    force: bool = False,
    max_replace: Annotated[float, FRACTION] = 0.1,
    backend: Annotated[str, Valid(choices=("hf", "vllm"))] = "hf",
    temperature: Annotated[float, Valid(ge=0, lt=2)] = 0.0,
) -> dict:
    RAN.append(ds_name)
    return dict(locals())


RAN: list[str] = []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"lr": "abc"}, "--lr must be a finite number > 0 or None, got 'abc'"),
        ({"lr": "nan"}, "--lr must be a finite number > 0 or None, got 'nan'"),  # fire's text for nan
        ({"lr": float("nan")}, "--lr must be a finite number > 0 or None, got nan"),
        ({"lr": float("inf")}, "--lr must be a finite number > 0 or None, got inf"),  # fire's 1e400
        ({"lr": 0}, "--lr must be a finite number > 0 or None, got 0"),
        ({"seed": 1.5}, "--seed must be an integer >= 0, got 1.5"),
        ({"seed": True}, "--seed must be an integer >= 0, got True"),
        ({"seed": -1}, "--seed must be an integer >= 0, got -1"),
        ({"force": "maybe"}, "--force must be True or False, got 'maybe'"),
        ({"force": 1}, "--force must be True or False, got 1"),
        ({"max_replace": 0}, "--max_replace must be a finite number in (0, 1], got 0"),
        ({"max_replace": 1.0000001}, "--max_replace must be a finite number in (0, 1], got 1.0000001"),
        ({"backend": "tpu"}, "--backend must be one of hf, vllm, got 'tpu'"),
        ({"temperature": 2}, "--temperature must be a finite number in [0, 2), got 2"),
        ({"temperature": -0.1}, "--temperature must be a finite number in [0, 2), got -0.1"),
    ],
)
def test_a_flag_outside_its_declaration_is_refused_before_the_run(flags, message):
    RAN.clear()
    with pytest.raises(ConfigError) as error:
        checked(typed)(ds_name="x", **flags)
    assert str(error.value) == message and not RAN


def test_values_at_the_edges_of_a_declaration_pass_as_given():
    run = checked(typed)
    assert run(ds_name="x", max_replace=1, temperature=0, seed=0, lr=1) == dict(
        ds_name="x", lr=1, seed=0, force=False, max_replace=1, backend="hf", temperature=0
    )
    assert run(ds_name=2024, lr=None)["ds_name"] == "2024"  # fire reads `--ds_name=2024` as a number
    assert run("x", 1e-4, 3, True)["seed"] == 3  # positional slots too (fire passes values that way)
    assert flag_types(typed)["lr"] == FlagType((float,), True, POSITIVE)
    assert flag_types(typed)["force"] == FlagType((bool,), False, None)


def test_the_declaration_is_what_help_shows(tmp_path):
    script = tmp_path / "cli.py"
    script.write_text(
        "from typing import Annotated\n"
        "from iterative_label_refinement.core.cli import FRACTION, run_cli\n"
        "def step(max_replace: Annotated[float, FRACTION] = 0.1, force: bool = False):\n"
        "    print('ran', max_replace, force)\n"
        "run_cli(step)\n"
    )
    env = dict(os.environ, PAGER="cat", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env)
    assert "Type: a finite number in (0, 1]" in shown.stdout + shown.stderr
    bad = subprocess.run([sys.executable, str(script), "--max_replace=1e400"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr == "error: --max_replace must be a finite number in (0, 1], got inf\n"
    assert "ran" not in bad.stdout
