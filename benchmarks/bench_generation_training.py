"""Batched vs one-prompt-at-a-time generation, and SFT tokens/s with minibatch 8 vs 1.

    .venv/bin/python benchmarks/bench_generation_training.py [--model=tiny-llama-strong]

Both comparisons run side by side in one process on the same model; results go in BENCHMARKS.md.
"""

from __future__ import annotations

import tempfile
import time

import fire
import torch

from iterative_label_refinement.core.datasets import load_dataset, tokenize_dataset
from iterative_label_refinement.core.generation import generate_answers
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.train import TrainConfig, add_lora, train_sft
from iterative_label_refinement.plugins import load_plugins

load_plugins()  # the toy world's task and tiny models


def bench_generation(model_name: str, n_prompts: int, batch_size: int) -> None:
    tok, model = load_tokenizer(model_name), load_model(model_name)
    questions = load_dataset("toy_arith", split_sizes={"test": n_prompts})["test"]["question"]
    t0 = time.perf_counter()
    batched = generate_answers(model, tok, questions, max_new_tokens=48, batch_size=batch_size)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = generate_answers(model, tok, questions, max_new_tokens=48, batch_size=1)
    t_single = time.perf_counter() - t0
    same = batched.texts == single.texts
    print(f"generation, {n_prompts} prompts, greedy, max 48 new tokens ({model_name})")
    print(f"  batched (batch {batch_size}): {t_batched:.2f} s, {n_prompts / t_batched:.1f} prompts/s")
    print(f"  one at a time:        {t_single:.2f} s, {n_prompts / t_single:.1f} prompts/s")
    print(f"  speed-up {t_single / t_batched:.1f}x, identical greedy outputs: {same}")


def bench_training(model_name: str, n_examples: int) -> None:
    tok = load_tokenizer(model_name)
    ds = tokenize_dataset(load_dataset("toy_arith", split_sizes={"train": n_examples})["train"], tok)
    n_tokens = sum(len(r) for r in ds["input_ids"])
    print(f"LoRA SFT (r=16), {n_examples} examples, {n_tokens} tokens, batch 32, 1 epoch ({model_name})")
    for minibatch in (1, 8):
        torch.manual_seed(0)
        model = add_lora(load_model(model_name), 16)
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(output_dir=out, lr=3e-3, epochs=1, batch_size=32, minibatch_size_per_device=minibatch)
            t0 = time.perf_counter()
            metrics = train_sft(model, tok, ds, cfg)
            elapsed = time.perf_counter() - t0
        print(
            f"  minibatch {minibatch}: {elapsed:.2f} s, {n_tokens / elapsed:.0f} tokens/s, loss {metrics['train_loss']:.3f}"
        )


def main(model: str = "tiny-llama-strong", n_prompts: int = 256, batch_size: int = 64, n_examples: int = 512):
    torch.set_num_threads(torch.get_num_threads())
    bench_generation(model, n_prompts, batch_size)
    bench_training(model, n_examples)


if __name__ == "__main__":
    fire.Fire(main)
