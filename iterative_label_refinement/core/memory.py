"""The peak GPU memory per device of each pipeline step, from the model's architecture alone.

Pure functions on plain data (`Arch`, `Step`, `Hardware`), like core/refinement.py; only `arch_of`
touches a model: it builds it from its config on the meta device, so no weight is read or allocated.
`experiments.plan` turns a pipeline's settings into its steps and refuses a step that cannot fit.

Notation: P parameters, P_t trainable ones, L layers, h hidden size, h_kv = kv heads x head dim,
I the MLP's intermediate size, V the output width (the vocabulary; 2 for the evaluator's classifier),
R sequences per forward on one device, S tokens per sequence, N GPUs; w the weights' bytes per
parameter, a the activations' bytes per value (2 under bf16 autocast, 4 in fp32). Sizes are bytes.

Training (`train_memory`), on one device:
    weights     = P x w            w = 4 for a full fine-tune (fp32 master weights), 2 for LoRA's
                                   frozen bf16 base (4 without bf16)
    cast        = P x 2            full fine-tune under bf16 autocast: the bf16 copy of each weight
                                   that autocast makes in the forward stays alive for the backward
    adapters    = P_t x 4 (+ the same again for DPO's frozen reference adapter), LoRA only: PEFT
                  keeps adapters (and a classifier's head, trained in full) in fp32
                  LoRA's P_t = sum over adapted Linear layers of r x (in + out), + the head in full
    grads       = P_t x 4
    optimizer   = P_t x s          s = 8 for AdamW (two fp32 moments), 4 for RMSprop (one fp32
                                   average); Adafactor keeps one fp32 row and column average per
                                   matrix: 4 x sum(rows + cols), and 4 x n for vectors
    activations = L x R x S x A x a                    without gradient checkpointing
                = L x R x S x h x a + R x S x A x a    with it (each layer's input is kept; one
                                                       layer's activations are rebuilt at a time)
                  A = 11h + 4h_kv + 4I values per token and layer kept for the backward: two norms'
                  inputs and outputs (4h); q, its rotate_half and the rotated q (3h); k, its
                  rotate_half, the rotated k, and v (4h_kv); k and v repeated to every head (2h);
                  attention's output and its contiguous copy for o_proj (2h); the MLP's gate, up,
                  activated gate and product (4I). Flash/SDPA attention keeps no S x S scores
    logits      = R x S x V x 12   three fp32 tensors of the logits' shape at the backward of the
                                   loss: the log-softmax kept for it, its gradient, and the gradient
                                   it hands the logits
Generation (`generate_memory`): weights in their dtype, the KV cache 2 x L x h_kv x R x (S + new)
x a (R = prompts x max(beams, samples)), the prompt's pass through one layer R x S x (4h + 2I) x a,
and the last position's logits R x V x 12 (fp32 logits, their log-softmax, the processed scores).
vLLM (`vllm_memory`): it reserves gpu_usage x the GPU's memory on each of its tensor-parallel GPUs.
A forward pass (`forward_memory`, the evaluator scoring pairs): weights + R x S x (4h + 2I) x a.

Over N GPUs: `device_map="auto"` splits the layers, so each device holds 1/N of all but the logits,
which the last device adds in full; DDP keeps a whole replica per device (R is the minibatch per
device); FSDP shards weights, adapters, grads and optimizer states 1/N and gathers one layer's
weights at a time, while activations and logits stay per device. Every device adds `CUDA_CONTEXT`,
and all of it is counted once per process sharing the GPU (two half-data runs at once: PARALLEL=1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from iterative_label_refinement.core.settings import ConfigError

GB = 1e9  # GPU sizes and needs are in decimal gigabytes, as GPU makers state them ("80 GB")
# The CUDA context, cuBLAS workspaces and kernels of one process: commonly 0.5-1 GB (not measured here)
CUDA_CONTEXT = 1.0 * GB
FP32, BF16 = 4, 2  # bytes per value
# fp32 tensors of the logits' shape alive at the loss's backward: the log-softmax, its grad, the logits' grad
LOGIT_COPIES = 3
ACT_H, ACT_KV, ACT_I = 11, 4, 4  # values kept per token and layer for the backward, in units of h, h_kv and I (above)
PASS_H, PASS_I = 4, 2  # values one layer's forward holds at once without a backward: residual, norm, q, out; gate, up
# Optimizer state bytes per trainable parameter (Adafactor's factored state is computed per matrix).
OPTIMIZER_BYTES = {"adamw": 2 * FP32, "rmsprop": FP32}
PARALLEL = ("single", "device_map", "ddp", "fsdp")


@dataclass(frozen=True)
class Arch:
    """What memory depends on in a model: counts and shapes read from its config (`arch_of`)."""

    name: str
    params: int  # every parameter, tied embeddings once
    layers: int
    hidden: int
    kv_width: int  # kv heads x head dim: one token's keys (or values) in one layer
    intermediate: int
    outputs: int  # the width of the logits: the vocabulary, or 2 for the evaluator's classifier
    lora_shapes: tuple[tuple[int, int], ...]  # (in, out) of every Linear layer LoRA adapts
    head_params: int  # a classifier's head, trained in full beside LoRA (0 for a causal LM)
    matrices: tuple[tuple[int, int], ...]  # shapes of every 2-D parameter (Adafactor's state)
    vectors: int  # parameters in 1-D tensors (norms, biases)


@dataclass(frozen=True)
class Step:
    """One step of a pipeline, as memory sees it."""

    name: str
    model: str
    kind: str  # "train", "generate", "vllm" or "forward"
    tokens: int  # S: tokens per sequence (prompt + answer when training; the prompt when generating)
    rows: int = 1  # R: sequences per forward on one device
    new_tokens: int = 0
    lora_rank: int = 0  # 0: a full fine-tune
    optim: str = "adamw"
    gradient_checkpointing: bool = False
    reference_adapter: bool = False  # DPO: a frozen copy of the adapter beside the trained one
    gpu_usage: float = 0.9  # vLLM's share of each GPU
    tensor_parallel: int = 1  # vLLM's GPUs
    parallel: str = "single"
    weights_fp32: bool = False  # generation right after a full fine-tune: the fp32 weights it trained
    processes: int = 1  # processes sharing each GPU
    classifier: bool = False  # the evaluator's 2-label classifier (its model is built as one)


@dataclass(frozen=True)
class Hardware:
    gpus: int
    gpu_bytes: float
    bf16: bool = True  # Ampere or newer; before it, weights and activations stay fp32 (core.models)


def trainable_params(arch: Arch, lora_rank: int) -> int:
    """P_t: every parameter in a full fine-tune; LoRA's r x (in + out) per adapted layer, and the head."""
    if lora_rank == 0:
        return arch.params
    return lora_rank * sum(i + o for i, o in arch.lora_shapes) + arch.head_params


def optimizer_bytes(arch: Arch, optim: str, lora_rank: int) -> int:
    """The optimizer's state for the trainable parameters (see the module docstring)."""
    if optim in OPTIMIZER_BYTES:
        return OPTIMIZER_BYTES[optim] * trainable_params(arch, lora_rank)
    if optim != "adafactor":
        raise ConfigError(f"Unknown optimizer {optim!r}. Valid: {sorted([*OPTIMIZER_BYTES, 'adafactor'])}")
    if lora_rank == 0:
        return FP32 * (sum(r + c for r, c in arch.matrices) + arch.vectors)
    adapters = sum((lora_rank + i) + (o + lora_rank) for i, o in arch.lora_shapes)  # A: r x in, B: out x r
    return FP32 * (adapters + arch.head_params)


def _sharded(parts: dict[str, float], step: Step, hw: Hardware, arch: Arch, weight_bytes: int) -> dict[str, float]:
    """Per-device parts over hw.gpus GPUs by the step's parallelism (module docstring), + the context."""
    n = hw.gpus
    out = dict(parts)
    if step.parallel == "device_map" and n > 1:
        out = {k: v if k == "logits" else v / n for k, v in parts.items()}
    elif step.parallel == "fsdp" and n > 1:
        for k in ("weights", "cast", "adapters", "grads", "optimizer"):
            if k in out:
                out[k] = parts[k] / n
        out["gathered layer"] = arch.params / arch.layers * weight_bytes
    elif step.parallel not in PARALLEL:
        raise ConfigError(f"Unknown parallelism {step.parallel!r}. Valid: {list(PARALLEL)}")
    out["cuda context"] = CUDA_CONTEXT
    out = {k: v * step.processes for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


def train_memory(arch: Arch, step: Step, hw: Hardware) -> dict[str, float]:
    """Peak bytes per device of one training step, by part (module docstring), with "total"."""
    act = BF16 if hw.bf16 else FP32
    full = step.lora_rank == 0
    weight_bytes = FP32 if full or not hw.bf16 else BF16
    p_t = trainable_params(arch, step.lora_rank)
    tokens = step.rows * step.tokens
    per_layer = ACT_H * arch.hidden + ACT_KV * arch.kv_width + ACT_I * arch.intermediate
    if step.gradient_checkpointing:
        activations = (arch.layers * arch.hidden + per_layer) * tokens * act
    else:
        activations = arch.layers * per_layer * tokens * act
    parts = {"weights": arch.params * weight_bytes}
    if full and hw.bf16:
        parts["cast"] = arch.params * BF16
    if not full:
        parts["adapters"] = p_t * FP32 * (2 if step.reference_adapter else 1)
    parts |= {
        "grads": p_t * FP32,
        "optimizer": optimizer_bytes(arch, step.optim, step.lora_rank),
        "activations": activations,
        "logits": tokens * arch.outputs * FP32 * LOGIT_COPIES,
    }
    return _sharded(parts, step, hw, arch, weight_bytes)


def _weight_bytes(step: Step, hw: Hardware) -> int:
    return FP32 if step.weights_fp32 or not hw.bf16 else BF16


def generate_memory(arch: Arch, step: Step, hw: Hardware) -> dict[str, float]:
    """Peak bytes per device of generation with the Hugging Face backend (module docstring)."""
    act = BF16 if hw.bf16 else FP32
    w = _weight_bytes(step, hw)
    parts = {
        "weights": arch.params * w,
        "kv cache": 2 * arch.layers * arch.kv_width * step.rows * (step.tokens + step.new_tokens) * act,
        "prompt pass": step.rows * step.tokens * (PASS_H * arch.hidden + PASS_I * arch.intermediate) * act,
        "logits": step.rows * arch.outputs * FP32 * LOGIT_COPIES,
    }
    return _sharded(parts, step, hw, arch, w)


def forward_memory(arch: Arch, step: Step, hw: Hardware) -> dict[str, float]:
    """Peak bytes per device of a forward pass without gradients (the evaluator scoring pairs)."""
    act = BF16 if hw.bf16 else FP32
    w = _weight_bytes(step, hw)
    parts = {
        "weights": arch.params * w,
        "activations": step.rows * step.tokens * (PASS_H * arch.hidden + PASS_I * arch.intermediate) * act,
        "logits": step.rows * step.tokens * arch.outputs * FP32,
    }
    return _sharded(parts, step, hw, arch, w)


def vllm_memory(arch: Arch, step: Step, hw: Hardware) -> dict[str, float]:
    """vLLM reserves gpu_usage of each of its GPUs; its weights must fit in that (the rest is KV cache)."""
    reserved = step.gpu_usage * hw.gpu_bytes
    weights = arch.params * BF16 / step.tensor_parallel
    return {"weights": weights, "kv cache": max(reserved - weights, 0.0), "total": max(reserved, weights)}


STEP_MEMORY = {"train": train_memory, "generate": generate_memory, "forward": forward_memory, "vllm": vllm_memory}


def step_memory(arch: Arch, step: Step, hw: Hardware) -> dict[str, float]:
    if step.kind not in STEP_MEMORY:
        raise ConfigError(f"Unknown step kind {step.kind!r}. Valid: {list(STEP_MEMORY)}")
    return STEP_MEMORY[step.kind](arch, step, hw)


def gpus_used(step: Step, hw: Hardware) -> int:
    """How many of the GPUs the step runs on: all of them when it shards or replicates, vLLM's own."""
    if step.kind == "vllm":
        return step.tensor_parallel
    return hw.gpus if step.parallel != "single" else 1


def fits(arch: Arch, step: Step, hw: Hardware) -> bool:
    if gpus_used(step, hw) > hw.gpus:
        return False
    if step.kind == "vllm":  # the weights must fit in the reservation
        return step_memory(arch, step, hw)["weights"] + CUDA_CONTEXT <= step.gpu_usage * hw.gpu_bytes
    return step_memory(arch, step, hw)["total"] <= hw.gpu_bytes


MAX_GPUS = 8  # the GPUs of one node: model parallelism beyond one node is not offered
FIX_LORA_RANK = 64  # the pipelines' LoRA rank


def fixes(arch: Arch, step: Step, hw: Hardware) -> list[str]:
    """The changes, each alone, that make a step fit, in words a user can act on; [] when none does."""
    out = []
    if step.kind == "vllm":
        for tp in range(step.tensor_parallel + 1, MAX_GPUS + 1):
            if fits(arch, replace(step, tensor_parallel=tp), replace(hw, gpus=max(hw.gpus, tp))):
                return [f"vLLM over {tp} GPUs (tensor_parallel_size={tp}), or --inference_backend=hf"]
        return ["--inference_backend=hf"]
    tries: list[tuple[str, Step, Hardware]] = []
    if step.kind == "train" and step.lora_rank == 0:
        tries.append((f"LoRA (--lora_rank={FIX_LORA_RANK})", replace(step, lora_rank=FIX_LORA_RANK), hw))
    if step.kind == "train" and not step.gradient_checkpointing:
        tries.append(("gradient checkpointing (gradient_checkpointing: true in $ILR_MODELS_FILE)",
                      replace(step, gradient_checkpointing=True), hw))  # fmt: skip
    if step.processes > 1:
        tries.append(("PARALLEL=0 (one half-data run at a time)", replace(step, processes=1), hw))
    if step.rows > 1:
        what = "--minibatch_size_per_device=1" if step.kind == "train" else "a smaller --eval_batch_size"
        tries.append((what, replace(step, rows=1 if step.kind == "train" else max(1, step.rows // 4)), hw))
    for n in range(max(hw.gpus, 1) + (step.parallel != "single"), MAX_GPUS + 1):
        parallel = step.parallel if step.parallel != "single" else "device_map"
        tries.append((f"{n} GPUs (model_parallel: true in $ILR_MODELS_FILE)" if step.parallel == "single" else
                      f"{n} GPUs", replace(step, parallel=parallel), replace(hw, gpus=n)))  # fmt: skip
    seen_gpus = False
    for what, s, h in tries:
        if fits(arch, s, h):
            if what[0].isdigit():  # the fewest GPUs that fit, once
                if seen_gpus:
                    continue
                seen_gpus = True
            out.append(f"{what}: {step_memory(arch, s, h)['total'] / GB:.1f} GB")
    return out


def refusal(arch: Arch, step: Step, hw: Hardware) -> str:
    """The one line that refuses a step: the step, its need, the GPU size, and the fixes."""
    need = step_memory(arch, step, hw)["total"] / GB
    gpus = f"{hw.gpus} x {hw.gpu_bytes / GB:.1f} GB GPU" + ("s" if hw.gpus > 1 else "")
    what = f"needs {need:.1f} GB per GPU" if step.kind != "vllm" else (
        f"holds {step_memory(arch, step, hw)['weights'] / GB:.1f} GB of weights per GPU in vLLM's "
        f"{step.gpu_usage:g} share")  # fmt: skip
    if gpus_used(step, hw) > hw.gpus:
        what = f"runs on {gpus_used(step, hw)} GPUs"
    found = fixes(arch, step, hw)
    fix = "; fix: " + ", or ".join(found) if found else "; no single change fits: use larger GPUs"
    return f"step '{step.name}' ({step.model}) {what}, more than {gpus}{fix}"


def describe(step: Step) -> str:
    """The step's settings in a few words (the plan's table)."""
    if step.kind == "train":
        how = "full fine-tune" if step.lora_rank == 0 else f"LoRA r={step.lora_rank}"
        gc = ", grad. ckpt" if step.gradient_checkpointing else ""
        return f"{how}, {step.optim}, {step.rows} x {step.tokens} tokens{gc}"
    if step.kind == "vllm":
        return f"vLLM, gpu_usage {step.gpu_usage:g}, tp {step.tensor_parallel}"
    if step.kind == "generate":
        return f"{step.rows} sequences x ({step.tokens} + {step.new_tokens}) tokens"
    return f"{step.rows} x {step.tokens} tokens"


# ---------------------------------------------------------------------------------------------
# Architectures, from a config on the meta device
# ---------------------------------------------------------------------------------------------


def arch_from_config(name: str, hf_config: Any, kind: str = "causal_lm", lora_target: Any = "all-linear") -> Arch:
    """The `Arch` of a transformers config, from the model built on the meta device (no memory).

    kind: "causal_lm" or "classifier" (2 labels: the head is trained in full beside LoRA).
    lora_target: the modules LoRA adapts (`ModelConfig.lora_target_modules`), by PEFT's rule.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from iterative_label_refinement.core.models import CLASSIFIER_HEADS, LINEAR, layer_kind, lora_targets

    if kind == "classifier":
        hf_config.num_labels = 2
    auto_cls = AutoModelForSequenceClassification if kind == "classifier" else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto_cls.from_config(hf_config)
    modules = dict(model.named_modules())
    output = model.get_output_embeddings() if kind == "causal_lm" else None
    head = next((n for n, m in modules.items() if m is output), None) if output is not None else None
    kinds = {n: layer_kind(m) for n, m in modules.items()}
    protected = CLASSIFIER_HEADS if kind == "classifier" else ()
    targets = lora_targets(kinds, lora_target, head, protected)
    params = list(model.parameters())  # tied weights once
    text = getattr(hf_config, "text_config", hf_config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    score = [m for n, m in modules.items() if n.split(".")[-1] in CLASSIFIER_HEADS] if kind == "classifier" else []
    return Arch(
        name=name,
        params=sum(p.numel() for p in params),
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        kv_width=(getattr(text, "num_key_value_heads", None) or heads) * head_dim,
        intermediate=text.intermediate_size,
        outputs=2 if kind == "classifier" else text.vocab_size,
        lora_shapes=tuple(
            (modules[n].in_features, modules[n].out_features) for n in targets if kinds[n] == LINEAR
        ),  # fmt: skip
        head_params=sum(p.numel() for m in score for p in m.parameters()),
        matrices=tuple(tuple(p.shape) for p in params if p.dim() == 2),
        vectors=sum(p.numel() for p in params if p.dim() == 1),
    )


def arch_of(model_name: str, kind: str = "causal_lm") -> Arch:
    """The `Arch` of a model of the project: a registered model from its published config (shipped in
    `core.models.PUBLISHED_CONFIGS`, so nothing is downloaded), else its config.json (a local folder,
    a tiny model, or the hub's)."""
    from transformers import AutoConfig

    from iterative_label_refinement.core.models import PUBLISHED_CONFIGS, get_model_config, resolve_model_path

    cfg = get_model_config(model_name)
    if model_name in PUBLISHED_CONFIGS and not cfg.is_tiny:
        published = dict(PUBLISHED_CONFIGS[model_name])
        hf_config = AutoConfig.for_model(published.pop("model_type"), **published)
    else:
        try:
            hf_config = AutoConfig.from_pretrained(resolve_model_path(model_name),
                                                   trust_remote_code=cfg.trust_remote_code)  # fmt: skip
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot read the config of {model_name} to plan its memory: {first}") from None
    return arch_from_config(model_name, hf_config, kind, cfg.lora_target_modules)
