"""How much arithmetic a tiny base knows before any fine-tuning: greedy answers to symbolic problems.

    .venv/bin/python benchmarks/base_arithmetic.py                      # the two shipped bases
    .venv/bin/python benchmarks/base_arithmetic.py --models=tiny-llama-strong,/tmp/my-base --n=400

For each base, 2-step problems in the pretraining documents' form (`61-48+71=?`), once bare (as most
pretraining documents are) and once in the SFT prompt template; a problem counts as solved when the
first `#### ` line of the answer is `#### <result>` (a base goes on to the next document after it,
as pretraining packed them). Problems are drawn from a fixed seed, so every
base answers the same ones. Figures go in docs/toy_world.md.
"""

from __future__ import annotations

import random

import fire
import torch

from iterative_label_refinement.core.generation import _generate_hf, hf_sampling
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.prompts import format_prompt
from iterative_label_refinement.plugins import load_plugins
from iterative_label_refinement.toy.arithmetic import sample_problem

load_plugins()  # the toy world's task and tiny models


def solved_share(model, tokenizer, prompts: list[str], results: list[int]) -> float:
    """The share of prompts whose greedy answer's first `#### ` line is `#### <result>`."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    answers = _generate_hf(model, tokenizer, ids, 30, 50, 1, 0, "generate", hf_sampling(0.0)).texts
    firsts = [next((line for line in a[0].splitlines() if line.startswith("#### ")), None) for a in answers]
    return sum(first == f"#### {result}" for first, result in zip(firsts, results)) / len(prompts)


def main(models: str = "tiny-llama-weak,tiny-llama-strong", n: int = 200, seed: int = 99):
    torch.set_num_threads(1)
    rng = random.Random(seed)
    problems = [sample_problem(rng, n_steps=2) for _ in range(n)]
    results = [p.result for p in problems]
    print(f"symbolic 2-step problems solved, greedy, {n} problems (seed {seed}):")
    for name in models.split(",") if isinstance(models, str) else models:
        tokenizer, model = load_tokenizer(name), load_model(name, dropout=False)
        bare = solved_share(model, tokenizer, [p.header + "\n" for p in problems], results)
        templated = solved_share(model, tokenizer, [format_prompt(p.header) for p in problems], results)
        print(f"  {name}: bare {100 * bare:.1f}%, in the prompt template {100 * templated:.1f}%")


if __name__ == "__main__":
    fire.Fire(main)
