"""A run's saved model: where it lives in the run dir, whether it is there, loading and deleting it."""

from __future__ import annotations

import shutil
from pathlib import Path


def model_dir(run_dir: Path, dpo_round: bool) -> Path:
    return run_dir / "train_adapter" if dpo_round else run_dir


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
    if path.name == "train_adapter":
        shutil.rmtree(path, ignore_errors=True)


def load_trained(model_size: str, path: Path):
    """A saved run model: the base with its LoRA adapter, or a fully fine-tuned model dir."""
    from iterative_label_refinement.core.models import load_model

    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(model_size, gradient_checkpointing=False), str(path))
    return load_model(str(path), gradient_checkpointing=False)
