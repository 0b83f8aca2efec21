"""One entry point for answer generation: batched Hugging Face `generate`, or vLLM on GPU.

Greedy or beam search at temperature 0, sampling with `num_samples` answers per prompt otherwise.
Prompts are formatted with the SFT prompt template; answers come back without special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from iterative_label_refinement.core.common import ConfigError, format_prompt, get_logger

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
    seed: int = 0,
    backend: str = "hf",
    desc: str = "generate",
    vllm_options: dict[str, Any] | None = None,
) -> Generations:
    """Answer each question; `model` is a loaded model for "hf", a `VLLMModel` for "vllm"."""
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown inference backend {backend!r}. Valid: {list(BACKENDS)}")
    if num_samples > 1 and temperature <= 0:
        raise ConfigError(f"num_samples={num_samples} needs temperature > 0 (got {temperature})")
    prompts = [format_prompt(q) for q in questions]
    if backend == "vllm":
        return model.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                              num_samples=num_samples, seed=seed)  # fmt: skip
    return _generate_hf(model, tokenizer, prompts, max_new_tokens, batch_size, temperature, num_samples,
                        num_beams, seed, desc)  # fmt: skip


@torch.no_grad()
def _generate_hf(model, tokenizer, prompts, max_new_tokens, batch_size, temperature, num_samples, num_beams,
                 seed, desc) -> Generations:  # fmt: skip
    from transformers import GenerationConfig

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    do_sample = temperature > 0
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=None,
        top_k=None,
        num_beams=1 if do_sample else num_beams,
        num_return_sequences=num_samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    torch.manual_seed(seed)
    # Longest prompts first: batches of similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts: list[list[str]] = [[] for _ in prompts]
    ids: list[list[list[int]]] = [[] for _ in prompts]
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=len(order) <= batch_size):
        batch = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        out = model.generate(**enc, generation_config=gen_config)
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        for j, i in enumerate(batch):
            for seq in new_tokens[j * num_samples : (j + 1) * num_samples]:
                seq = _strip_after_eos(seq, tokenizer.eos_token_id)
                ids[i].append(seq)
                texts[i].append(tokenizer.decode(seq, skip_special_tokens=True))
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

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float, num_samples: int,
                 seed: int) -> Generations:  # fmt: skip
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        params = SamplingParams(n=num_samples, temperature=temperature, max_tokens=max_new_tokens, seed=seed)
        lora = LoRARequest("adapter", 1, self.adapter_path) if self.adapter_path else None
        # Tokenise exactly as training did: no special tokens added (vLLM would add a BOS otherwise).
        tokenizer = self.llm.get_tokenizer()
        inputs = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outputs = self.llm.generate(inputs, params, lora_request=lora)
        return Generations(
            texts=[[c.text for c in o.outputs] for o in outputs],
            token_ids=[[list(c.token_ids) for c in o.outputs] for o in outputs],
        )
