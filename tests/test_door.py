"""Bad settings are refused at the door: one line, exit 2, before a run dir or any file is made.

LoRA targets that match no module (checked on the architecture, against PEFT itself), --use_wandb
without wandb, out-of-range values in $ILR_MODELS_FILE, and training filters that leave no row.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from iterative_label_refinement.core import models
from iterative_label_refinement.core.datasets import get_dataset_config, tokenize_dataset
from iterative_label_refinement.core.methods import parse_method
from iterative_label_refinement.core.models import get_model_config, load_tokenizer, lora_targets, model_modules
from iterative_label_refinement.core.run_data import filter_rows
from iterative_label_refinement.core.settings import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--ds_name=toy_arith", "--model_size=tiny-random", "--n_docs=16", "--n_test_docs=4", "--batch_size=4",
              "--epochs=1", "--lora_rank=4", "--minibatch_size_per_device=4"]  # fmt: skip


def cli(module: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -m iterative_label_refinement.<module>` in `cwd`, results under cwd/results."""
    full_env = {**os.environ, "ILR_SAVE_PATH": str(cwd / "results"), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                "PYTHONPATH": str(REPO), **env}  # fmt: skip
    return subprocess.run([sys.executable, "-m", f"iterative_label_refinement.{module}", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=600)  # fmt: skip


def assert_refused(run: subprocess.CompletedProcess, *parts: str) -> str:
    """Exit 2 and one line on stderr, `error: ...` holding every part; returns the line."""
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------
# LoRA target modules: the project's rule against PEFT's own get_peft_model
# ---------------------------------------------------------------------------------------------


def peft_targets(kind: str, target) -> set[str] | None:
    """The modules PEFT adapts on a fresh tiny-random model of `kind`, or None when get_peft_model fails."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(models.resolve_model_path("tiny-random"))
    config.num_labels = 2
    auto = AutoModelForSequenceClassification if kind == "classifier" else AutoModelForCausalLM
    torch.manual_seed(0)
    model = auto.from_config(config)
    task = "SEQ_CLS" if kind == "classifier" else "CAUSAL_LM"
    try:
        wrapped = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=target, task_type=task))
    except (ValueError, TypeError):  # PEFT's NoMatchingPeftModuleError is a ValueError
        return None
    return set(wrapped.base_model.targeted_module_names)


def ours(kind: str, target) -> set[str] | None:
    pairs, head, _ = model_modules(models.resolve_model_path("tiny-random"), kind, False)
    protected = models.CLASSIFIER_HEADS if kind == "classifier" else ()
    try:
        return set(lora_targets(dict(pairs), target, head, protected))
    except ConfigError:
        return None


# Each entry of a list either matches or not, so PEFT and the project must agree exactly. The traps:
# "proj" is a suffix of every projection but not a dotted component; a string is a regex of whole
# names ("q_proj" alone matches none); "mlp" and "norm" match layers LoRA cannot wrap; "all-linear"
# leaves out lm_head (causal LM) and the classifier's score head, which PEFT trains in full.
AGREE = [
    ("causal_lm", "all-linear"),
    ("causal_lm", "ALL-LINEAR"),
    ("causal_lm", ["q_proj", "v_proj"]),
    ("causal_lm", ["self_attn.q_proj"]),
    ("causal_lm", ["model.layers.0.mlp.up_proj"]),
    ("causal_lm", ["layers.1.mlp.up_proj", "down_proj"]),
    ("causal_lm", ["lm_head"]),
    ("causal_lm", ["embed_tokens"]),
    ("causal_lm", r".*\.(q|v)_proj"),
    ("causal_lm", ["proj"]),
    ("causal_lm", ["q_projj"]),
    ("causal_lm", "q_proj"),
    ("causal_lm", ["mlp"]),
    ("causal_lm", ["norm"]),
    ("causal_lm", ["q_proj", "mlp"]),
    ("classifier", "all-linear"),
    ("classifier", ["q_proj", "o_proj"]),
    ("classifier", ["score"]),
]


@pytest.mark.parametrize(("kind", "target"), AGREE, ids=[f"{k}-{t}" for k, t in AGREE])
def test_lora_rule_agrees_with_peft(kind, target):
    expected = peft_targets(kind, target)
    assert ours(kind, target) == expected
    if isinstance(target, list) and expected is not None:
        assert expected  # an accepted list adapts something


def test_a_misspelt_entry_beside_a_right_one_is_refused_though_peft_would_drop_it():
    """Stricter than PEFT: it adapts q_proj alone and says nothing about 'v_prj'."""
    assert peft_targets("causal_lm", ["q_proj", "v_prj"]) == peft_targets("causal_lm", ["q_proj"])
    with pytest.raises(ConfigError, match="^'v_prj' matches no module$"):
        lora_targets(dict(model_modules(models.resolve_model_path("tiny-random"), "causal_lm", False)[0]),
                     ["q_proj", "v_prj"])  # fmt: skip


def test_bad_lora_targets_stop_main_before_the_run_dir(tmp_path):
    """Before: a PEFT traceback (exit 1) after the data and the model were loaded, a run dir left behind."""
    (tmp_path / "models.json").write_text(json.dumps({"tiny-random": {"lora_target_modules": ["q_projj"]}}))
    run = cli("experiments.main", TINY_FLAGS, tmp_path, ILR_MODELS_FILE=str(tmp_path / "models.json"))
    line = assert_refused(run, "lora_target_modules=['q_projj'] of model 'tiny-random' (LlamaForCausalLM)",
                          "'q_projj' matches no module")  # fmt: skip
    # The valid names are the model's linear layers (short names), read from its architecture.
    assert "['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj']" in line
    assert files_under(tmp_path) == ["models.json"]


@pytest.fixture
def pairs(tmp_path) -> str:
    """Evaluator pair data of two pairs (train) and one (test), as generate_evaluator_data writes it."""
    from iterative_label_refinement.core.prompts import ACCEPT, REJECT, format_evaluator_prompt

    def split(n: int) -> Dataset:
        rows = []
        for i in range(n):
            worse, better = f"1+{i}=9\n#### 9", f"1+{i}={i + 1}\n#### {i + 1}"
            for a, b, label in ((worse, better, ACCEPT), (better, worse, REJECT)):
                rows.append(dict(prompt=format_evaluator_prompt(f"1+{i}?", a, b), label=label, question=f"1+{i}?",
                                 answer_a=a, answer_b=b, pair_id=i, pair_kind="gt"))  # fmt: skip
        return Dataset.from_list(rows)

    path = tmp_path / "pairs"
    DatasetDict(train=split(2), test=split(1)).save_to_disk(str(path))
    return str(path)


def test_bad_lora_targets_stop_the_evaluator_before_its_dir(tmp_path, monkeypatch, pairs):
    """Before: PEFT's error once the data and the model were loaded."""
    from iterative_label_refinement.core import train_evaluator

    (tmp_path / "models.json").write_text(json.dumps({"tiny-random": {"lora_target_modules": ["score"]}}))
    monkeypatch.setenv("ILR_MODELS_FILE", str(tmp_path / "models.json"))
    results = tmp_path / "results"
    # The classifier's head is trained in full: PEFT never puts LoRA on it.
    with pytest.raises(ConfigError, match=r"of model 'tiny-random' \(LlamaForSequenceClassification\): 'score' "
                                          "matches only the classifier head, which is trained in full"):  # fmt: skip
        train_evaluator.main(pairs, model_size="tiny-random", lora_rank=4, results_folder=str(results))
    assert not results.exists()


# ---------------------------------------------------------------------------------------------
# --use_wandb without wandb
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_use_wandb_without_wandb_stops_main_before_the_run_dir(tmp_path):
    """Before: a RuntimeError from the Trainer once the model was loaded, and a run dir left behind."""
    run = cli("experiments.main", [*TINY_FLAGS, "--use_wandb=True"], tmp_path)
    assert_refused(run, "--use_wandb=True needs the wandb package, which is not installed")
    assert files_under(tmp_path) == []


def test_use_wandb_without_wandb_stops_the_evaluator(tmp_path, monkeypatch, pairs):
    """Before: the Trainer's RuntimeError once the data and the model were loaded."""
    from iterative_label_refinement.core import train_evaluator

    monkeypatch.setitem(sys.modules, "wandb", None)  # find_spec answers None: not installed
    with pytest.raises(ConfigError, match="--use_wandb=True needs the wandb package"):
        train_evaluator.main(pairs, model_size="tiny-random", use_wandb=True, results_folder=str(tmp_path / "results"))
    assert not (tmp_path / "results").exists()


def test_report_to_wandb_without_wandb_and_a_contradiction_are_refused(run_config, monkeypatch):
    """--report_to=wandb is refused like --use_wandb=True; --use_wandb=True with --report_to=none says which two."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match="--report_to=wandb needs the wandb package, which is not installed"):
        run_config(ds_name="toy_arith", model_size="tiny-random", report_to="wandb")
    with pytest.raises(ConfigError, match="--use_wandb=True is --report_to=wandb; it contradicts --report_to=none"):
        run_config(ds_name="toy_arith", model_size="tiny-random", use_wandb=True, report_to="none")


def test_report_to_reaches_the_trainer():
    """TensorBoard by default (the curves' events), nothing for none, wandb for --use_wandb."""
    from iterative_label_refinement.core.run_config import report_target
    from iterative_label_refinement.core.train import TrainConfig

    def trainer_report_to(report_to):
        return TrainConfig(output_dir="unused", lr=1e-3, report_to=report_to).training_arguments().report_to

    assert trainer_report_to(TrainConfig.report_to) == ["tensorboard"]
    assert trainer_report_to("none") == []
    assert report_target("tensorboard", use_wandb=False) == "tensorboard"
    if importlib.util.find_spec("wandb") is not None:
        assert report_target("tensorboard", use_wandb=True) == "wandb"


# ---------------------------------------------------------------------------------------------
# Values in $ILR_MODELS_FILE
# ---------------------------------------------------------------------------------------------

BAD_VALUES = [
    ("default_lr", 0, "a finite number > 0"),
    ("default_lr", -1e-4, "a finite number > 0"),
    ("default_lr", math.nan, "a finite number > 0"),  # JSON's NaN parses
    ("default_lr", math.inf, "a finite number > 0"),  # so does Infinity (and 1e999)
    ("default_dpo_lr", 0.0, "a finite number > 0"),
    ("evaluator_lr", -1, "a finite number > 0"),
    ("default_optimizer", "sgd", "one of ['adafactor', 'adamw', 'rmsprop']"),
    ("dpo_optimizer", "adam", "one of ['adafactor', 'adamw', 'rmsprop']"),
    ("eval_batch_size", 0, "an integer >= 1"),
    ("minibatch_size_per_device", -2, "an integer >= 1"),
    ("tensor_parallel_size", 0, "an integer >= 1"),
    ("evaluator_lora_rank", -1, "an integer >= 0"),
    ("lora_target_modules", "", "non-empty list of non-empty module names"),
    ("lora_target_modules", [], "non-empty list of non-empty module names"),
    ("lora_target_modules", ["q_proj", ""], "non-empty list of non-empty module names"),
    ("lora_target_modules", ["q_proj", 3], "non-empty list of non-empty module names"),
    ("custom_kwargs", {"config": {}}, "extra from_pretrained arguments other than"),
    ("custom_kwargs", {"trust_remote_code": True}, "extra from_pretrained arguments other than"),
]


@pytest.mark.parametrize(("key", "value", "valid"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_models_file_values_out_of_range_are_refused(tmp_path, monkeypatch, key, value, valid):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"my-org/model": {key: value}}))
    monkeypatch.setenv("ILR_MODELS_FILE", str(path))
    with pytest.raises(ConfigError) as refused:
        get_model_config("my-org/model")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"ILR_MODELS_FILE={path}: 'my-org/model' {key}={value!r} is not valid: it must be ")
    assert valid in message


def test_models_file_accepts_the_edges_of_every_range(tmp_path, monkeypatch):
    good = {"default_lr": 1, "default_dpo_lr": 1e-9, "evaluator_lr": 5e-7, "default_optimizer": "adafactor",
            "dpo_optimizer": "adamw", "eval_batch_size": 1, "minibatch_size_per_device": 1, "tensor_parallel_size": 1,
            "evaluator_lora_rank": 0, "lora_target_modules": ["q_proj"], "custom_kwargs": {"attn_implementation": "eager"},
            "gradient_checkpointing": False, "model_parallel": True, "trust_remote_code": False,
            "add_bos_token": True}  # fmt: skip
    assert set(good) == set(models.USER_FIELDS)  # every setting a file may give is tried
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"my-org/model": good, "other": {"lora_target_modules": "all-linear"}}))
    monkeypatch.setenv("ILR_MODELS_FILE", str(path))
    cfg = get_model_config("my-org/model")
    assert {k: getattr(cfg, k) for k in good} == good
    assert get_model_config("other").lora_target_modules == "all-linear"


def test_every_setting_has_a_range():
    """A setting added to ModelConfig needs a range here, unless a boolean's type says all."""
    fields = {f: type(getattr(models.MODELS_DICT["tiny-random"], f)) for f in models.USER_FIELDS}
    assert set(models._SETTING_RANGES) == {f for f, t in fields.items() if t is not bool}


def test_an_empty_model_name_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"": {"default_lr": 1e-4}}))
    monkeypatch.setenv("ILR_MODELS_FILE", str(path))
    with pytest.raises(ConfigError, match=f"ILR_MODELS_FILE={path}: a model name is empty"):
        get_model_config("tiny-random")


def test_a_bad_models_file_value_stops_main_before_the_run_dir(tmp_path):
    """Before: a negative learning rate was taken and the run trained with it."""
    (tmp_path / "models.json").write_text(json.dumps({"tiny-random": {"default_lr": -1e-4}}))
    run = cli("experiments.main", TINY_FLAGS, tmp_path, ILR_MODELS_FILE=str(tmp_path / "models.json"))
    assert_refused(run, f"ILR_MODELS_FILE={tmp_path / 'models.json'}: 'tiny-random' default_lr=-0.0001 is not valid")
    assert files_under(tmp_path) == ["models.json"]


# ---------------------------------------------------------------------------------------------
# Training filters that leave no row
# ---------------------------------------------------------------------------------------------


def test_the_gsm8k_marker_filter_dropping_every_row_is_named(tmp_path):
    """Before: a run dir, then "No training examples left (all filtered out or too long for max_len)"."""

    def rows(start: int, n: int) -> Dataset:  # GSM8K-shaped rows whose answers lack the `####` marker
        return Dataset.from_dict({"question": [f"What is {i} + 1?" for i in range(start, start + n)],
                                  "answer": [f"{i} + 1 = {i + 1}. The answer is {i + 1}."
                                             for i in range(start, start + n)]})  # fmt: skip

    DatasetDict(train=rows(0, 64), test=rows(100, 8)).save_to_disk(str(tmp_path / "data" / "gsm8k"))
    flags = ["--ds_name=gsm8k", "--model_size=tiny-random", "--n_docs=64", "--n_test_docs=8", "--batch_size=4",
             "--lora_rank=4", "--minibatch_size_per_device=4"]  # fmt: skip
    run = cli("experiments.main", flags, tmp_path, ILR_DATA_PATH=str(tmp_path / "data"))
    # A ground-truth run trains on half A of the 64 training rows.
    line = assert_refused(run)
    assert line == "error: 0 of 32 training rows left: 32 dropped because the answer has no '####' (gsm8k's " \
                   "final-answer marker)"  # fmt: skip
    assert not (tmp_path / "results").exists()


def test_each_filter_says_how_many_rows_it_dropped():
    """A cor method's round 0 keeps correct labels, then the marker filter runs on what is left:
    rows 0-9, wrong when i % 3 == 0 (0, 3, 6, 9: 4 rows); the marker is missing from every row, so
    it drops the 6 correct ones (not 10: a count against the original rows would say 10)."""
    labels = Dataset.from_dict({"question": [f"q{i}" for i in range(10)], "answer": [f"a{i}" for i in range(10)],
                                "acc": [0 if i % 3 == 0 else 1 for i in range(10)]})  # fmt: skip
    gsm8k, method = get_dataset_config("gsm8k"), parse_method("corilr0.15")
    with pytest.raises(ConfigError) as refused:
        filter_rows(labels, gsm8k, method, 0, None, preference=False)
    assert str(refused.value) == (
        "0 of 10 training rows left: 4 dropped because their label is wrong (corilr0.15 starts from correct "
        "labels), 6 dropped because the answer has no '####' (gsm8k's final-answer marker)"
    )
    marked = labels.map(lambda r: {"answer": r["answer"] + "\n#### 1"} if r["question"] != "q1" else r)
    assert sorted(filter_rows(marked, gsm8k, method, 0, None, preference=False)["question"]) == [
        "q2", "q4", "q5", "q7", "q8"]  # fmt: skip


def test_max_len_dropping_every_row_is_named():
    """Before: an empty dataset, and train_sft's "all filtered out or too long for max_len"."""
    tok = load_tokenizer("tiny-random")
    ds = Dataset.from_dict({"question": ["q0", "q1", "q2"], "answer": ["#### 12", "#### 123", "#### 1234"]})
    assert len(tokenize_dataset(ds, tok, max_len=7)) == 1  # one token per character
    with pytest.raises(ConfigError, match=r"^0 of 3 training rows left: 3 dropped because their answers are longer "
                                          r"than max_len=6 tokens \(raise --max_len to keep them\)$"):  # fmt: skip
        tokenize_dataset(ds, tok, max_len=6)
