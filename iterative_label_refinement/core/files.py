"""Files that last: JSON, datasets and model dirs written atomically, a full disk named in one line, and
what a killed write left behind put right. (Path names: `core.layout`.)"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.settings import ConfigError, get_logger


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
