"""Small helpers shared by every part of the project: settings, seeding, logging, files (path names: `core.layout`)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import random
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PROMPT_TEMPLATE = "USER:\n{question}\n\nASSISTANT:\n"

# The comparison evaluator reads this: "having given answer (A), do you accept changing it to (B)?"
EVALUATOR_TEMPLATE = (
    "Question:\n{question}\n\n"
    "Answer (A):\n{answer_a}\n\n"
    "Answer (B):\n{answer_b}\n\n"
    "You gave answer (A). Do you accept changing it to answer (B)?"
)
ACCEPT, REJECT = "<accept>", "<reject>"


def format_prompt(question: str) -> str:
    """The SFT prompt around a question; the answer follows directly."""
    return PROMPT_TEMPLATE.format(question=question)


def format_evaluator_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return EVALUATOR_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b)


# ---------------------------------------------------------------------------------------------
# Logging and seeding
# ---------------------------------------------------------------------------------------------


def get_logger(name: str = "ilr") -> logging.Logger:
    """A logger with a level from $ILR_LOG_LEVEL (default INFO), printing to stderr."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("ILR_LOG_LEVEL", "INFO").upper())
        logger.propagate = False
    return logger


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Paths and settings
# ---------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """Bad user input: the message names the bad value and what is valid."""


def load_env() -> None:
    """Read `.env` from the working directory (or a parent) without overriding the environment."""
    from dotenv import find_dotenv, load_dotenv

    load_dotenv(find_dotenv(usecwd=True), override=False)


def get_save_path(results_folder: str | None = None) -> Path:
    """`results_folder`, else $ILR_SAVE_PATH (from the environment or `.env`)."""
    if results_folder:
        source, path = "--results_folder", results_folder
    else:
        load_env()
        source, path = "ILR_SAVE_PATH", os.environ.get("ILR_SAVE_PATH")
    if not path:
        raise ConfigError(
            "No results folder: pass --results_folder=<dir> or set ILR_SAVE_PATH in the environment "
            "or in .env (see .env.example)."
        )
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"{source}={path} is a file, not a folder: name a results folder")
    return Path(path)


def get_data_path() -> Path:
    """Where prepared task data lives: $ILR_DATA_PATH, default `data/`."""
    load_env()
    return Path(os.environ.get("ILR_DATA_PATH", "data"))


def get_cache_path() -> Path:
    """Where offline tiny models are built once: $ILR_CACHE_PATH, default ~/.cache/iterative_label_refinement."""
    load_env()
    default = Path.home() / ".cache" / "iterative_label_refinement"
    return Path(os.environ.get("ILR_CACHE_PATH", default))


# ---------------------------------------------------------------------------------------------
# Training options (validated before a run writes anything)
# ---------------------------------------------------------------------------------------------

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")  # core.train.dpo_loss
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


# ---------------------------------------------------------------------------------------------
# Files that last: JSON and atomic directory writes
# ---------------------------------------------------------------------------------------------


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temporary sibling, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    """A JSON file; a torn or foreign one is one line naming it (never a bare JSONDecodeError)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); remake it, or move it away") from None


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    os.replace(tmp, path)


def disk_full(e: BaseException) -> bool:
    """An OSError of a full disk, or safetensors' SafetensorError, whose text holds the OS error."""
    return getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(e)


@contextlib.contextmanager
def needing(nbytes: int, target: str | Path) -> Iterator[None]:
    """A write of about `nbytes` to `target`: a full disk (an OSError, or safetensors' os error 28)
    comes out as an OSError that says how much the write needed, for the CLI's one line."""
    try:
        yield
    except Exception as e:
        if not disk_full(e):
            raise
        size = f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"
        raise OSError(errno.ENOSPC, f"No space left on device (the write needs about {size})",
                      str(getattr(e, "filename", None) or target)) from e  # fmt: skip


def dataset_nbytes(dataset: Any) -> int:
    """The Arrow bytes of a Dataset, a DatasetDict, or a wrapper holding one as `.dd`."""
    dataset = getattr(dataset, "dd", dataset)
    if hasattr(dataset, "values"):
        return sum(dataset_nbytes(d) for d in dataset.values())
    return dataset.data.nbytes


def save_to_disk_atomic(dataset: Any, path: str | Path, records: dict[str, Any] | None = None) -> None:
    """`dataset.save_to_disk` into a temporary sibling, then swap it into place.

    Whatever kills the run, `path` never holds a half-written dataset, and an old one is never lost.
    `records` ({file name: object}) are JSON files written inside the dataset's folder before the
    swap, so they appear with it (provenance).

    The swap is `renameat2(RENAME_EXCHANGE)` where the system has it (Linux, local filesystems): one
    atomic step, so `path` holds the old dataset or the new one at every moment (a reader never finds
    none, and nothing needs undoing); the temporary name then holds the old one, deleted next. Elsewhere (other systems, some network filesystems) it is
    two renames, path -> `.<name>.<id>.old` and the new one -> path: a run killed between them leaves
    the old dataset only at `.old`, and the next write of `path` (or `recover_interrupted_write`)
    first puts it back. Leftover siblings of a killed run (a half-written `.tmp`, an old copy not yet
    deleted) are deleted then too; after an exception, Ctrl-C included, at once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        _recover(path)
        tmp = _sibling(path, "tmp")
        try:
            with needing(dataset_nbytes(dataset), tmp):
                dataset.save_to_disk(str(tmp))
            for name, obj in (records or {}).items():
                (tmp / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")
            if not path.exists() and not path.is_symlink():
                os.replace(tmp, path)
            elif not _exchange(tmp, path):
                os.replace(path, _sibling(path, "old"))
                os.replace(tmp, path)
        finally:  # also on Ctrl-C: put the old dataset back if it is not at `path`, delete the siblings
            _recover(path)


def recover_interrupted_write(path: str | Path) -> None:
    """Undo what a `save_to_disk_atomic` of `path` killed mid-way left: restore the old dataset to
    `path` if it is only at a `.old` sibling; delete leftover `.tmp`/`.old` siblings."""
    path = Path(path)
    if path.parent.is_dir():
        with _folder_lock(path.parent):
            _recover(path)


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.{kind}")


def _recover(path: Path) -> None:
    """Under `_folder_lock`, so no live write's siblings are among those found."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{32}}\.(tmp|old)")
    found = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    old = [p for p in found if p.name.endswith(".old")]
    if old and not path.exists() and not path.is_symlink():
        os.replace(old[0], path)  # one at most: writes of one folder never overlap
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Writes into one folder take turns: an flock on the folder, released even by a killed process.
    Where the filesystem has no flock, writes go unlocked: this project never writes one path from two
    processes at once (rank 0 owns a run's files)."""
    import fcntl  # POSIX only, as the renames above

    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step; False where the system or the filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:  # not Linux, or a C library before glibc 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2  # from <fcntl.h> and <linux/fs.h>
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the filesystem or kernel has no exchange
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


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


def save_model_dir(model: Any, tokenizer: Any, path: Path) -> None:
    """Write a model dir into a temporary sibling, then rename it into place (never half-written)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_once(path: Path, build: Any, what: str) -> Path:
    """`build(path)` unless `path` already holds a model; a file lock makes concurrent callers build once."""
    if not (path / "config.json").exists():
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not (path / "config.json").exists():
                get_logger(__name__).info("Building %s into %s (once)", what, path)
                build(path)
    return path


def clean_stale_tmp(folder: str | Path) -> None:
    """Remove temporary siblings left by a killed atomic write."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Tokenizer set-up: padding and end-of-answer tokens
# ---------------------------------------------------------------------------------------------


def setup_tokenizer(tokenizer: Any) -> Any:
    """pad = eos, left padding; callers always tokenise with `add_special_tokens=False`."""
    if tokenizer.eos_token is None:
        raise ConfigError(f"Tokenizer {tokenizer.name_or_path!r} has no eos token; one is required.")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    for attr in ("add_bos_token", "add_eos_token"):
        if hasattr(tokenizer, attr):
            try:
                setattr(tokenizer, attr, False)
            except (AttributeError, ValueError):
                pass
    return tokenizer
