"""Throughput of the LLM judge: SmolLM2-135M-Instruct (the packaged GGUF) behind llama.cpp's server
(xllamacpp, installed by `make setup`), scoring toy-world pairs in both orders through `core.judge`.

    .venv/bin/python benchmarks/bench_judge.py [--n_pairs=16] [--threads=2]

Prints requests per second and the agreement of the judge with ground truth (how often the debiased
score prefers the gold answer to a copy with one number changed). Results go in BENCHMARKS.md, and
give the time `DEMO=full EVALUATOR=judge` would spend asking (docs/toy_world.md).
"""

from __future__ import annotations

import socket
import tempfile
import time

import fire

from iterative_label_refinement.core.evaluator import JudgeEvaluator, debiased_scores
from iterative_label_refinement.core.judge import JudgeEndpoint
from iterative_label_refinement.core.models import MODELS_DICT
from iterative_label_refinement.plugins import load_plugins

load_plugins()  # the toy world's task and tiny models


def main(n_pairs: int = 16, threads: int = 2) -> None:
    import xllamacpp
    from bench_evaluator import toy_pairs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = xllamacpp.CommonParams()
    params.model.path = str(MODELS_DICT["HuggingFaceTB/SmolLM2-135M-Instruct"].packaged.locate())
    params.n_ctx, params.hostnames, params.port = 2048, ["127.0.0.1"], port
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    server = xllamacpp.Server(params)
    questions, wrong, gold = toy_pairs(n_pairs)
    with tempfile.TemporaryDirectory() as cache:
        judge = JudgeEvaluator(JudgeEndpoint(f"{server.listening_address}/v1", "smollm2"), "toy_arith", cache)
        start = time.perf_counter()
        scores = debiased_scores(judge, questions, wrong, gold)  # P(gold should replace the wrong answer)
        elapsed = time.perf_counter() - start
    print(
        f"{2 * n_pairs} requests in {elapsed:.1f} s: {2 * n_pairs / elapsed:.2f} requests/s; "
        f"gold preferred in {sum(s > 0.5 for s in scores)} of {n_pairs} pairs; mean score {scores.mean():.3f}"
    )


if __name__ == "__main__":
    fire.Fire(main)
