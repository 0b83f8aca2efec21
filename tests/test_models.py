"""The model registry and loader on tiny offline models: local folders, settings files, BOS, dtypes,
and the training defects first seen with a real model (classifier loss scale, max_len drops)."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import struct
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from iterative_label_refinement.core import models, train_evaluator
from iterative_label_refinement.core.datasets import tokenize_dataset, tokenize_example
from iterative_label_refinement.core.models import get_model_config, load_model, load_tokenizer, resolve_model_path
from iterative_label_refinement.core.prompts import format_prompt
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.core.train import TrainConfig, collate
from iterative_label_refinement.experiments import main as main_module


def _copy_tiny(dest: Path) -> Path:
    shutil.copytree(resolve_model_path("tiny-random"), dest)
    return dest


# ---------------------------------------------------------------------------------------------
# Defect 1: a folder named like a registered model is loaded from the folder
# ---------------------------------------------------------------------------------------------


def test_folder_named_like_a_registered_model_loads_from_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _copy_tiny(tmp_path / "models" / "gemma-2b")  # what a hub download into a local dir gives
    with torch.no_grad():  # weights no hub model has: the load must come from this folder
        weights = load_file(str(folder / "model.safetensors"))
        weights = {k: v + 0.25 for k, v in weights.items()}
    from safetensors.torch import save_file

    save_file(weights, str(folder / "model.safetensors"))
    cfg = get_model_config("models/gemma-2b")
    assert cfg.name == "models/gemma-2b" and resolve_model_path("models/gemma-2b") == "models/gemma-2b"
    assert cfg.default_lr == get_model_config("google/gemma-2b").default_lr == 5e-4  # gemma's settings
    model = load_model("models/gemma-2b", device="cpu")  # offline: the hub id would fail here
    loaded = dict(model.named_parameters())
    for key, value in weights.items():
        if key in loaded:
            assert torch.equal(loaded[key].detach(), value), key
    assert load_tokenizer("models/gemma-2b").eos_token == "</s>"  # the folder's char tokenizer, not Gemma's
    # A run names the folder, so a hub download of the same name could never be substituted.
    out = main_module.main(model_size="models/gemma-2b", ds_name="toy_arith", results_folder="r", print_save_path=True)
    assert "ms=gemma-2b" in out and "l=0.0005" in out


# ---------------------------------------------------------------------------------------------
# Defect 5: folder defaults by size; settings registered in a file named by $ILR_MODELS_FILE
# ---------------------------------------------------------------------------------------------


def _fake_folder(path: Path, shapes: list[list[int]]) -> Path:
    """A model folder whose safetensors header claims tensors of `shapes` (no data: only headers are read)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    header = {f"w{i}": {"dtype": "BF16", "shape": s, "data_offsets": [0, 0]} for i, s in enumerate(shapes)}
    raw = json.dumps(header).encode()
    (path / "model-00001-of-00001.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def test_folder_defaults_follow_its_size(tmp_path):
    small = _fake_folder(tmp_path / "small", [[1000, 500], [500]])
    large = _fake_folder(tmp_path / "large", [[50_000, 20_000], [10, 10]])
    huge = _fake_folder(tmp_path / "huge", [[200_000, 100_000], [100_000, 100_000]])
    assert models.count_parameters(small) == 1000 * 500 + 500
    assert models.count_parameters(large) == 50_000 * 20_000 + 100
    small_cfg, large_cfg, huge_cfg = (get_model_config(str(p)) for p in (small, large, huge))
    assert not small_cfg.gradient_checkpointing and not small_cfg.model_parallel
    assert large_cfg.gradient_checkpointing and not large_cfg.model_parallel
    assert huge_cfg.gradient_checkpointing and huge_cfg.model_parallel and huge_cfg.default_optimizer == "adafactor"


def test_models_file_registers_settings_without_code(tmp_path, monkeypatch):
    folder = _copy_tiny(tmp_path / "my-llama")
    settings = {
        "my-org/new-model": {"default_lr": 2e-4, "default_dpo_lr": 3e-7, "lora_target_modules": ["q_proj", "v_proj"]},
        "google/gemma-2b": {"add_bos_token": True},
        str(folder): {"default_lr": 7e-4, "eval_batch_size": 3, "default_optimizer": "rmsprop"},
    }
    path = tmp_path / "models.json"
    path.write_text(json.dumps(settings))
    monkeypatch.setenv("ILR_MODELS_FILE", str(path))
    new = get_model_config("my-org/new-model")
    assert (new.default_lr, new.default_dpo_lr, new.lora_target_modules) == (2e-4, 3e-7, ["q_proj", "v_proj"])
    gemma = get_model_config("google/gemma-2b")
    assert gemma.add_bos_token and gemma.default_lr == 5e-4  # the other registered settings stay
    mine = get_model_config(str(folder))
    assert (mine.name, mine.default_lr, mine.eval_batch_size) == (str(folder), 7e-4, 3)
    # The CLIs take the registered defaults: lr and optimizer name the run dir.
    out = main_module.main(
        model_size=str(folder), ds_name="toy_arith", results_folder=str(tmp_path), print_save_path=True
    )
    assert "l=0.0007" in out and "o=rmsprop" in out

    for bad, message in [
        ({"m": {"learning_rate": 1}}, r"unknown setting\(s\) \['learning_rate'\] for 'm'. Valid: \['default_lr'"),
        ({"m": {"default_lr": "fast"}}, r"'m' default_lr='fast' should be a float"),
        ({"m": {"eval_batch_size": True}}, r"'m' eval_batch_size=True should be a int"),
        (["m"], "must map model names to settings"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            get_model_config("m")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        get_model_config("google/gemma-2b")
    monkeypatch.setenv("ILR_MODELS_FILE", str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match="absent.json does not exist"):
        get_model_config("google/gemma-2b")


# ---------------------------------------------------------------------------------------------
# Defect 6: the BOS switch
# ---------------------------------------------------------------------------------------------


def test_bos_switch_puts_bos_before_prompts_only(tmp_path, monkeypatch):
    question, answer = "12 plus 30", "12+30=42\n#### 42"
    tok = load_tokenizer("tiny-random")
    plain = tokenize_example(tok, question, answer)
    prompt_ids = tok(format_prompt(question), add_special_tokens=False)["input_ids"]
    answer_ids = [tok.convert_tokens_to_ids(c) for c in answer] + [tok.eos_token_id]  # one token per character
    assert plain["input_ids"] == prompt_ids + answer_ids  # the reference's default: no BOS

    path = tmp_path / "models.json"
    path.write_text(json.dumps({"tiny-random": {"add_bos_token": True}}))
    monkeypatch.setenv("ILR_MODELS_FILE", str(path))
    tok = load_tokenizer("tiny-random")
    with_bos = tokenize_example(tok, question, answer)
    assert with_bos["input_ids"] == [tok.bos_token_id] + prompt_ids + answer_ids
    assert with_bos["labels"] == [-100] * (1 + len(prompt_ids)) + answer_ids  # the label mask is unchanged
    # The choice travels with the tokenizer saved in a run or evaluator dir.
    tok.save_pretrained(str(tmp_path / "saved"))
    (tmp_path / "saved" / "config.json").write_text(
        (Path(resolve_model_path("tiny-random")) / "config.json").read_text()
    )
    monkeypatch.delenv("ILR_MODELS_FILE")
    assert tokenize_example(load_tokenizer(str(tmp_path / "saved")), question, answer) == with_bos


# ---------------------------------------------------------------------------------------------
# Defect 3: full fine-tunes keep float32 weights (the policy on faked GPUs: tests/test_gpu_paths.py)
# ---------------------------------------------------------------------------------------------


def test_bf16_weights_cannot_absorb_small_updates():
    """Why full fine-tunes keep float32 weights: an lr-1e-6-sized step vanishes in bf16."""
    torch.manual_seed(0)
    w = torch.randn(10_000) * 0.05
    step = torch.full_like(w, 1e-6)  # one AdamW step at lr 1e-6 moves every weight by about lr
    changed_fp32 = ((w + step) != w).float().mean().item()
    changed_bf16 = ((w.bfloat16() + step.bfloat16()) != w.bfloat16()).float().mean().item()
    assert changed_fp32 > 0.99 and changed_bf16 < 0.05


# ---------------------------------------------------------------------------------------------
# Defect 2: the classifier evaluator trains like one large batch under gradient accumulation
# ---------------------------------------------------------------------------------------------


def _classifier_rows(tok, n: int = 8):
    prompts = [f"Question {i}: is {i * 7} + {i} = {i * 8}?" + " really" * (i % 3) for i in range(n)]
    labels = [i % 2 for i in range(n)]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return Dataset.from_dict({"input_ids": ids, "labels": labels, "length": [len(x) for x in ids]})


def test_classifier_gradient_accumulation_equals_one_large_batch(tmp_path):
    tok = load_tokenizer("tiny-random")
    torch.manual_seed(0)
    start = load_model("tiny-random", kind="classifier", dropout=False)
    start.config.pad_token_id = tok.pad_token_id
    ds = _classifier_rows(tok)
    lr = 0.5

    # By hand: the mean cross-entropy of all 8 rows, each alone (no padding), and one SGD step on it
    # (plain SGD without clipping, so that a gradient of the wrong scale shows in the weights).
    reference = copy.deepcopy(start)
    losses = [
        torch.nn.functional.cross_entropy(
            reference(input_ids=torch.tensor([r["input_ids"]])).logits, torch.tensor([r["labels"]])
        )
        for r in ds
    ]
    mean_loss = torch.stack(losses).mean()
    mean_loss.backward()
    with torch.no_grad():
        expected = {n: p - lr * p.grad for n, p in reference.named_parameters()}

    collator = lambda rows: collate(rows, tok.pad_token_id)  # noqa: E731
    for minibatch in (1, 2, 8):  # gradient accumulation over 8, 4 and 1 micro-batches
        model = copy.deepcopy(start)
        args = TrainConfig(output_dir=str(tmp_path / str(minibatch)), lr=lr, epochs=1, batch_size=8,
                           minibatch_size_per_device=minibatch, lr_schedule="constant", warmup_ratio=0,
                           ).training_arguments(optim="sgd", max_grad_norm=0, eval_strategy="epoch", save_strategy="epoch",
                                                load_best_model_at_end=True, metric_for_best_model="eval_loss",
                                                greater_is_better=False, per_device_eval_batch_size=8)  # fmt: skip
        out = train_evaluator.train(model, ds, ds, collator, args, head_lr=None)
        assert out["train_losses"][0] == pytest.approx(mean_loss.item(), rel=1e-4), minibatch
        for name, p in model.named_parameters():
            assert torch.allclose(p, expected[name], atol=1e-5), (minibatch, name)


# ---------------------------------------------------------------------------------------------
# Defect 8: rows dropped by the max_len filter are counted in the log
# ---------------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_max_len_drops_are_logged():
    from iterative_label_refinement.core import datasets as datasets_module

    tok = load_tokenizer("tiny-random")
    answers = ["#### 1", "12+30=42\n#### 42", "1+1=2\n2+2=4\n4+4=8\n#### 8", "#### 12345678"]
    ds = Dataset.from_dict({"question": [f"q{i}" for i in range(4)], "answer": answers})
    max_len = 13
    # One token per character: answers longer than max_len characters (eos not counted) must go.
    expected_kept = [a for a in answers if len(a) <= max_len]
    handler = _Records()
    datasets_module.logger.addHandler(handler)
    try:
        out = tokenize_dataset(ds, tok, max_len=max_len)
        tokenize_dataset(ds, tok, max_len=100)
    finally:
        datasets_module.logger.removeHandler(handler)
    assert [tok.decode(r["input_ids"][-len(a) - 1 : -1]) for r, a in zip(out, expected_kept)] == expected_kept
    dropped = len(answers) - len(expected_kept)
    assert dropped == 2 and len(out) == 2
    assert handler.messages == [
        f"max_len filter dropped 2 of 4 training rows (50.0%): their answers are longer than max_len={max_len} "
        "tokens (raise --max_len to keep them)"
    ]
