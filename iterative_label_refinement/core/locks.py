"""One writer per artifact: a run dir, a label set, evaluator data or an evaluator is written by one
process at a time.

The threat: two pipelines started on one results folder (a resubmitted cluster job, a second seed
given the same folder) both find an artifact unfinished and write it at once. One cleans the
other's temporary files, or each overwrites half of what the other wrote, and the folder then
holds a mix that no single run made.

The defence: `writing(target)` takes an exclusive `flock` on a hidden sibling `.<name>.lock`
before the step checks whether its output is done, and holds it until the output is complete.
* A second writer does not wait: it refuses in one line naming the holder (pid, host, start time,
  command), which the holder writes into the lock file once it has the lock.
* The operating system drops a `flock` when its process dies, however it dies, so the lock of a
  killed run is taken over by the next run without any staleness rule: nothing to clean by hand.
* Only the holder writes the holder's line, so a refused writer never changes the lock file.
* Locks are advisory: they guard this project's writers against each other, not a user's `rm`.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from iterative_label_refinement.core.settings import ConfigError


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def writing(target: str | Path) -> Iterator[None]:
    """Hold `target`'s lock for the block; ConfigError naming the holder when another process has it."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{target} is being written by {_holder(path)}; wait for that run to finish (a "
                              "killed run's lock is freed with it)") from None  # fmt: skip
        holder = dict(pid=os.getpid(), host=socket.gethostname(), since=_now(), command=" ".join(sys.argv))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']} ({holder['command']})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is between its lock and its line
        return "another process"
