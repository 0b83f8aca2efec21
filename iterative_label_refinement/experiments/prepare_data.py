"""Build `$ILR_DATA_PATH/<ds_name>` (a DatasetDict with train/test splits of question/answer rows) from public raw files.

    python -m iterative_label_refinement.experiments.prepare_data --ds_name=gsm8k --raw_path=<raw files>/gsm8k

Each task's registry entry (`core.datasets`) names its raw-file reader (`core.raw_data`), its hub
source and its how-to hint. Without `--raw_path` it tries the Hugging Face hub (only where the
internet is reachable). An existing `--out_path` is kept, or replaced with `--force`, only when
prepare_data wrote it, complete and alone; what else is refused is in `_check_out_path`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from iterative_label_refinement.core.datasets import DatasetConfig, get_dataset_config, preparable_datasets
from iterative_label_refinement.core.files import read_json, recover_interrupted_write, save_to_disk_atomic, write_json
from iterative_label_refinement.core.settings import ConfigError, get_data_path, get_logger

logger = get_logger(__name__)


def _from_hub(dataset: DatasetConfig) -> DatasetDict:
    if dataset.hub_source is None:
        raise ConfigError(f"{dataset.name}: no hub source; pass --raw_path. {dataset.prepare_hint}")
    import datasets

    repo, config = dataset.hub_source
    try:
        dd = datasets.load_dataset(repo, config)
    except Exception as e:  # offline, or the hub refused
        raise ConfigError(f"Could not download {repo} from the hub ({type(e).__name__}). {dataset.prepare_hint}") from e
    return DatasetDict({s: dd[s].select_columns(["question", "answer"]) for s in ("train", "test")})


MARKER = ".ilr_prepared.json"  # in every dataset folder this module prepares: what made it, each file and its size
SPLITS = ("train", "test")
# What it writes, relative to the folder: DatasetDict.save_to_disk's files for the splits, and the marker.
_WRITTEN = re.compile(rf"dataset_dict\.json|{re.escape(MARKER)}"
                      rf"|({'|'.join(SPLITS)})/((state|dataset_info)\.json|data-\d{{5}}-of-\d{{5}}\.arrow)")  # fmt: skip


class _Prepared:
    """A DatasetDict that saves itself with the marker, for `save_to_disk_atomic`."""

    def __init__(self, dd: DatasetDict, info: dict[str, Any]):
        self.dd, self.info = dd, info

    def save_to_disk(self, path: str) -> None:
        self.dd.save_to_disk(path)
        write_json(Path(path) / MARKER, dict(self.info, files=_file_sizes(Path(path))))


def _file_sizes(folder: Path) -> dict[str, int]:
    """{path relative to `folder`: size in bytes} of the files below it, the marker aside."""
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    return {name: size for name, size in sizes.items() if name != MARKER}


def _foreign(out: Path) -> list[str]:
    """The entries of `out` that prepare_data never writes (see `_WRITTEN`; links never)."""

    def written(p: Path) -> bool:
        return p.is_file() and not p.is_symlink() and bool(_WRITTEN.fullmatch(p.relative_to(out).as_posix()))

    foreign = []
    for p in sorted(out.iterdir()):
        if p.name in SPLITS and p.is_dir() and not p.is_symlink():
            foreign += [f"{p.name}/{q.name}" for q in sorted(p.iterdir()) if not written(q)]
        elif not written(p):
            foreign.append(p.name)
    return foreign


def _damage(out: Path) -> str | None:
    """Why a folder with the marker is not the dataset the marker lists (each file, with its size,
    and no other), or None."""
    try:
        listed = read_json(out / MARKER).get("files")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        listed = None
    if not isinstance(listed, dict):
        return f"its {MARKER} lists no files (unreadable, or written by an older prepare_data)"
    present = _file_sizes(out)
    for name, size in sorted(listed.items()):
        if name not in present:
            return f"{name} is missing"
        if present[name] != size:
            return f"{name} has {present[name]} bytes, not the {size} written"
    unlisted = sorted(set(present) - set(listed))
    return f"{_some(unlisted)} not written with it" if unlisted else None


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _check_out_path(out: Path, force: bool) -> bool:
    """True when `out` already holds the dataset prepare_data wrote and `force` is off (nothing to do).

    What prepare_data wrote is a folder with its marker, which lists each file with its size. Such a
    folder is kept, or replaced with `force`; damaged (a listed file missing or of another size, or
    the marker listing none), it is an error without `force`, replaced with it. Anything else at
    `out` is refused with or without `force`, since replacing it would delete what the user made: a
    file, a link, a folder without the marker (a DatasetDict included: nothing says prepare_data
    wrote it), or a marked folder holding anything prepare_data does not write (a user's notes).
    """
    if not out.exists() and not out.is_symlink():
        return False
    refuse = "refusing to replace it (with or without --force)"
    if out.is_symlink() or not out.is_dir():
        what = "a symbolic link" if out.is_symlink() else "a file"
        raise ConfigError(f"--out_path={out} is {what}; {refuse}. Pass a new or empty folder, or a dataset folder "
                          "prepare_data wrote.")  # fmt: skip
    if not any(out.iterdir()):
        return False
    if not (out / MARKER).is_file():
        what = "a DatasetDict folder" if (out / "dataset_dict.json").exists() else "a folder"
        raise ConfigError(f"--out_path={out} is {what} not written by prepare_data; {refuse}: it has no {MARKER}. "
                          "Move it away, or pass another --out_path.")  # fmt: skip
    foreign = _foreign(out)
    if foreign:
        raise ConfigError(f"--out_path={out} holds {_some(foreign)}, not written by prepare_data; {refuse}. "
                          "Move that out of it first.")  # fmt: skip
    damage = _damage(out)
    if damage and not force:
        raise ConfigError(f"--out_path={out} is a damaged prepared dataset: {damage}. Pass --force to rebuild it.")
    return not force


def main(ds_name: str, raw_path: str | None = None, out_path: str | None = None, force: bool = False) -> str:
    """Prepare `ds_name` from `raw_path` into `out_path` (default `$ILR_DATA_PATH/<ds_name>`)."""
    if ds_name not in preparable_datasets():
        raise ConfigError(f"Unknown dataset {ds_name!r} for preparation. Valid: {sorted(preparable_datasets())}")
    dataset = get_dataset_config(ds_name)
    out = Path(out_path) if out_path else get_data_path() / ds_name
    recover_interrupted_write(out)  # a killed earlier run: its old dataset back at `out`, no stray siblings
    if _check_out_path(out, force):
        logger.info("%s already exists; pass --force to rebuild", out)
        return str(out)
    dd = dataset.preparer(Path(raw_path)) if raw_path else _from_hub(dataset)
    for split, rows in dd.items():
        if not len(rows):
            raise ConfigError(f"{ds_name}: the {split} split has no rows; check the raw files in {raw_path}")
    save_to_disk_atomic(_Prepared(dd, {"ds_name": ds_name, "raw_path": raw_path}), out)
    logger.info("Wrote %s: %s", out, {k: len(v) for k, v in dd.items()})
    return str(out)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
