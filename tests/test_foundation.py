"""Foundation: registries, tiny models, tokenisation, run-dir names, data preparation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from iterative_label_refinement.core.datasets import dataset_names, get_dataset_config, load_dataset, tokenize_dataset
from iterative_label_refinement.core.layout import get_config_foldername
from iterative_label_refinement.core.models import MODELS_DICT, get_model_config, load_model, load_tokenizer
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import prepare_data

WEAK_CONFIG = dict(
    batch_size=32, data_seed=0, ds_name="gsm8k", epochs=2, half_data=0, lora_rank=64, lr=5e-4,
    lr_schedule="cosine_warmup", max_len=256, model_size="google/gemma-2b", n_docs=20000, n_test_docs=10000,
    optim="adamw", round_id=0, seed=0, train_with_dropout=False, warmup_ratio=0.05,
)  # fmt: skip


def test_run_dir_names_reproduce_the_reference():
    assert get_config_foldername(WEAK_CONFIG) == (
        "bs=32-ds=0-dn=gsm8k-e=2-hd=0-lr=64-l=0.0005-ls=cosi_warm-ml=256-ms=gemma-2b-nd=20000-ntd=10000-"
        "o=adamw-ri=0-s=0-twd=0-wr=0.05"
    )
    dpo = dict(WEAK_CONFIG, model_size="mistralai/Mistral-7B-v0.1", lr=1e-6, optim="rmsprop", round_id=1)
    dpo.update(do_dpo=True, dpo_beta=0.1, dpo_loss_type="sigmoid", weak_label_type="dpo0.10.15",
               weak_model_size="google/gemma-2b")  # fmt: skip
    assert get_config_foldername(dpo) == (
        "bs=32-ds=0-dd=1-db=0.1-dlt=sigmoid-dn=gsm8k-e=2-hd=0-lr=64-l=1e-06-ls=cosi_warm-ml=256-"
        "ms=Mistral-7B-v0.1-nd=20000-ntd=10000-o=rmsprop-ri=1-s=0-twd=0-wr=0.05-wlt=dpo0.10.15-wms=gemma-2b"
    )


def test_reference_models_registered_with_paper_values():
    assert MODELS_DICT["google/gemma-2b"].default_lr == 5e-4
    assert MODELS_DICT["google/gemma-2b"].default_dpo_lr == 5e-6
    assert MODELS_DICT["mistralai/Mistral-7B-v0.1"].default_lr == 1e-4
    llama = MODELS_DICT["meta-llama/Meta-Llama-3-70B"]
    assert (llama.default_optimizer, llama.tensor_parallel_size, llama.default_dpo_lr) == ("adafactor", 2, 1e-6)
    assert all(not cfg.trust_remote_code for cfg in MODELS_DICT.values())


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="Unknown model 'gpt-17'.*google/gemma-2b"):
        get_model_config("gpt-17")


def test_tiny_model_builds_once_reloads_and_takes_lora(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("ILR_CACHE_PATH", str(tmp_path))
    model = load_model("tiny-random")
    (built,) = (tmp_path / "tiny").glob("tiny-random-*[!k]")  # the model dir, not its .lock
    assert (built / "config.json").exists() and (built / "tokenizer.json").exists()
    mtime = (built / "config.json").stat().st_mtime
    again = load_model("tiny-random")  # from_pretrained, no rebuild
    assert (built / "config.json").stat().st_mtime == mtime
    for a, b in zip(model.parameters(), again.parameters()):
        assert a.equal(b)
    lora = get_peft_model(again, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # A local model directory is a valid model name too.
    assert load_tokenizer(str(built)).padding_side == "left"


def test_tokenizer_setup_and_prompt_masking():
    tok = load_tokenizer("tiny-random")
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"
    assert tok("12", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(c) for c in "12"]
    ds = load_dataset("toy_arith", seed=0, split_sizes={"train": 20})["train"]
    tokenized = tokenize_dataset(ds, tok)
    for row in tokenized:
        labelled = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
        assert tok.decode(labelled) == row["answer"] + tok.eos_token
        n_prompt = row["labels"].count(-100)
        assert tok.decode(row["input_ids"][:n_prompt]) == f"USER:\n{row['question']}\n\nASSISTANT:\n"
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]


def test_preference_tokenisation():
    from datasets import Dataset

    tok = load_tokenizer("tiny-random")
    ds = Dataset.from_list([{"question": "1 plus 2", "chosen": "#### 3", "rejected": "#### 4"}])
    row = tokenize_dataset(ds, tok, preference=True)[0]
    n = len(row["prompt_input_ids"])
    assert row["chosen_input_ids"][:n] == row["prompt_input_ids"] == row["rejected_input_ids"][:n]
    assert tok.decode([t for t in row["chosen_labels"] if t != -100]) == "#### 3" + tok.eos_token
    assert tok.decode([t for t in row["rejected_labels"] if t != -100]) == "#### 4" + tok.eos_token


def test_dataset_registry_and_deterministic_loading():
    assert {"gsm8k", "bird", "saferpaca", "toy_arith"} <= set(dataset_names())
    assert get_dataset_config("gsm8k").max_len == 256 and get_dataset_config("saferpaca").max_len == 512
    a = load_dataset("toy_arith", seed=3, split_sizes={"train": 50, "test": 10})
    b = load_dataset("toy_arith", seed=3, split_sizes={"train": 50, "test": 10})
    c = load_dataset("toy_arith", seed=4, split_sizes={"train": 50, "test": 10})
    assert a["train"]["question"] == b["train"]["question"] != c["train"]["question"]
    assert set(a["train"]["question"]) == set(c["train"]["question"])  # same first 50, other order
    assert len(a["test"]) == 10 and not set(a["train"]["question"]) & set(a["test"]["question"])
    assert all(r["answer"].split("\n")[-1].startswith("#### ") for r in a["train"])
    metric = get_dataset_config("toy_arith").metric
    assert metric(a["test"]["answer"], a["test"]["answer"], list(a["test"])) == [1.0] * 10


def test_unknown_dataset_and_missing_data(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"Unknown dataset 'gsm9k'.*'gsm8k'"):
        load_dataset("gsm9k")
    monkeypatch.setenv("ILR_DATA_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="prepare_data --ds_name=gsm8k"):
        load_dataset("gsm8k")


@pytest.mark.parametrize(
    "ds_name, sub, counts, columns",
    [
        ("gsm8k", "gsm8k", (7473, 1319), {"question", "answer"}),
        ("bird", "bird", (1227, 307), {"question", "answer", "db_name", "db_schema", "difficulty"}),
        ("saferpaca", "saferpaca", (4034, 449), {"question", "answer", "category"}),
    ],
)
def test_prepare_real_data(shared_data, tmp_path, monkeypatch, ds_name, sub, counts, columns):
    monkeypatch.setenv("ILR_DATA_PATH", str(tmp_path))
    prepare_data.main(ds_name, raw_path=str(shared_data / sub))
    dd = load_dataset(ds_name, split_sizes={"train": 10**6, "test": 10**6})
    assert (len(dd["train"]), len(dd["test"])) == counts
    assert set(dd["train"].column_names) == columns
    if ds_name == "bird":
        row = dd["test"][0]
        assert "CREATE TABLE" in row["question"] and row["db_schema"] in row["question"]
    if ds_name == "saferpaca":
        assert set(dd["train"]["category"]) == {"general", "safety"}


def test_prepare_rejects_bad_raw_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ILR_DATA_PATH", str(tmp_path / "data"))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.jsonl").write_text('{"question": "q"}\n')
    (raw / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(ConfigError, match=r"train.jsonl: row 0 is missing field\(s\) \['answer'\]"):
        prepare_data.main("gsm8k", raw_path=str(raw))
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_cli_bad_dataset_exits_nonzero():
    proc = subprocess.run(
        [sys.executable, "-m", "iterative_label_refinement.experiments.prepare_data", "--ds_name=nope"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Valid: ['bird', 'gsm8k', 'saferpaca']" in proc.stderr


def test_build_models_cli_builds_once_and_rejects_unknown_names(tmp_path):
    env = {**os.environ, "ILR_CACHE_PATH": str(tmp_path)}
    cmd = [sys.executable, "-m", "iterative_label_refinement.experiments.build_models"]
    proc = subprocess.run([*cmd, "tiny-random", "google/gemma-2b"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    built, hub = proc.stdout.split()
    assert (tmp_path / "tiny" / built.split("/")[-1] / "config.json").exists() and hub == "google/gemma-2b"
    again = subprocess.run([*cmd, "tiny-random"], capture_output=True, text=True, env=env)
    assert again.stdout.split() == [built] and "Building" not in again.stderr
    bad = subprocess.run([*cmd, "gpt-17"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Unknown model 'gpt-17'" in bad.stderr


def test_tiny_pretraining_gives_the_same_weights_whatever_the_thread_count(tmp_path):
    import torch

    from iterative_label_refinement.toy.tiny_models import TinySpec, build_tiny_model

    spec = TinySpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, pretrain_steps=12,
                    pretrain_stop=10, prompt_steps=3)  # fmt: skip
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            build_tiny_model(spec, tmp_path / f"threads{n}")
            assert torch.get_num_threads() == n  # the caller's setting is restored
    finally:
        torch.set_num_threads(threads)
    weights = [(tmp_path / f"threads{n}" / "model.safetensors").read_bytes() for n in (1, 2)]
    assert weights[0] == weights[1]
