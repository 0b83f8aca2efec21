"""The model registry and the one loader every model goes through.

A registered name is either a Hugging Face hub id (loaded with `from_pretrained`) or an offline
tiny model, built once into the cache directory and then loaded by exactly the same
`from_pretrained` code. Any local model directory is accepted as a model name too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.common import ConfigError, get_cache_path, get_logger, setup_tokenizer

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """What the project needs to know about a base model."""

    name: str
    default_lr: float
    default_dpo_lr: float
    evaluator_lr: float = 1e-6  # learning rate of the comparison evaluator built on this base
    default_optimizer: str = "adamw"  # SFT optimizer; DPO rounds use `dpo_optimizer`
    dpo_optimizer: str = "rmsprop"
    eval_batch_size: int = 32  # prompts per generation batch
    minibatch_size_per_device: int = 1
    gradient_checkpointing: bool = True
    model_parallel: bool = False  # shard one model over all visible GPUs (device_map="auto")
    tensor_parallel_size: int = 1  # vLLM inference
    lora_target_modules: str | list[str] = "all-linear"
    custom_kwargs: dict[str, Any] = field(default_factory=dict)  # extra from_pretrained kwargs
    trust_remote_code: bool = False  # off unless a model explicitly needs it (SPEC §12)
    build: Callable[[Path], None] | None = None  # offline tiny models: writes a model dir
    build_id: str = ""  # changes whenever the build recipe changes, so stale caches are not reused

    @property
    def is_tiny(self) -> bool:
        return self.build is not None


MODELS_DICT: dict[str, ModelConfig] = {}


def register_model(config: ModelConfig) -> ModelConfig:
    MODELS_DICT[config.name] = config
    return config


register_model(ModelConfig(name="google/gemma-2b", default_lr=5e-4, default_dpo_lr=5e-6, evaluator_lr=1e-6))
register_model(ModelConfig(name="mistralai/Mistral-7B-v0.1", default_lr=1e-4, default_dpo_lr=1e-6, evaluator_lr=1e-6))
register_model(
    ModelConfig(
        name="meta-llama/Meta-Llama-3-70B",
        default_lr=1e-4,
        default_dpo_lr=1e-6,
        default_optimizer="adafactor",
        eval_batch_size=8,
        model_parallel=True,
        tensor_parallel_size=2,
    )
)


def get_model_config(model_name: str) -> ModelConfig:
    """The registered config, or sensible defaults for a local model directory."""
    if model_name in MODELS_DICT:
        return MODELS_DICT[model_name]
    path = Path(model_name)
    if path.is_dir() and (path / "config.json").exists():
        # A local directory: reuse the registered config of the model it was built as, if any.
        for cfg in MODELS_DICT.values():
            if cfg.name.split("/")[-1] == path.name and not cfg.is_tiny:
                return cfg
        return ModelConfig(name=str(path), default_lr=1e-4, default_dpo_lr=1e-6, gradient_checkpointing=False)
    raise ConfigError(
        f"Unknown model {model_name!r}. Valid: {sorted(MODELS_DICT)} or a local model directory containing config.json."
    )


def resolve_model_path(model_name: str) -> str:
    """The path or hub id that `from_pretrained` gets; builds a tiny model on first use."""
    cfg = get_model_config(model_name)
    if not cfg.is_tiny:
        return cfg.name
    path = get_cache_path() / "tiny" / f"{cfg.name}-{cfg.build_id}"
    if not (path / "config.json").exists():
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not (path / "config.json").exists():
                logger.info("Building tiny model %s into %s (once)", cfg.name, path)
                cfg.build(path)
    return str(path)


def default_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype() -> torch.dtype:
    """bf16 on CUDA, float32 on CPU."""
    import torch

    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def load_tokenizer(model_name: str) -> Any:
    from transformers import AutoTokenizer

    cfg = get_model_config(model_name)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_name), trust_remote_code=cfg.trust_remote_code)
    return setup_tokenizer(tokenizer)


def load_model(
    model_name: str,
    *,
    kind: str = "causal_lm",
    gradient_checkpointing: bool | None = None,
    device: torch.device | str | None = None,
    dropout: bool = True,
    **kwargs: Any,
) -> torch.nn.Module:
    """Load any model of the project: registered, tiny or a local directory.

    kind: "causal_lm" or "classifier" (a 2-way sequence classifier, for the evaluator).
    device: where to put it; None means CUDA when present, else CPU (ignored with model_parallel,
    which shards the model over all GPUs).
    dropout: False sets every dropout probability in the config to 0.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = get_model_config(model_name)
    path = resolve_model_path(model_name)
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if not dropout:
        for key, value in hf_config.to_dict().items():
            if "dropout" in key and isinstance(value, float):
                setattr(hf_config, key, 0.0)
    load_kwargs: dict[str, Any] = dict(cfg.custom_kwargs)
    load_kwargs.update(kwargs)
    load_kwargs.setdefault("dtype", default_dtype())
    if cfg.model_parallel and torch.cuda.device_count() > 1:
        load_kwargs.setdefault("device_map", "auto")
    if kind == "classifier":
        hf_config.num_labels = 2
        auto_cls = AutoModelForSequenceClassification
    elif kind == "causal_lm":
        auto_cls = AutoModelForCausalLM
    else:
        raise ConfigError(f"Unknown model kind {kind!r}; valid: 'causal_lm', 'classifier'")
    model = auto_cls.from_pretrained(path, config=hf_config, trust_remote_code=cfg.trust_remote_code, **load_kwargs)
    if "device_map" not in load_kwargs:
        model.to(device or default_device())
    use_gc = cfg.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    if use_gc:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


# Register the offline tiny models (import at the end: they call `register_model`).
from iterative_label_refinement.core import tiny_models as _tiny_models  # noqa: E402, F401
