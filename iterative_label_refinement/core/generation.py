"""One entry point for answer generation: batched Hugging Face `generate`, or vLLM on GPU.

Greedy or beam search at temperature 0, sampling with `num_samples` answers per prompt otherwise.
Prompts are formatted with the SFT prompt template; answers come back without special tokens and
stripped of surrounding whitespace, as the reference's were.

Sampling draws from the model's whole distribution at `temperature`, as the reference did: top-k and
top-p are off unless asked for. Every logits-shaping setting is passed explicitly to both backends,
because each otherwise fills unset values from the model's `generation_config.json` and then from
its own defaults (Hugging Face's default top-k is 50, which silently truncates every sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from iterative_label_refinement.core.common import ConfigError, get_logger

logger = get_logger(__name__)

BACKENDS = ("hf", "vllm")


@dataclass
class Generations:
    """Per prompt, `num_samples` answers and their token ids."""

    texts: list[list[str]]
    token_ids: list[list[list[int]]]


def generate_answers(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    temperature: float = 0.0,
    num_samples: int = 1,
    num_beams: int = 1,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    backend: str = "hf",
    desc: str = "generate",
) -> Generations:
    """Answer each question; `model` is a loaded model for "hf", a `VLLMModel` for "vllm".

    top_k=0 and top_p=1.0 (the defaults) sample from the whole distribution.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown inference backend {backend!r}. Valid: {list(BACKENDS)}")
    if num_samples > 1 and temperature <= 0:
        raise ConfigError(f"num_samples={num_samples} needs temperature > 0 (got {temperature})")
    check_sampling(top_k, top_p)
    from iterative_label_refinement.core.datasets import prompt_ids

    # Token ids exactly as training built them: the template, no special tokens but the model's BOS policy.
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    if backend == "vllm":
        if num_beams > 1 and temperature <= 0:
            raise ConfigError(f"num_beams={num_beams}: beam search runs on the 'hf' backend only")
        return model.generate(prompts, max_new_tokens=max_new_tokens, num_samples=num_samples, seed=seed,
                              sampling=vllm_sampling(temperature, top_k, top_p))  # fmt: skip
    return _generate_hf(model, tokenizer, prompts, max_new_tokens, batch_size, num_samples, seed, desc,
                        hf_sampling(temperature, top_k, top_p, num_beams))  # fmt: skip


def check_sampling(top_k: int, top_p: float) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"--top_k must be a whole number >= 0 (0 = off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(f"--top_p must be in (0, 1] (1 = off), got {top_p!r}")


def hf_sampling(temperature: float, top_k: int = 0, top_p: float = 1.0, num_beams: int = 1) -> dict[str, Any]:
    """Hugging Face `GenerationConfig` settings: greedy or beams at temperature 0, else plain sampling.

    The neutral values are set, not left unset: unset ones come from the model's generation config.
    """
    # Processors that also shape greedy and beam search (penalties, forced lengths).
    common = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0)
    if temperature <= 0:
        return dict(common, do_sample=False, num_beams=num_beams)
    return dict(common, do_sample=True, num_beams=1, temperature=temperature, top_k=top_k, top_p=top_p, min_p=0.0,
                typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)  # fmt: skip


def vllm_sampling(temperature: float, top_k: int = 0, top_p: float = 1.0) -> dict[str, Any]:
    """vLLM `SamplingParams` with the same meaning as `hf_sampling` (vLLM writes "top-k off" as -1)."""
    return dict(
        temperature=temperature,
        top_k=top_k if top_k > 0 else -1,
        top_p=top_p,
        min_p=0.0,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        min_tokens=0,
    )


def _generate_hf(model, tokenizer, prompts, max_new_tokens, batch_size, num_samples, seed, desc,
                 sampling: dict[str, Any]) -> Generations:  # fmt: skip
    import torch  # here, not at module import: run-dir queries check sampling flags without loading torch
    from transformers import GenerationConfig

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **sampling,
    )
    torch.manual_seed(seed)
    # Longest prompts first: batches of similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts: list[list[str]] = [[] for _ in prompts]
    ids: list[list[list[int]]] = [[] for _ in prompts]
    # Counted in prompts, so that a generation in one batch shows its bar too (its time, its rate).
    bar = tqdm(total=len(order), desc=desc, unit="prompt")
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        enc = tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, return_tensors="pt")  # left padding
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(**enc, generation_config=gen_config)
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        for j, i in enumerate(batch):
            for seq in new_tokens[j * num_samples : (j + 1) * num_samples]:
                seq = _strip_after_eos(seq, tokenizer.eos_token_id)
                ids[i].append(seq)
                texts[i].append(tokenizer.decode(seq, skip_special_tokens=True).strip())
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    return Generations(texts=texts, token_ids=ids)


def _strip_after_eos(seq: list[int], eos: int) -> list[int]:
    return seq[: seq.index(eos)] if eos in seq else seq


class VLLMModel:
    """The base model served by vLLM with the run's LoRA adapter (optional GPU backend)."""

    def __init__(self, base_model: str, adapter_path: str | None, lora_rank: int, tensor_parallel_size: int = 1,
                 gpu_usage: float = 0.9, max_model_len: int | None = None):  # fmt: skip
        try:
            from vllm import LLM
        except ImportError as e:
            raise ConfigError(
                "inference_backend='vllm' needs vLLM: pip install -e '.[vllm]' (GPU only; it brings its own torch)"
            ) from e
        self.adapter_path = adapter_path
        self.llm = LLM(
            model=base_model,
            enable_lora=adapter_path is not None,
            max_lora_rank=max(lora_rank, 8),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_usage,
            max_model_len=max_model_len,
            dtype="bfloat16",
        )

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, num_samples: int, seed: int,
                 sampling: dict[str, Any]) -> Generations:  # fmt: skip
        """`prompts` are token ids, built as training built them (vLLM would add a BOS to text)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        params = SamplingParams(n=num_samples, max_tokens=max_new_tokens, seed=seed, **sampling)
        lora = LoRARequest("adapter", 1, self.adapter_path) if self.adapter_path else None
        inputs = [{"prompt_token_ids": ids} for ids in prompts]
        outputs = self.llm.generate(inputs, params, lora_request=lora)
        return Generations(
            texts=[[c.text.strip() for c in o.outputs] for o in outputs],
            token_ids=[[list(c.token_ids) for c in o.outputs] for o in outputs],
        )
