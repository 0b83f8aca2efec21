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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from iterative_label_refinement.core.settings import ConfigError, get_logger

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


# The ranks a vLLM engine takes as `max_lora_rank` (vllm.config.lora's `MaxLoRARanks`): it refuses any other.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Free memory vLLM's engine finds below what this process measured: its engine core is a process of its
# own, whose CUDA context (some hundreds of MiB) exists before vLLM compares free memory with its share.
GIB = 2**30
VLLM_START_MARGIN = GIB


def check_vllm_lora_rank(rank: int, what: str) -> None:
    """Refuse a LoRA rank vLLM cannot serve (0, a full fine-tune, serves no adapter); `what` names where it came from."""
    if rank and rank not in VLLM_LORA_RANKS:
        raise ConfigError(f"{what}: vLLM serves LoRA ranks {list(VLLM_LORA_RANKS)} only, not {rank}; train with one of "
                          "them (or 0, a full fine-tune), or use --inference_backend=hf")  # fmt: skip


def adapter_rank(adapter_path: str | Path) -> int:
    """The rank `r` of the LoRA adapter saved in `adapter_path`."""
    from iterative_label_refinement.core.files import read_json

    return read_json(Path(adapter_path, "adapter_config.json"))["r"]


def vllm_need(model: Any) -> int:
    """Bytes vLLM needs at the least to serve `model` (a trained model in hand, LoRA or full) on one GPU:
    its base weights in vLLM's dtype, plus the KV cache of one sequence of the model's full length,
    2 (K and V) x layers x KV heads x head dim x bytes per value x max_position_embeddings.

    With less, the engine cannot start; with this much it starts, with room for one sequence at a time."""
    import torch

    from iterative_label_refinement.core.devices import vllm_dtype

    size = torch.empty(0, dtype=getattr(torch, vllm_dtype())).element_size()
    weights = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    c = model.config.get_text_config()
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_cache = 2 * c.num_hidden_layers * kv_heads * head_dim * size * c.max_position_embeddings
    return weights * size + kv_cache


def vllm_memory_share(free: int, total: int, need: int, cap: float) -> float:
    """vLLM's `gpu_memory_utilization` u on a GPU with `free` of `total` bytes free now: the largest u <= cap,
    in hundredths, with u x total <= free - VLLM_START_MARGIN (vLLM refuses to start when u x total exceeds
    the free memory it finds). ConfigError, in one line, when u x total < `need` (see `vllm_need`)."""
    share = min(cap, math.floor(100 * (free - VLLM_START_MARGIN) / total) / 100)
    if share * total < need:
        raise ConfigError(f"vLLM cannot start: the GPU has {free / GIB:.1f} GiB free of {total / GIB:.1f} GiB and "
                          f"the engine needs {need / GIB:.1f} GiB (the weights and one full-length sequence's KV "
                          f"cache) plus {VLLM_START_MARGIN / GIB:.0f} GiB for its process; free the GPU of other "
                          "processes or use --inference_backend=hf (the trained model is saved: a rerun reuses it)")  # fmt: skip
    return share


def vllm_gpu_usage(need: int, cap: float, n_gpus: int = 1) -> float:
    """The `gpu_memory_utilization` (at most `cap`) that vLLM can start with now, on each of GPUs
    0..n_gpus-1 (tensor parallelism: each holds 1/n_gpus of `need`).

    Call it once the trained model has no reference left: what the collector frees goes back to
    PyTorch's cache, and the cache goes back to the GPU, before the free memory is measured."""
    import gc

    import torch

    if not torch.cuda.is_available():
        raise ConfigError("inference_backend='vllm' needs a CUDA GPU; on this machine use --inference_backend=hf")
    gc.collect()
    torch.cuda.empty_cache()
    return min(vllm_memory_share(*torch.cuda.mem_get_info(i), need // n_gpus, cap) for i in range(n_gpus))


class VLLMModel:
    """The model served by vLLM on GPU: the base with the run's LoRA adapter, or a fully trained model.

    model: the base model's folder, or (adapter_path None) the run dir holding the full trained weights.
    """

    def __init__(self, model: str, adapter_path: str | None, tensor_parallel_size: int = 1, gpu_usage: float = 0.9,
                 max_model_len: int | None = None):  # fmt: skip
        try:
            from vllm import LLM
        except ImportError as e:
            raise ConfigError(
                "inference_backend='vllm' needs vLLM: run `make gpu-setup` (GPU only; see requirements-gpu.txt)"
            ) from e
        from iterative_label_refinement.core.devices import vllm_dtype

        lora: dict[str, Any] = {}
        if adapter_path is not None:
            rank = adapter_rank(adapter_path)
            check_vllm_lora_rank(rank, f"the LoRA adapter {adapter_path}")
            lora = dict(enable_lora=True, max_lora_rank=rank)
        self.adapter_path = adapter_path
        self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_usage,
                       max_model_len=max_model_len, dtype=vllm_dtype(), **lora)  # fmt: skip

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
