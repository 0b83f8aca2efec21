"""vLLM against the Hugging Face backend on the same prompts and LoRA adapter (benchmarks/gpu_check.sh).

    python benchmarks/gpu_check_vllm.py <a run dir saved with --save_model=True>

Prints how many greedy answers are equal, the sampling settings each backend receives, and the
batched generation throughput (answer tokens per second) of both.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from iterative_label_refinement.core.datasets import load_dataset
from iterative_label_refinement.core.files import read_json
from iterative_label_refinement.core.generation import (
    VLLMModel,
    generate_answers,
    hf_sampling,
    vllm_gpu_usage,
    vllm_need,
    vllm_sampling,
)
from iterative_label_refinement.core.models import load_tokenizer, resolve_model_path
from iterative_label_refinement.experiments.main import load_trained


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(run_dir: str) -> None:
    config = read_json(Path(run_dir, "experiment_config.json"))
    model_size, max_len = config["model_size"], config["max_len"]
    questions = list(load_dataset("gsm8k", split_sizes={"test": 32})["test"]["question"])
    tok = load_tokenizer(model_size)
    hf_model = load_trained(model_size, Path(run_dir))
    gen = dict(max_new_tokens=max_len, batch_size=32, seed=0)
    start = time.perf_counter()  # not `timed`: a closure over hf_model would keep it from vLLM
    hf = generate_answers(hf_model, tok, questions, **gen)
    hf_s = time.perf_counter() - start
    need = vllm_need(hf_model)
    del hf_model  # its GPU memory goes to vLLM, as in experiments.main
    vllm_model = VLLMModel(resolve_model_path(model_size), run_dir, gpu_usage=vllm_gpu_usage(need, cap=0.9))
    generate_answers(vllm_model, tok, questions[:2], backend="vllm", **gen)  # warm-up (graph capture)
    vl, vl_s = timed(lambda: generate_answers(vllm_model, tok, questions, backend="vllm", **gen))
    equal = sum(a == b for a, b in zip(hf.texts, vl.texts))
    for name, g, s in (("hf", hf, hf_s), ("vllm", vl, vl_s)):
        n_tokens = sum(len(ids[0]) for ids in g.token_ids)
        print(f"{name}: {len(questions)} prompts, {n_tokens} answer tokens in {s:.2f} s = {n_tokens / s:.0f} tokens/s")
    first = next((i for i, (a, b) in enumerate(zip(hf.texts, vl.texts)) if a != b), None)
    if first is not None:
        print(f"first difference, prompt {first}:\n  hf:   {hf.texts[first][0]!r}\n  vllm: {vl.texts[first][0]!r}")
    # The settings each backend receives for sampling (both from core.generation), side by side.
    hf_params, vllm_params = hf_sampling(0.7), vllm_sampling(0.7)
    print(f"sampling at temperature 0.7: hf {hf_params}; vllm {vllm_params}")
    same = (hf_params["temperature"], hf_params["top_p"], hf_params["top_k"] or -1) == (
        vllm_params["temperature"], vllm_params["top_p"], vllm_params["top_k"])  # fmt: skip
    print(f"sampling settings identical: {same}")
    print(f"greedy answers equal: {equal}/{len(questions)}")
    sys.exit(0 if equal == len(questions) and same else 1)


if __name__ == "__main__":
    main(sys.argv[1])
