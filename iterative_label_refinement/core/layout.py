"""Where everything lives in a results folder: every path is formatted and parsed here, nowhere else.

    <results>/<sweep>/<run dir>                         a run of experiments.main, named by its config
    <weak run>/weak_labels                              round 0's labels (written by the weak run itself)
    <weak run>/<method>_<round>_weak_labels             a refinement step's labels, trained on by round + 1
    <run dir>/train_adapter                             a DPO round's policy adapter
    <results>/evaluator-data/d=<ds>-ms=<model>-s=<seed> the evaluator's pair data
    <results>/evaluators/<data name>/<settings>         a trained evaluator
    <out>/report.csv, report_provenance.json, report.html, <plot>_<ds>_<strong>.png   the report

A run dir's name is its config's keys, sorted, each shortened to the first letter of its words, with
values shortened (the last path component; each `_`-part of a string cut to 4 characters; booleans
0/1): `bs=32-dn=toy_arit-ms=tiny-random-ri=0-...`. The names on disk are the reference's: existing
results folders are found again, so nothing here may change a name.

`--weak_labels_path` (experiments.main) names either a weak run dir, in which `current_labels_path`
finds the label set of the run's method and round, or a label set itself (`core.run_config`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.settings import ConfigError

# ---------------------------------------------------------------------------------------------
# Run dirs: a config's sorted, shortened keys and values
# ---------------------------------------------------------------------------------------------


def short_key(key: str) -> str:
    return "".join(word[0] for word in key.split("_") if word)


def short_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        value = value.rstrip("/").split("/")[-1]
        if "_" in value:
            value = "_".join(part[:4] for part in value.split("_"))
        return value
    return str(value)


def get_config_foldername(config: dict[str, Any]) -> str:
    """The deterministic run-dir name of a config: sorted keys, shortened keys and values."""
    return "-".join(f"{short_key(k)}={short_value(config[k])}" for k in sorted(config))


# A new entry starts at a `-` followed by a short key and `=`: values hold `-` too (`ms=tiny-random`, `l=1e-06`).
_ENTRY_START = re.compile(r"-(?=[a-z0-9]+=)")


def _chunks(name: str) -> list[str]:
    return _ENTRY_START.split(name)


def parse_foldername(name: str) -> dict[str, str]:
    """The shortened entries of a run-dir name, in their order: {short key: short value}. Lossy, as
    the name is (`parse_foldername(get_config_foldername(c))` is `c` shortened, never `c`). A chunk
    without `=` (a dir renamed by hand, `weak-ms=w-ri=0`) is no entry."""
    return dict(chunk.split("=", 1) for chunk in _chunks(name) if "=" in chunk)


def run_dir_round(name: str) -> int | None:
    """The `ri=<round>` a run-dir name carries; None when it has none (not a run of experiments.main)."""
    value = parse_foldername(name).get(short_key("round_id"), "")
    return int(value) if value.isdigit() else None


def name_value(run_dir: Path, key: str) -> str | None:
    """The shortened value of config `key` that a run dir's name carries, None when it has none."""
    return parse_foldername(run_dir.name).get(short_key(key))


def sibling_with(run_dir: Path, key: str, value: Any) -> Path:
    """The run dir beside `run_dir` whose config differs only in `key` (e.g. the safety-only run of
    SaferPaca's general-only one: `sm=1` -> `sm=2`); ConfigError when its name lacks that key."""
    if name_value(run_dir, key) is None:
        raise ConfigError(f"{run_dir} has no {short_key(key)}=<{key}> in its name")
    prefix = f"{short_key(key)}="
    chunks = [prefix + short_value(value) if c.startswith(prefix) else c for c in _chunks(run_dir.name)]
    return run_dir.with_name("-".join(chunks))


# ---------------------------------------------------------------------------------------------
# Label sets, in the weak run's dir
# ---------------------------------------------------------------------------------------------

WEAK_LABELS = "weak_labels"  # round 0's labels, written by the weak run (every run that labels writes one)
_REFINED = re.compile(r"(.+)_(\d+)_weak_labels")


def refined_path(weak_dir: str | Path, method: Any, round_id: int) -> Path:
    """The label set a refinement step of `round_id` writes (and round `round_id + 1` trains on);
    `method` is a Method or its name (`str(method)` is the name either way)."""
    return Path(weak_dir) / f"{method}_{round_id}_{WEAK_LABELS}"


def current_labels_path(weak_dir: str | Path, method: Any, round_id: int) -> Path:
    """The labels a round starts from: `weak_labels` in round 0, else the previous round's output."""
    if round_id == 0:
        return Path(weak_dir) / WEAK_LABELS
    if not method:
        raise ConfigError(f"round_id={round_id} on labels needs a method to find <method>_{round_id - 1}_weak_labels")
    return refined_path(weak_dir, method, round_id - 1)


def parse_label_set(path: Path) -> tuple[str | None, int] | None:
    """(method, round) of the runs a label set's name says it is for: `weak_labels` is round 0's of
    any method (None), `<method>_<r>_weak_labels` round r + 1's of that method; None for another name."""
    if path.name == WEAK_LABELS:
        return None, 0
    match = _REFINED.fullmatch(path.name)
    return (match.group(1), int(match.group(2)) + 1) if match else None


def beside(run_dir: Path, recorded: str | Path) -> Path:
    """Where a path a run recorded (a label set in a weak run's dir, as given on its command line,
    often relative to where the scripts ran) sits when the results folder has moved: its weak run
    is beside the run, in the same sweep folder."""
    recorded = Path(recorded)
    return run_dir.parent / recorded.parent.name / recorded.name


# ---------------------------------------------------------------------------------------------
# A run's saved model
# ---------------------------------------------------------------------------------------------

ADAPTER = "train_adapter"  # a DPO round's policy adapter, inside its run dir


def model_dir(run_dir: Path, dpo_round: bool) -> Path:
    """Where a run's model is saved: its run dir, or a DPO round's adapter dir inside it."""
    return run_dir / ADAPTER if dpo_round else run_dir


# ---------------------------------------------------------------------------------------------
# The evaluator's data and the evaluators
# ---------------------------------------------------------------------------------------------

EVALUATOR_DATA, EVALUATORS = "evaluator-data", "evaluators"


def evaluator_data_name(ds_name: str, model_name: str, seed: int) -> str:
    """`d=<task>-ms=<model, its last path component>-s=<seed>`."""
    return f"d={ds_name}-ms={model_name.rstrip('/').split('/')[-1]}-s={seed}"


def evaluator_data_dir(results: Path, ds_name: str, model_name: str, seed: int) -> Path:
    return results / EVALUATOR_DATA / evaluator_data_name(ds_name, model_name, seed)


def find_evaluator_data(data: str, results: Path) -> Path:
    """`data` is a path to evaluator data, or its name under `<results>/evaluator-data`."""
    if "/" in data or Path(data, "dataset_dict.json").exists():
        return Path(data)
    return results / EVALUATOR_DATA / data


def evaluator_dir(results: Path, data_path: Path, settings: dict[str, Any]) -> Path:
    """`<results>/evaluators/<data name>/<settings, named as a run dir>`."""
    return results / EVALUATORS / data_path.name / get_config_foldername(settings)


def evaluator_dirs(results: Path) -> list[Path]:
    """The trained evaluators under `results` (with their results_summary.json), sorted."""
    return sorted(p.parent for p in results.rglob(f"{EVALUATORS}/*/*/results_summary.json"))


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

REPORT_CSV, REPORT_PROVENANCE, REPORT_PAGE = "report.csv", "report_provenance.json", "report.html"


def report_plot(out: Path, kind: str, dataset: str, strong: str) -> Path:
    """A plot of the report (`accuracy`, `labels`, `dpo`, `losses`) for one dataset and strong model."""
    return out / f"{kind}_{dataset}_{strong}.png"
