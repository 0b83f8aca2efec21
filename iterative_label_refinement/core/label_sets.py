"""How label sets are read and written safely, which run they train, and which round a run dir belongs to.

Label sets are `datasets` saved with `save_to_disk` (question, answer, gt_answer, and acc where known): `<weak run>/weak_labels` after round 0,
`<weak run>/<method>_<round>_weak_labels` after each refinement (ILR, naive, DPO preferences); `core.layout` names them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.files import read_json, save_to_disk_atomic
from iterative_label_refinement.core.layout import current_labels_path, parse_label_set, run_dir_round
from iterative_label_refinement.core.settings import ConfigError, get_logger

if TYPE_CHECKING:
    from datasets import Dataset

    from iterative_label_refinement.core.methods import Method

logger = get_logger(__name__)

LABEL_COLUMNS = ("question", "answer", "gt_answer")
PREFERENCE_COLUMNS = ("question", "chosen", "rejected")
# Refinement steps carry each label's correctness along (`acc`, None where it was not computed).
REFINEMENT_COLUMNS = (*LABEL_COLUMNS, "acc")


def is_label_set(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "state.json").exists()


def trained_by(path: Path) -> tuple[str | None, int] | None:
    """(method, round) of the runs a label set is for, as its record (`core.provenance`) or else its
    name says: `weak_labels` is round 0's of any method (None), `<method>_<r>_weak_labels` round
    r + 1's of that method. None: a label set named otherwise, with no record (the user's own)."""
    from iterative_label_refinement.core.provenance import read_record

    record = read_record(path)
    if record is not None and "method" in record and "round_id" in record:
        return record["method"], record["round_id"] + 1
    return parse_label_set(path)


def check_trains(path: Path, method: Method | str | None, round_id: int) -> None:
    """A label set given by its path must be the one for this run's method and round: naive labels
    trained as `--method=ilr0.3 --round_id=1` would be found again as ILR's round 1."""
    origin = trained_by(path)
    if origin is None:
        return
    made_for, made_round = origin
    if made_round != round_id or (made_for is not None and made_for != str(method)):
        made = f"{made_for} round {made_round}" if made_for else f"round {made_round}"
        raise ConfigError(f"--weak_labels_path={path} holds the labels of {made}, but this run is "
                          f"--method={method} --round_id={round_id}")  # fmt: skip


def check_columns(ds: Dataset, required: tuple[str, ...], path: Path) -> None:
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise ConfigError(f"Label set {path} is missing column(s) {missing}; it has {ds.column_names}")


def _data_files(path: Path) -> list | None:
    """The Arrow files a saved dataset's state.json lists; None when it cannot be read."""
    try:
        return json.loads((path / "state.json").read_text()).get("_data_files")
    except (OSError, ValueError, AttributeError):
        return None


def load_label_set(path: str | Path, required: tuple[str, ...] = LABEL_COLUMNS) -> Dataset:
    """Read a label set, with an error naming the path when it is absent, damaged, empty or lacks columns."""
    import pyarrow
    from datasets import load_from_disk

    path = Path(path)
    if not is_label_set(path):
        raise ConfigError(f"No label set at {path} (expected a datasets folder saved with save_to_disk)")
    empty = ConfigError(f"Label set {path} has no rows; remake it with --force")
    try:
        ds = load_from_disk(str(path))
    except (OSError, ValueError, KeyError, IndexError, TypeError, pyarrow.ArrowException) as e:  # torn files
        if _data_files(path) == []:  # datasets cannot load the save of 0 rows
            raise empty from None
        raise ConfigError(f"Label set {path} is damaged ({type(e).__name__}: {e}); remake it with --force") from None
    if not hasattr(ds, "column_names") or isinstance(ds.column_names, dict):
        raise ConfigError(f"{path} is a DatasetDict of splits, not a label set")
    if len(ds) == 0:
        raise empty
    check_columns(ds, required, path)
    return ds


def run_round(path: str | Path) -> int:
    """The round a run dir of experiments.main belongs to: the `round_id` of its
    `experiment_config.json` (what the run was given), or, in a dir without one, the `ri=<round>`
    its name carries (the name is made from the same config)."""
    config_file = Path(path) / "experiment_config.json"
    if config_file.is_file():
        round_id = read_json(config_file).get("round_id")
        if isinstance(round_id, bool) or not isinstance(round_id, int):
            raise ConfigError(
                f"{config_file} has no integer round_id (got {round_id!r}): not a run of experiments.main"
            )
        return round_id
    round_id = run_dir_round(Path(path).name)
    if round_id is None:
        raise ConfigError(f"{path} is not a run dir of experiments.main (its name has no 'ri=<round>')")
    return round_id


def check_round(round_id: int, **paths: str | Path) -> None:
    """Every model path must belong to `round_id`: mixing rounds silently corrupts a refinement."""
    for flag, path in paths.items():
        if not Path(path).is_dir():
            raise ConfigError(f"--{flag}={path} does not exist")
    rounds = {flag: run_round(path) for flag, path in paths.items()}
    if any(r != round_id for r in rounds.values()):
        found = ", ".join(f"--{flag}={paths[flag]} is round {r}" for flag, r in rounds.items())
        raise ConfigError(f"round mismatch: --round_id={round_id} but {found}")


def first(x: Any) -> Any:
    """Label sets hold one answer per prompt, or a list of samples: the first stands for the row."""
    return x[0] if isinstance(x, list) else x


def label_accuracy(acc: list[Any]) -> float | None:
    """Fraction of correct labels, when correctness is known."""
    values = [first(a) for a in acc if first(a) is not None]
    return sum(values) / len(values) if values else None


def check_known_acc(ds: Dataset, path: str | Path, purpose: str) -> None:
    """Oracle feedback and correct-only starts read every row's correctness: None is not a 0."""
    unknown = sum(first(a) is None for a in ds["acc"])
    if unknown:
        raise ConfigError(f"Label set {path} has acc=None in {unknown} of {len(ds)} rows, but {purpose} needs each "
                          "label's correctness: generate the labels with --compute_weak_label_acc=True")  # fmt: skip


def load_current_labels(
    weak_dir: str | Path, method: Method | str, round_id: int, correct_only: bool = False
) -> Dataset:
    """The labels a refinement round starts from; `correct_only` keeps correct round-0 demonstrations."""
    path = current_labels_path(weak_dir, method, round_id)
    labels = load_label_set(path, REFINEMENT_COLUMNS)
    if round_id == 0 and correct_only:
        check_known_acc(labels, path, "--start_with_correct_labels")
        labels = labels.filter(lambda r: first(r["acc"]) == 1)
    return labels


def save_label_set(rows: list[dict[str, Any]], path: Path, seed: int, record: dict[str, Any], save: bool = True) -> str:
    """Shuffle a refinement step's rows with `seed` and write them atomically, with the record of
    what made them (`core.provenance`); prints the path."""
    from datasets import Dataset

    from iterative_label_refinement.core.provenance import RECORD

    if save:
        save_to_disk_atomic(Dataset.from_list(rows).shuffle(seed=seed).flatten_indices(), path, {RECORD: record})
    print(path)
    return str(path)
