"""The device a process computes on, and the one dtype policy of every path, by the card's capability.

| hardware                          | autocast | frozen weights | trained weights | vLLM       |
| --------------------------------- | -------- | -------------- | --------------- | ---------- |
| CPU                               | no       | float32        | float32         | float32    |
| CUDA, compute capability < 8.0    | fp16     | float32        | float32         | float16    |
| CUDA, compute capability >= 8.0   | bf16     | bfloat16       | float32         | bfloat16   |

bf16 needs Ampere (compute capability 8.0): `torch.cuda.is_bf16_supported()` also says True on older
cards, where it is emulated (slowly), and vLLM refuses bfloat16 there. Every trained parameter is
float32, the master weights that autocast computes from: bf16 weights cannot absorb small updates
(the evaluator trains at lr 1e-6; on the real test model one AdamW step changed 0.18% of bf16
weights against 79% of fp32 ones: the `dtypes` step of benchmarks/gpu_check.sh, run on a CPU), and
fp16 autocast's gradient scaler refuses fp16 gradients. That covers full fine-tunes, LoRA adapters
and a classifier's new `score` head, which PEFT trains in full in the base's dtype
(`upcast_trainable`). Weights that are not trained (LoRA's base) stay bf16 where the card computes
in bf16, and float32 before Ampere: some models (Gemma) are known to overflow in fp16. vLLM serves in
the autocast dtype, as its own "auto" falls back to float16 for bf16 models on pre-Ampere cards.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BF16_CAPABILITY = (8, 0)  # Ampere: the first compute capability with native bf16


def default_device() -> torch.device:
    """This process's GPU (LOCAL_RANK's under torchrun, so ranks do not pile onto GPU 0), else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def mixed_precision() -> str:
    """The autocast: "bf16" on CUDA of compute capability >= 8.0, "fp16" on older CUDA, else "no"."""
    import torch

    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.get_device_capability(default_device()) >= BF16_CAPABILITY else "fp16"


def default_dtype(full_finetune: bool = False) -> torch.dtype:
    """The dtype weights load in: float32 when they are all trained (`full_finetune`), or without bf16
    autocast; bfloat16 for a frozen base under bf16 autocast (see the table above)."""
    import torch

    if full_finetune or mixed_precision() != "bf16":
        return torch.float32
    return torch.bfloat16


def vllm_dtype() -> str:
    """The dtype vLLM serves in: the autocast's, float32 without one."""
    return {"bf16": "bfloat16", "fp16": "float16", "no": "float32"}[mixed_precision()]


def upcast_trainable(model: torch.nn.Module) -> torch.nn.Module:
    """Every trainable parameter in float32 (the master weights), whatever dtype its module loaded in."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model
