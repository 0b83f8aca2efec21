"""The processes of a launch (torchrun, `accelerate launch`), read from the variables the launchers
set; torch-free, since run-dir queries check batch sizes."""

from __future__ import annotations

import os

from iterative_label_refinement.core.settings import ConfigError


# The processes of a torchrun (DDP) launch; kept torch-free, since run-dir queries check batch sizes.
def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _accelerate_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def uses_fsdp() -> bool:
    """Whether `accelerate launch` started this process with an FSDP config."""
    return _accelerate_flag("ACCELERATE_USE_FSDP")


def refuse_unsupported_dpo_launcher() -> None:
    """DPO runs on one process, torchrun (DDP) and `accelerate launch` with DDP or FSDP version 2
    (configs/accelerate/). Refused, in one line: DeepSpeed (never run, not a dependency) and FSDP
    version 1 (PEFT's adapter switch for the reference pass toggles requires_grad inside FSDP1's
    flattened parameters), both read from the variables `accelerate launch` sets."""
    if _accelerate_flag("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError("DPO under DeepSpeed (accelerate launch with a DeepSpeed config) is not supported: use "
                          "torchrun or accelerate launch --config_file configs/accelerate/{ddp,fsdp}.yaml")  # fmt: skip
    if uses_fsdp() and os.environ.get("FSDP_VERSION") != "2":
        raise ConfigError(f"DPO under FSDP version {os.environ.get('FSDP_VERSION', '1')} is not supported: use "
                          "fsdp_version: 2 (accelerate launch --config_file configs/accelerate/fsdp.yaml)")  # fmt: skip


def accumulation_steps(batch_size: int, minibatch_size_per_device: int) -> int:
    """Gradient-accumulation steps that make `batch_size` from minibatches on every process."""
    per_step = minibatch_size_per_device * world_size()
    if batch_size % per_step:
        raise ConfigError(
            f"--batch_size={batch_size} is not a multiple of minibatch_size_per_device x processes "
            f"= {minibatch_size_per_device} x {world_size()} = {per_step}"
        )
    return batch_size // per_step
