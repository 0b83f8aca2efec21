"""The `checkpoint-K` dirs a training run writes (`--save_frequency`): which are complete, which to resume from.

The Trainer writes a checkpoint's files in place, in this order: the weights (with training_args.bin),
optimizer.pt and scheduler.pt, the RNG state, and trainer_state.json last. A run killed while
saving leaves a torn dir. A checkpoint-K is complete when:

* trainer_state.json parses and says global_step K (its presence means the Trainer got to the end);
* its weights are intact: adapter_model.safetensors, model.safetensors, or every shard that
  model.safetensors.index.json names; every safetensors file's length is the one its header says;

and, to resume from it, when its training state is intact too: the optimizer's state (optimizer.pt;
optimizer.bin under FSDP), scheduler.pt and an RNG state (rng_state.pth, or rng_state_<rank>.pth on
several processes), present, and every torch file (.pt, .pth, .bin) a zip archive whose directory
(at its end) opens. Checks read file headers and directories only, never the tensors: cheap on a
70B checkpoint. (Written by rank 0 after its own files, trainer_state.json may precede another
rank's RNG file: such a rank resumes with a fresh RNG, which only dropout draws from.)
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zipfile
from pathlib import Path

from iterative_label_refinement.core.settings import get_logger

logger = get_logger(__name__)

PREFIX = "checkpoint-"
WEIGHTS = ("adapter_model.safetensors", "model.safetensors")
SHARD_INDEX = "model.safetensors.index.json"
OPTIMIZER = ("optimizer.pt", "optimizer.bin")
SCHEDULER = "scheduler.pt"
# What only resuming needs: `drop_training_state` removes it from a finished run's checkpoints.
TRAINING_STATE = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth")


def checkpoint_step(path: Path) -> int | None:
    """K of a `checkpoint-K` dir name, else None."""
    match = re.fullmatch(rf"{PREFIX}(\d+)", path.name)
    return int(match[1]) if match else None


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Every `checkpoint-K` dir of `run_dir`, complete or not, in ascending K."""
    found = [p for p in Path(run_dir).glob(f"{PREFIX}*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def _safetensors_problem(path: Path) -> str | None:
    """None when the file is as long as its header says (8-byte header length, JSON header, data)."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        return f"{path.name} is unreadable ({type(e).__name__})"
    size = path.stat().st_size
    return None if size == 8 + n + end else f"{path.name} has {size} bytes, its header says {8 + n + end}"


def _archive_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path):
            return None
    except (OSError, zipfile.BadZipFile) as e:
        return f"{path.name} is truncated or unreadable ({type(e).__name__})"


def _weights_problem(ckpt: Path) -> str | None:
    files = [ckpt / name for name in WEIGHTS if (ckpt / name).exists()]
    if (ckpt / SHARD_INDEX).exists():
        try:
            files += [
                ckpt / s for s in sorted(set(json.loads((ckpt / SHARD_INDEX).read_text())["weight_map"].values()))
            ]
        except (OSError, ValueError, KeyError, AttributeError) as e:
            return f"{SHARD_INDEX} is unreadable ({type(e).__name__})"
    if not files:
        return f"no weights ({' or '.join((*WEIGHTS, SHARD_INDEX))})"
    # Every safetensors file, those of a DPO checkpoint's reference adapter (a sub-dir) included.
    for f in sorted(set(files) | set(ckpt.rglob("*.safetensors"))):
        problem = f"missing {f.name}" if not f.exists() else _safetensors_problem(f)
        if problem:
            return problem
    return None


def _training_state_problem(ckpt: Path) -> str | None:
    optimizer = [ckpt / name for name in OPTIMIZER if (ckpt / name).exists()]
    rng = sorted(ckpt.glob("rng_state*.pth"))
    if not optimizer:
        return f"no optimizer state ({' or '.join(OPTIMIZER)})"
    if not (ckpt / SCHEDULER).exists():
        return f"no {SCHEDULER}"
    if not rng:
        return "no RNG state (rng_state.pth)"
    # Every torch file at the root: those above, and FSDP's pytorch_model_fsdp*.bin where it wrote them.
    for f in sorted({*optimizer, ckpt / SCHEDULER, *rng, *ckpt.glob("*.pt"), *ckpt.glob("*.pth"), *ckpt.glob("*.bin")}):
        problem = _archive_problem(f)
        if problem:
            return problem
    return None


def checkpoint_problem(ckpt: Path, resumable: bool) -> str | None:
    """Why `ckpt` is not a complete checkpoint (see the module's docstring), or None when it is.
    `resumable`: its training state (optimizer, scheduler, RNG) must be intact as well."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if not isinstance(state, dict) or state.get("global_step") != checkpoint_step(ckpt):
            return f"trainer_state.json does not say global_step {checkpoint_step(ckpt)}"
        return _weights_problem(ckpt) or (_training_state_problem(ckpt) if resumable else None)
    except FileNotFoundError:
        return "no trainer_state.json (killed while saving)"
    except (OSError, ValueError) as e:  # a truncated JSON, or a dir deleted while it is read
        return f"unreadable ({type(e).__name__}: {e})"


def trained_steps(ckpt: Path) -> tuple[int, int]:
    """(global_step, max_steps) of a complete checkpoint."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    return state["global_step"], state["max_steps"]


def resume_point(run_dir: Path, resume: bool, main_process: bool) -> Path | None:
    """The last checkpoint of `run_dir` complete enough to resume from, or None (`resume` False: None).

    Every checkpoint-K after it is torn (or, without `resume`, stale): the main process deletes
    them, with a warning naming each and why, since training writes them again when it gets there.
    """
    dirs = checkpoint_dirs(run_dir)
    chosen = None
    for ckpt in reversed(dirs) if resume else []:
        problem = checkpoint_problem(ckpt, resumable=True)
        if problem is None:
            chosen = ckpt
            break
        logger.warning("Skipping torn %s (%s)", ckpt.name, problem)
    later = [p for p in dirs if chosen is None or checkpoint_step(p) > checkpoint_step(chosen)]
    if main_process:
        for ckpt in later:
            logger.warning("Deleting %s: training writes it again", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)
    return chosen


def drop_training_state(run_dir: Path) -> None:
    """Delete what only resuming needs (optimizer, scheduler, RNG state) from the checkpoints of a run
    whose final model is saved: they keep their weights and trainer_state.json, as before resuming
    existed (the evaluator's data is sampled from them), without twice the weights' size in state."""
    for ckpt in checkpoint_dirs(run_dir):
        for pattern in TRAINING_STATE:
            for f in ckpt.glob(pattern):
                f.unlink(missing_ok=True)
