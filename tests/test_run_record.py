"""experiment_config.json says how the model was trained: LoRA targets and alpha, dtype, checkpointing."""

from __future__ import annotations

import json

import pytest
import torch

TOY = dict(ds_name="toy_arith", model_size="tiny-random")


def test_the_lora_recorded_is_the_one_add_lora_builds(run_config):
    from iterative_label_refinement.core.models import load_model
    from iterative_label_refinement.core.train import add_lora

    cfg = run_config(**TOY, lora_rank=8)
    record = cfg.to_json()
    built = add_lora(load_model("tiny-random", device="cpu"), 8, cfg.model.lora_target_modules).peft_config["default"]
    assert (record["lora_alpha"], built.lora_alpha, built.r) == (16, 16, 8)
    assert record["lora_target_modules"] == "all-linear" == cfg.model.lora_target_modules
    full = run_config(**TOY, lora_rank=0).to_json()  # a full fine-tune has no adapter
    assert (full["lora_target_modules"], full["lora_alpha"]) == (None, None)


def test_a_dpo_round_records_the_adapter_it_continues(run_config, tmp_path):
    """A DPO round trains the adapter at --dpo_path, whatever --lora_rank says: its r and alpha."""
    weak = tmp_path / "weak"
    weak.mkdir()
    (weak / "experiment_config.json").write_text(json.dumps({"model_size": "tiny-random", "round_id": 0}))
    (tmp_path / "prev").mkdir()
    adapter = {"r": 4, "lora_alpha": 32, "target_modules": ["v_proj", "q_proj"]}
    (tmp_path / "prev" / "adapter_config.json").write_text(json.dumps(adapter))
    cfg = run_config(**TOY, method="dpo0.10.15", round_id=1, lora_rank=64, weak_labels_path=str(weak),
                     dpo_path=str(tmp_path / "prev"), label_temp=0.7)  # fmt: skip
    record = cfg.to_json()
    assert (record["lora_alpha"], record["lora_target_modules"]) == (32, ["v_proj", "q_proj"])


@pytest.mark.parametrize(
    ("capability", "lora_rank", "dtype", "autocast"),
    [
        (None, 8, "float32", "no"),  # a CPU: float32, no autocast
        ((8, 0), 8, "bfloat16", "bf16"),  # LoRA on bf16 hardware: the frozen base in bf16
        ((8, 0), 0, "float32", "bf16"),  # a full fine-tune keeps float32 master weights under bf16 autocast
        ((7, 0), 8, "float32", "fp16"),  # before Ampere (bf16 only emulated): fp16 autocast, float32 weights
    ],
)
def test_the_dtype_and_autocast_recorded_follow_the_hardware(run_config, monkeypatch, capability, lora_rank, dtype,
                                                             autocast):  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # as torch says by emulation on a V100
    record = run_config(**TOY, lora_rank=lora_rank).to_json()
    assert (record["dtype"], record["mixed_precision"]) == (dtype, autocast)


def test_gradient_checkpointing_is_the_models(run_config):
    assert run_config(**TOY).to_json()["gradient_checkpointing"] is False  # a tiny model: activations are small
    # dry_run: a hub model's architecture (the LoRA-target check) cannot be read offline
    gemma = run_config(ds_name="gsm8k", model_size="google/gemma-2b", dry_run=True).to_json()
    assert gemma["gradient_checkpointing"] is True
