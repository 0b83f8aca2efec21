"""Batched vs one-prompt-at-a-time evaluator scoring: position-debiased scores of 512 pairs.

    .venv/bin/python benchmarks/bench_evaluator.py [--models=tiny-random,tiny-llama-weak] [--n_pairs=512]

A tiny evaluator (the model with a fresh 2-label head, or the LM itself for the likelihood kind) is
saved to a temporary evaluator dir and loaded back with `load_evaluator`, as `ilr` and `dpo` do.
Each pair costs two evaluator prompts (both position orders). On 2 CPU cores a 1.08M-parameter
model is compute-bound once batched, so the speed-up of batching shows best on the smallest model
(per-call overhead) and on GPUs. Results go in BENCHMARKS.md.
"""

from __future__ import annotations

import random
import tempfile
import time

import fire
import numpy as np
import torch

from iterative_label_refinement.core.datasets import load_dataset
from iterative_label_refinement.core.evaluator import debiased_scores, load_evaluator, save_evaluator
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.plugins import load_plugins

load_plugins()  # the toy world's task and tiny models


def toy_pairs(n_pairs: int) -> tuple[list[str], list[str], list[str]]:
    """Gold answers and copies with one number changed, as in ILR's (current, proposal) pairs."""
    rows = load_dataset("toy_arith", split_sizes={"train": n_pairs})["train"]
    rng = random.Random(0)
    wrong = [a.replace(a.split()[-1], str(int(a.split()[-1]) + rng.randint(1, 9))) for a in rows["answer"]]
    return list(rows["question"]), wrong, list(rows["answer"])


def bench(model: str, kind: str, n_pairs: int, batch_size: int) -> None:
    questions, current, proposal = toy_pairs(n_pairs)
    with tempfile.TemporaryDirectory() as path:
        torch.manual_seed(0)
        net = load_model(model, kind="classifier" if kind == "classifier" else "causal_lm")
        save_evaluator(net, load_tokenizer(model), path, {"evaluator_kind": kind, "likelihood_scale": 0.5})
        evaluator = load_evaluator(path)
        timings = {}
        scores = {}
        for bs in (batch_size, 1):
            t0 = time.perf_counter()
            scores[bs] = debiased_scores(evaluator, questions, current, proposal, batch_size=bs)
            timings[bs] = time.perf_counter() - t0
    n_prompts = 2 * len(questions)
    diff = float(np.abs(scores[batch_size] - scores[1]).max())
    print(f"{kind} evaluator ({model}), {len(questions)} pairs = {n_prompts} prompts, debiased scores")
    t_batched = timings[batch_size]
    print(f"  batched (batch {batch_size}): {t_batched:.2f} s, {n_prompts / t_batched:.0f} prompts/s")
    print(f"  one at a time:        {timings[1]:.2f} s, {n_prompts / timings[1]:.0f} prompts/s")
    print(f"  speed-up {timings[1] / t_batched:.1f}x, max |score difference| {diff:.1e}")


def main(models: str = "tiny-random,tiny-llama-weak", n_pairs: int = 512, batch_size: int = 32, kind: str = "both"):
    for model in models.split(",") if isinstance(models, str) else models:
        for k in ("classifier", "likelihood") if kind == "both" else (kind,):
            bench(model, k, n_pairs, batch_size)


if __name__ == "__main__":
    fire.Fire(main)
