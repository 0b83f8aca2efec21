"""What made each derived artifact, recorded beside it and compared before it is reused.

The threat: artifacts are named by a few settings (`<weak run>/<method>_<round>_weak_labels`,
`evaluator-data/d=<ds>-ms=<model>-s=<seed>`, `evaluators/<data>/<settings>`), and a step whose
output exists is skipped. Run again with another strong model, another evaluator or another
sampling temperature, a pipeline would take what the old inputs made as its own, and every later
round would train on it without a word.

The defence:
* Each label set (ILR, naive, DPO pairs), evaluator data set and evaluator carries `provenance.json`:
  the weights of every model that produced it, the evaluator's identity, the method, round and seed,
  and the settings that change its content. Label sets and evaluator data write it inside their
  atomic write (`save_to_disk_atomic`), so the two appear together; an evaluator writes it before its
  commit point, `results_summary.json`.
* A step that finds its output builds the record it would write now and compares (`reuse`): equal,
  the output is reused; different, it refuses in one line naming the first difference, both sides,
  and how to redo it; it never reuses a mismatched artifact.
* An input is named by what it is, never by where the results folder sits (a folder copied from a
  cluster is still the same): a run by its dir name and recorded weights, a label set, data set or
  evaluator by its name and the digest of its own record.
* An artifact made before records existed has nothing to compare: it is reused with a warning, as run
  dirs recorded before `model_weights` are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.settings import ConfigError, get_logger

logger = get_logger(__name__)

RECORD = "provenance.json"


def digest(record: dict[str, Any]) -> str:
    """A short, order-independent fingerprint of a record (what a later artifact cites)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_record(folder: str | Path, name: str = RECORD) -> dict[str, Any] | None:
    """The record in `folder`, None when there is none; a damaged one is one clear line."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); move the artifact away, or redo it") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path} is damaged (not a JSON object); move the artifact away, or redo it")
    return record


def run_identity(run_dir: str | Path) -> dict[str, Any]:
    """A run of experiments.main: its dir name (its settings) and the weights it recorded."""
    from iterative_label_refinement.core.saved_models import recorded_weights

    run_dir = Path(run_dir)
    config = read_record(run_dir, "experiment_config.json")
    return {"run": run_dir.name, "model_weights": recorded_weights(config) if config else None}


def artifact_identity(path: str | Path, parents: int = 0) -> dict[str, Any]:
    """A label set, evaluator data set or evaluator: its name (with `parents` folders above it) and
    the digest of its record; an artifact from before records cites its `experiment_config.json`,
    and one with neither only its name."""
    path = Path(path)
    name = "/".join(path.parts[-1 - parents :])
    record = read_record(path) or read_record(path, "experiment_config.json")
    return {"name": name, "record": digest(record) if record is not None else None}


def evaluator_identity(evaluator_path: str | Path | None) -> dict[str, Any] | str:
    """The feedback's source: "oracle" (ground truth) or the evaluator dir (`<data>/<settings>`)."""
    return "oracle" if evaluator_path is None else artifact_identity(evaluator_path, parents=1)


def differences(old: Any, new: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf where two records differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))
        return out
    return [] if old == new else [(key, old, new)]


def reuse(artifact: str | Path, record: dict[str, Any], redo: str) -> bool:
    """Whether `artifact` exists and was made as `record` says this step would make it now.

    False: it is absent, so the step makes it. True: reuse it (also when it predates records, with a
    warning). Made otherwise: refused in one line naming the first difference, both sides, and `redo`
    (the flag that remakes it)."""
    artifact = Path(artifact)
    if not artifact.exists():
        return False
    recorded = read_record(artifact)
    if recorded is None:
        logger.warning("%s has no %s (made before records were kept): reused unchecked", artifact, RECORD)
        return True
    diff = differences(recorded, record)
    if not diff:
        return True
    key, old, new = diff[0]
    more = f" (and {len(diff) - 1} more difference(s))" if len(diff) > 1 else ""
    raise ConfigError(f"{artifact} was made with {key}={json.dumps(old, default=str)}, but this step now has "
                      f"{key}={json.dumps(new, default=str)}{more}; pass {redo} to redo it, or start another "
                      "results folder")  # fmt: skip
