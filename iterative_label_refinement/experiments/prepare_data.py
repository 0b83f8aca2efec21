"""Build `$ILR_DATA_PATH/<ds_name>` (a DatasetDict with train/test splits of question/answer rows) from public raw files.

    python -m iterative_label_refinement.experiments.prepare_data --ds_name=gsm8k --raw_path=<raw files>/gsm8k

Each task's registry entry (`core.datasets`) names its raw-file reader (`core.raw_data`), its hub
source and its how-to hint. Without `--raw_path` it tries the Hugging Face hub (only where the
internet is reachable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import DatasetDict

from iterative_label_refinement.core.common import (
    ConfigError,
    get_data_path,
    get_logger,
    save_to_disk_atomic,
    write_json,
)
from iterative_label_refinement.core.datasets import DatasetConfig, get_dataset_config, preparable_datasets

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


MARKER = ".ilr_prepared.json"  # written into every dataset folder this module prepares


class _Prepared:
    """A DatasetDict that saves itself with the marker, for `save_to_disk_atomic`."""

    def __init__(self, dd: DatasetDict, info: dict[str, Any]):
        self.dd, self.info = dd, info

    def save_to_disk(self, path: str) -> None:
        self.dd.save_to_disk(path)
        write_json(Path(path) / MARKER, self.info)


def prepared_here(path: Path) -> bool:
    """A folder this module wrote: its marker, or (before the marker existed) only a train/test DatasetDict."""
    if (path / MARKER).is_file():
        return True
    entries = {p.name for p in path.iterdir()} if path.is_dir() else set()
    return entries == {"dataset_dict.json", "train", "test"}


def _check_out_path(out: Path, force: bool) -> bool:
    """True when `out` already holds a prepared dataset and `force` is off (nothing to do).

    Refuses, with or without `force`, anything else already there: a file, or a folder with files
    this module did not write. `--force` replaces only a dataset prepared here.
    """
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return False
    if out.is_dir() and not out.is_symlink() and prepared_here(out):
        return not force
    what = "a folder with files not written by prepare_data" if out.is_dir() else "a file"
    raise ConfigError(
        f"--out_path={out} is {what}; refusing to replace it (with or without --force). "
        "Pass a new or empty folder, or a dataset folder prepare_data wrote."
    )


def main(ds_name: str, raw_path: str | None = None, out_path: str | None = None, force: bool = False) -> str:
    """Prepare `ds_name` from `raw_path` into `out_path` (default `$ILR_DATA_PATH/<ds_name>`)."""
    if ds_name not in preparable_datasets():
        raise ConfigError(f"Unknown dataset {ds_name!r} for preparation. Valid: {sorted(preparable_datasets())}")
    dataset = get_dataset_config(ds_name)
    out = Path(out_path) if out_path else get_data_path() / ds_name
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
