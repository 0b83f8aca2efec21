"""The rows of one run: what it trains on, its test rows, and the prompts it labels.

A ground-truth run (the weak supervisor) trains on half A of the task's train split and labels
half B. A run on labels trains on all of them, or on one half (`half_data=1|2`, the cross-fitted
models that propose refinements) and labels the other half; a DPO round trains on preference
pairs and samples again on the prompts of half B. Filters come from the method and the task's
registry entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iterative_label_refinement.core.datasets import DatasetConfig, heldout_rows, load_dataset
from iterative_label_refinement.core.label_sets import LABEL_COLUMNS, PREFERENCE_COLUMNS, first, load_label_set
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.core.settings import ConfigError, get_logger

if TYPE_CHECKING:
    from datasets import Dataset

    from iterative_label_refinement.core.run_config import RunConfig

logger = get_logger(__name__)


def filter_rows(ds: Dataset, dataset: DatasetConfig, method: Method | None, round_id: int,
                saferpaca_mode: int | None, preference: bool) -> Dataset:  # fmt: skip
    """The rows a run trains on: the task mode's subset (rows whose `subset_column` holds the mode's
    value), correct-only round-0 demonstrations for a `cor` method, oracle-correct chosen answers for
    an oracle DPO round, and the task's answer marker.

    ConfigError when no row is left, saying how many rows each filter dropped (before training's
    max_len filter, which needs the tokenizer)."""
    n = len(ds)
    dropped: list[str] = []  # how many rows each filter dropped and why, in the order they ran

    def apply(rows: Dataset, keep: Callable[[dict], bool], why: str) -> Dataset:
        kept = rows.filter(keep)
        dropped.append(f"{len(rows) - len(kept)} dropped because {why}")
        return kept

    if saferpaca_mode:
        dataset.check_mode(saferpaca_mode, "saferpaca_mode")
        column, keep = dataset.subset_column, dataset.modes[saferpaca_mode]
        if column in ds.column_names:
            ds = apply(ds, lambda r: r[column] == keep,
                       f"they are not in {column} {keep!r} (saferpaca_mode={saferpaca_mode})")  # fmt: skip
    if method and preference and method.is_dpo and method.oracle:
        ds = apply(ds, lambda r: first(r["acc"]) == 1, f"their chosen answer is wrong (oracle {method})")
    if method and not preference and method.correct_start and round_id == 0 and "acc" in ds.column_names:
        ds = apply(ds, lambda r: first(r["acc"]) == 1, f"their label is wrong ({method} starts from correct labels)")
    if dataset.answer_marker:
        column, marker = ("chosen" if preference else "answer"), dataset.answer_marker
        ds = apply(ds, lambda r: marker in first(r[column]),
                   f"the {column} has no {marker!r} ({dataset.name}'s final-answer marker)")  # fmt: skip
    if len(ds) == 0:
        raise ConfigError(f"0 of {n} training rows left: {', '.join(dropped) or 'there were none'}")
    if len(ds) < n:
        logger.info("Filters kept %d of %d rows: %s", len(ds), n, ", ".join(dropped))
    return ds


@dataclass
class RunData:
    train: Dataset  # rows to train on (SFT: question/answer; DPO: question/chosen/rejected)
    test: Dataset  # task test rows
    label_targets: Dataset  # prompts to generate labels for, with ground-truth `answer`


def gt_answers(ds: Dataset) -> list[str]:
    return list(ds["gt_answer"]) if "gt_answer" in ds.column_names else list(ds["answer"])


def half_split(labels: Dataset, seed: int, half: int) -> tuple[Dataset, Dataset]:
    """(the rows half model `half` (1 or 2) trains on, the other half's): cross-fitting's split."""
    split = labels.train_test_split(test_size=0.5, seed=seed)
    return (split["train"], split["test"]) if half == 1 else (split["test"], split["train"])


def load_run_data(cfg: RunConfig) -> RunData:
    """Train on half A of the task's train split (ground truth) or on the labels (all, or one half);
    label the other half (or, for a DPO round, the prompts the labels came from)."""
    from datasets import Dataset

    seed, method, round_id, mode = cfg.seed, cfg.method, cfg.round_id, cfg.saferpaca_mode
    if cfg.eval_on == "heldout":  # the test split is not read at all
        dd = load_dataset(cfg.ds_name, seed=seed, split_sizes={"train": cfg.n_docs})
        dd["test"] = heldout_rows(cfg.ds_name, seed, cfg.n_docs, cfg.n_test_docs)
    else:
        dd = load_dataset(cfg.ds_name, seed=seed, split_sizes={"train": cfg.n_docs, "test": cfg.n_test_docs})
    halves = dd["train"].train_test_split(test_size=0.5, seed=seed)
    extras = [c for c in cfg.dataset.extra_columns if c in dd["train"].column_names]

    def as_targets(ds: Dataset) -> Dataset:
        """Prompts to label, with the ground truth as `answer` (label sets carry it as `gt_answer`)."""
        cols = {"question": list(ds["question"]), "answer": gt_answers(ds)}
        for c in extras:
            if c in ds.column_names:
                cols[c] = list(ds[c])
        return Dataset.from_dict(cols)

    if cfg.labels_path is None:  # a ground-truth run: the weak supervisor
        train = dd["train"] if cfg.train_with_all_data else halves["train"]
        train = filter_rows(train, cfg.dataset, None, round_id, mode, preference=False)
        return RunData(train=train, test=dd["test"], label_targets=as_targets(halves["test"]))

    labels = load_label_set(cfg.labels_path, PREFERENCE_COLUMNS if cfg.dpo_round else LABEL_COLUMNS)
    if cfg.dpo_round:
        train = filter_rows(labels, cfg.dataset, method, round_id, mode, preference=True)
        # DPO samples again on the prompts of the ground-truth half the labels came from.
        return RunData(train=train, test=dd["test"], label_targets=as_targets(halves["test"]))
    if cfg.half_data:
        train, other = half_split(labels, seed, cfg.half_data)
        if method and method.spec.half_runs_label_all:  # its step compares both half models on every prompt
            other = labels
    else:
        train, other = labels, labels
    train = filter_rows(train, cfg.dataset, method, round_id, mode, preference=False)
    return RunData(train=train, test=dd["test"], label_targets=as_targets(other))
