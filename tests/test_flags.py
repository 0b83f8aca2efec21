"""Each flag is declared once, in a typed flags dataclass, and the CLIs come from it.

The reference lists below are written by hand from the reference release's flags and defaults (the
paper's settings); a flag added, dropped or given another default shows here. The run-dir names are
those tests/test_run_config.py pins.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import pytest

from iterative_label_refinement.core.cli import FRACTION, alias, expand_flags, flag, merge_aliases, run_cli
from iterative_label_refinement.core.settings import ConfigError

MAIN = {  # experiments.main: flag -> default
    "seed": 0, "data_seed": 0, "epochs": 2, "batch_size": 32, "ds_name": "gsm8k", "n_docs": 20000,
    "n_test_docs": 10000, "model_size": "google/gemma-2b", "lr": None, "optim": None, "force_retrain": False,
    "max_len": None, "train_with_dropout": False, "minibatch_size_per_device": None, "results_folder": None,
    "lr_schedule": "cosine_warmup", "method": None, "weak_labels_path": None, "sweep_subfolder": "default",
    "num_samples": 1, "use_wandb": False, "report_to": "tensorboard", "save_frequency": 0, "half_data": 0,
    "round_id": 0, "save_model": False, "generate_weak_labels": True, "label_temp": 0.0, "inference_on_train": False,
    "warmup_ratio": 0.05, "force_eval": None, "lora_rank": 64, "gpu_usage": 0.9, "train_with_all_data": False,
    "compute_weak_label_acc": None, "compute_test_acc": None, "do_dpo": False, "dpo_path": None, "dpo_beta": 0.1,
    "dpo_loss_type": "sigmoid", "mode": None, "saferpaca_mode": None, "weak_model_size": None,
    "eval_batch_size": None, "num_beams": 4, "top_k": 0, "top_p": 1.0, "inference_backend": "hf", "do_eval": None,
    "eval_on": "test", "print_save_path": False,
}  # fmt: skip
REQUIRED = object()
STEP = {"round_id": 0, "save_results": True, "seed": 0, "start_with_correct_labels": False, "force": False,
        "print_save_path": False}  # fmt: skip
FEEDBACK = {"evaluator_path": None, "batch_size": 32, "feedback": "evaluator", "judge_base_url": None,
            "judge_model": None, "judge_api_key": None, "verdicts_path": None, "export_comparisons": None}  # fmt: skip
HALVES = {"ds_name": REQUIRED, "weak_model_path": REQUIRED, "model1_path": REQUIRED, "model2_path": REQUIRED}
STEPS = {
    "ilr": {**HALVES, "max_replace": 0.1, "use_oracle_feedback": False, **STEP, **FEEDBACK},
    "naive": {**HALVES, "max_replace": 0.1, "redraw_each_round": False, **STEP},
    "dpo": {"ds_name": REQUIRED, "weak_model_path": REQUIRED, "strong_model_path": REQUIRED, "subsample": 1.0,
            "beta": 0.1, "use_oracle_feedback": False, "neutral_oracle_ties": False, **STEP, **FEEDBACK},
    "refine": {"kind": REQUIRED, "ds_name": REQUIRED, "weak_model_path": REQUIRED, "model1_path": None,
               "model2_path": None, "strong_model_path": None, "max_replace": None, "beta": None, "subsample": None,
               "use_oracle_feedback": False, "neutral_oracle_ties": False, "redraw_each_round": False, **STEP,
               **FEEDBACK},
}  # fmt: skip


def defaults(fn) -> dict:
    import inspect

    params = inspect.signature(fn).parameters.values()
    return {p.name: REQUIRED if p.default is p.empty else p.default for p in params}


def help_blocks(module: str) -> dict[str, str]:
    """fire's --help of a CLI, as flag -> the lines shown under it (type, default, help)."""
    env = dict(os.environ, PAGER="cat", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = subprocess.run([sys.executable, "-m", f"iterative_label_refinement.experiments.{module}", "--help"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    blocks: dict[str, str] = {}
    name = None
    for line in (run.stdout + run.stderr).splitlines():
        found = re.match(r"^    (?:-\w, )?--(\w+)=|^    ([A-Z0-9_]+)$", line)
        if found:
            name = found.group(1) or found.group(2).lower()
            blocks[name] = ""
        elif name and line.startswith("        "):
            blocks[name] += line.strip() + "\n"
        else:
            name = None
    return blocks


def test_main_takes_the_reference_flags_with_the_reference_defaults_and_help_shows_each_ones_help():
    from iterative_label_refinement.core.run_config import MainFlags
    from iterative_label_refinement.experiments import main

    assert defaults(main.main) == MAIN
    assert [f.name for f in fields(MainFlags)] == list(MAIN)[:-1]  # every flag but print_save_path is the config's
    shown = help_blocks("main")
    assert set(shown) == set(MAIN)
    for f in fields(MainFlags):
        help_line = shown[f.name].splitlines()[-1]
        assert help_line == f.metadata["help"] and len(help_line) > 10, f.name
    assert shown["print_save_path"].splitlines()[-1].startswith("print the run dir")


@pytest.mark.parametrize("module", list(STEPS))
def test_each_step_takes_the_reference_flags_each_with_its_help(module):
    import importlib

    fn = importlib.import_module(f"iterative_label_refinement.experiments.{module}").main
    assert defaults(fn) == STEPS[module]
    shown = help_blocks(module)
    assert set(shown) == set(STEPS[module])
    for name in STEPS[module]:
        *_, help_line = shown[name].splitlines()
        assert not help_line.startswith(("Type:", "Default:")) and len(help_line) > 10, (module, name)


def dirname(tmp: Path, **flags) -> str:
    from iterative_label_refinement.experiments import main

    with contextlib.redirect_stdout(io.StringIO()):
        printed = main.main(model_size="tiny-random", results_folder=str(tmp), print_save_path=True, **flags)
    return str(Path(printed).relative_to(tmp))


# tests/test_run_config.py's pin for ds_name=saferpaca with the reference's --saferpaca_mode=2
SAFERPACA_2 = ("default/bs=32-ds=0-dn=saferpaca-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=512-ms=tiny-random-nd=20000-"
               "ntd=10000-o=adamw-ri=0-sm=2-s=0-twd=0-wr=0.05")  # fmt: skip


def test_mode_and_its_reference_alias_name_the_same_run(tmp_path, run_config):
    assert dirname(tmp_path, ds_name="saferpaca", mode=2) == SAFERPACA_2
    assert dirname(tmp_path, ds_name="saferpaca", saferpaca_mode=2) == SAFERPACA_2
    assert dirname(tmp_path, ds_name="saferpaca", mode=2, saferpaca_mode=2) == SAFERPACA_2
    cfg = run_config(ds_name="saferpaca", model_size="tiny-random", saferpaca_mode=1)
    assert (cfg.mode, cfg.saferpaca_mode) == (1, 1)  # the rows filtered are the mode's, whichever name gave it
    with pytest.raises(ConfigError, match=r"^--saferpaca_mode=1 contradicts --mode=2: saferpaca_mode is mode's alias$"):
        dirname(tmp_path, ds_name="saferpaca", mode=2, saferpaca_mode=1)
    with pytest.raises(ConfigError, match=r"^--do_eval=False contradicts --force_eval=True"):
        dirname(tmp_path, ds_name="toy_arith", force_eval=True, do_eval=False)
    assert run_config(ds_name="toy_arith", model_size="tiny-random", half_data=1, do_eval=True).do_test


def test_a_mode_the_task_has_not_is_refused_even_when_only_naming_the_run(tmp_path):
    """The reference's flag on a task without modes used to name a run dir that could never be trained."""
    with pytest.raises(ConfigError, match=r"^--mode must be unset: gsm8k has no modes, got 1$"):
        dirname(tmp_path, ds_name="gsm8k", saferpaca_mode=1)
    with pytest.raises(ConfigError, match=r"^--mode must be 1 \(general\) or 2 \(safety\), got 3$"):
        dirname(tmp_path, ds_name="saferpaca", mode=3)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mod=1"], "unknown flag '--mod': did you mean --mode? Valid flags: --seed, --data_seed,"),
        (["--ds_name=saferpaca", "--mode=3"], "--mode must be 1 (general) or 2 (safety), got 3"),
        (["--mode=0"], "--mode must be an integer > 0 or None, got 0"),
    ],
)
def test_an_unknown_flag_or_a_bad_value_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    from iterative_label_refinement.experiments import main

    monkeypatch.setenv("ILR_SAVE_PATH", str(tmp_path))
    with pytest.raises(SystemExit) as exit_status:
        run_cli(main.main, ["--model_size=tiny-random", "--print_save_path", *args])
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# The machinery, on a dataclass of its own
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    left: Annotated[float, FRACTION] = flag(0.5, "the left share")
    right: str | None = flag(None, "the right name")
    other: int | None = alias("count", "another name of --count")
    count: int | None = flag(None, "how many")


CALLS: list = []


@expand_flags
def command(name: str, pair: Pair, last: bool = False) -> str:
    """Do it.

    Args:
        last: the last one
    """
    CALLS.append((name, pair, last))
    return name


def test_a_flags_dataclass_becomes_flags_in_its_place_and_one_instance_in_the_call():
    CALLS.clear()
    assert defaults(command) == {"name": REQUIRED, "left": 0.5, "right": None, "other": None, "count": None,
                                 "last": False}  # fmt: skip
    assert command("x", 0.25, right="r", last=True) == "x"  # positional slots as fire passes them
    assert CALLS == [("x", Pair(left=0.25, right="r"), True)]
    assert command.__doc__.splitlines()[-5:] == ["    last: the last one", "    left: the left share",
                                                 "    right: the right name", "    other: another name of --count",
                                                 "    count: how many"]  # fmt: skip
    with pytest.raises(TypeError):
        command("x", nope=1)


def test_an_alias_lends_its_value_to_its_flag_and_refuses_a_contradiction():
    assert merge_aliases(Pair(other=3)) == Pair(other=3, count=3)
    assert merge_aliases(Pair(count=3)) == Pair(other=3, count=3)
    assert merge_aliases(Pair(count=3, other=3)) == Pair(other=3, count=3)
    assert merge_aliases(Pair()) == Pair()
    with pytest.raises(ConfigError, match=r"^--other=2 contradicts --count=3: other is count's alias$"):
        merge_aliases(Pair(count=3, other=2))


def test_the_cli_checks_a_dataclass_field_against_its_declaration(capsys):
    with pytest.raises(SystemExit) as exit_status:
        run_cli(command, ["--name=x", "--left=1.5"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err == "error: --left must be a finite number in (0, 1], got 1.5\n"
    run_cli(command, ["--name=y", "--count=2"])
    assert CALLS[-1] == ("y", Pair(count=2), False)
