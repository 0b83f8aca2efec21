"""Does a BOS token before every prompt help a model? Gold-answer loss with the switch off and on.

    python benchmarks/bos_effect.py --raw_path=<folder with GSM8K train.jsonl and test.jsonl> \
        [--model=HuggingFaceTB/SmolLM2-135M-Instruct --n_train=64 --n_test=100 --epochs=1 --lr=3e-4]

For each setting of the registry's `add_bos_token` switch (set through an $ILR_MODELS_FILE, as a
user would): the mean per-token negative log-likelihood of the gold answers of `n_test` test
questions (the tokens training labels: answer and EOS), for the base model and after a short LoRA
SFT on `n_train` training rows (the weak run's recipe, shortened). Lower is better. Generation does
not put the BOS before prompts yet, so accuracy is not measured here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset

from iterative_label_refinement.core.datasets import tokenize_dataset
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.train import TrainConfig, add_lora, train_sft
from iterative_label_refinement.core.train import collate as sft_collate
from iterative_label_refinement.plugins import load_plugins

load_plugins()  # the toy world's task and tiny models


def read_rows(path: Path, n: int) -> Dataset:
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return Dataset.from_list([{"question": r["question"], "answer": r["answer"]} for r in rows])


@torch.no_grad()
def answer_nll(model, tok, ds: Dataset, batch_size: int = 8) -> float:
    """Sum of -log p over labelled tokens / their number (the SFT loss over the whole set)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(ds), batch_size):
        batch = sft_collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))], tok.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="sum").item()
        count += (labels != -100).sum().item()
    return total / count


def main(raw_path: str, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct", n_train: int = 64, n_test: int = 100,
         epochs: float = 1, lr: float = 3e-4, lora_rank: int = 16, max_len: int = 256) -> None:  # fmt: skip
    train_rows = read_rows(Path(raw_path, "train.jsonl"), n_train)
    test_rows = read_rows(Path(raw_path, "test.jsonl"), n_test)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bos in (False, True):
            settings = Path(tmp, f"models-{bos}.json")
            settings.write_text(json.dumps({model: {"add_bos_token": bos}}))
            os.environ["ILR_MODELS_FILE"] = str(settings)
            tok = load_tokenizer(model)
            train_ds = tokenize_dataset(train_rows, tok, max_len=max_len)
            test_ds = tokenize_dataset(test_rows, tok, max_len=max_len)
            assert (train_ds[0]["input_ids"][0] == tok.bos_token_id) == bos
            torch.manual_seed(0)
            base = load_model(model, dropout=False, gradient_checkpointing=False)
            base_nll = answer_nll(base, tok, test_ds)
            lora = add_lora(base, lora_rank)
            cfg = TrainConfig(output_dir=str(Path(tmp, f"sft-{bos}")), lr=lr, epochs=epochs, batch_size=16,
                              minibatch_size_per_device=4, seed=0)  # fmt: skip
            start = time.time()
            train_sft(lora, tok, train_ds, cfg)
            results[bos] = (base_nll, answer_nll(lora, tok, test_ds), time.time() - start, len(train_ds), len(test_ds))
    print(f"model {model}; gold-answer NLL per token on {n_test} GSM8K test rows; SFT on {n_train} rows, "
          f"{epochs} epoch(s), lr {lr}, LoRA r{lora_rank}")  # fmt: skip
    print("| add_bos_token | base model | after SFT | SFT seconds | train rows kept | test rows kept |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for bos, (base_nll, sft_nll, seconds, n_tr, n_te) in results.items():
        print(f"| {bos} | {base_nll:.4f} | {sft_nll:.4f} | {seconds:.0f} | {n_tr} | {n_te} |")


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
