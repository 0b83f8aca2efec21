"""A run's saved model: which weights made it, where it lives in the run dir, whether it is there, loading and deleting it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from iterative_label_refinement.core.layout import ADAPTER
from iterative_label_refinement.core.settings import ConfigError

if TYPE_CHECKING:
    from iterative_label_refinement.core.models import ModelConfig

# A run dir's commit point, written after every output (`experiments.main`): done when it is there.
DONE = "done.json"


def recorded_weights(record: dict) -> str | None:
    """The weights a run dir's `experiment_config.json` says it was made with: its `model_weights`, or,
    in a run recorded before that field, the tiny model's build dir it loaded (`.../tiny/<name>-<id>`).
    None: not recorded (a run of a hub model from before the field), nothing to compare."""
    if "model_weights" in record:
        return record["model_weights"]
    loaded_from = Path(record.get("model_loaded_from") or "")
    return loaded_from.name if loaded_from.parent.name == "tiny" else None


def same_weights(recorded: str, model_weights: str) -> bool:
    """A record names the current weights: the same id, or (a record from before folders were named by
    their real path) a path to the same folder."""
    if recorded == model_weights:
        return True
    return Path(recorded, "config.json").is_file() and os.path.realpath(recorded) == model_weights


# Moving the one run dir away is not enough: what later steps built on it (label sets in the weak
# run's dir, evaluator data) sits elsewhere in its results folder and would still be reused.
_STALE_ADVICE = "start another results folder, or pass --force_retrain=True to redo this run alone"


def check_same_weights(run_dir: Path, model_weights: str) -> None:
    """Refuse a run dir made with other weights under the same model name (a tiny model's new recipe):
    run dirs are named by model name, so its finished outputs or checkpoints would be reused as if
    the current weights had made them."""
    config = run_dir / "experiment_config.json"
    try:
        recorded = recorded_weights(json.loads(config.read_text())) if config.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ConfigError(f"{config} is not a run's JSON record ({e}); {_STALE_ADVICE}") from e
    if recorded is not None and not same_weights(recorded, model_weights):
        raise ConfigError(f"{run_dir} was made with the weights {recorded}, but the model now loads {model_weights}; "
                          f"{_STALE_ADVICE}")  # fmt: skip


def has_saved_model(path: Path) -> bool:
    return (
        (path / "adapter_config.json").exists()
        or (path / "model.safetensors").exists()
        or any(path.glob("model-*.safetensors"))
    )


def delete_saved_model(path: Path) -> None:
    """Remove model weights but keep the run's records (config, results, labels)."""
    for pattern in ("adapter_model.*", "adapter_config.json", "model*.safetensors", "model.safetensors.index.json"):
        for p in path.glob(pattern):
            p.unlink()
    if path.name == ADAPTER:
        shutil.rmtree(path, ignore_errors=True)


def load_trained(model: str | ModelConfig, path: Path):
    """A saved run model: the base `model` with its LoRA adapter, or a fully fine-tuned model dir."""
    from iterative_label_refinement.core.models import load_model

    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(model, gradient_checkpointing=False), str(path))
    return load_model(str(path), gradient_checkpointing=False)
