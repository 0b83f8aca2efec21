"""Training options, checked before a run writes anything: optimizers, learning-rate schedules, DPO
losses, and the files a run keeps its curves in."""

from __future__ import annotations

from iterative_label_refinement.core.settings import ConfigError

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")  # core.dpo.dpo_loss
# Every training run keeps its curves in its run dir (core.train.keep_curves): the log history, one
# record per logged step, and (--report_to=tensorboard, the default) the Trainer's TensorBoard event files.
TRAIN_LOG, TENSORBOARD_DIR = "train_log.jsonl", "tensorboard"
OPTIMIZERS = {"adamw": "adamw_torch", "adafactor": "adafactor", "rmsprop": "rmsprop"}
# name -> (transformers scheduler, whether warmup applies)
LR_SCHEDULES = {
    "cosine_warmup": ("cosine", True),
    "cosine_anneal_warmup": ("cosine_with_min_lr", True),
    "cosine": ("cosine", False),
    "linear": ("linear", True),
    "constant": ("constant_with_warmup", True),
}


def validate_optimizer(optim: str) -> None:
    if optim not in OPTIMIZERS:
        raise ConfigError(f"Unknown optimizer {optim!r}. Valid: {sorted(OPTIMIZERS)}")


def validate_schedule(lr_schedule: str, lr: float, warmup_ratio: float) -> None:
    """A known schedule that trains: lr > 0 and a warmup ratio in [0, 1]. With those, every run of
    at least one optimizer step has a step at the full lr (`core.train.warmup_steps`)."""
    if lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"Unknown lr_schedule {lr_schedule!r}. Valid: {sorted(LR_SCHEDULES)}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ConfigError(f"--lr must be a positive number (an lr of 0 trains nothing), got {lr!r}")
    if isinstance(warmup_ratio, bool) or not isinstance(warmup_ratio, (int, float)) or not 0 <= warmup_ratio <= 1:
        raise ConfigError(f"--warmup_ratio must be in [0, 1] (a fraction of the optimizer steps), got {warmup_ratio!r}")
