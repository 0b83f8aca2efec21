"""The task registry: where each task's data comes from, its length budget, its metric, its subsets.

Task data is a `DatasetDict` (`train`, `test`) with `question` and `answer` columns, read from
`$ILR_DATA_PATH/<name>` (default `data/<name>`, built by `experiments.prepare_data`), or generated
in code (the toy world's task, so tests and the demo need no preparation). Each task registers
itself beside its loader and metric (`iterative_label_refinement.tasks.<name>`, `toy.task`) when
`iterative_label_refinement.plugins.load_plugins` runs: core names no task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.label_sets import first
from iterative_label_refinement.core.prompts import format_prompt
from iterative_label_refinement.core.settings import ConfigError, get_data_path, get_logger

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

logger = get_logger(__name__)

# A metric scores a batch: (predictions, references, rows) -> one score in [0, 1] per prediction.
# `rows` holds the other columns of the examples (e.g. BIRD's `db_name`).
Metric = Callable[[Sequence[str], Sequence[str], Sequence[dict[str, Any]]], list[float]]
# ILR's agreement check: (current labels, proposals, rows) -> whether each pair says the same thing.
Agreement = Callable[[Sequence[str], Sequence[str], Sequence[dict[str, Any]]], list[bool]]


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    loader: Callable[[str], Dataset]  # split name -> rows with `question`, `answer`, extras
    max_len: int  # token budget of an answer: generation's max_new_tokens and the training filter
    metric: Metric
    agreement: Agreement
    extra_columns: tuple[str, ...] = ()
    # Reads the raw files in a folder into train/test (`experiments.prepare_data --raw_path`); None
    # for a task generated in code. `hub_source` (repo, config) is where prepare_data downloads it
    # from without --raw_path, where one exists.
    preparer: Callable[[Path], DatasetDict] | None = None
    hub_source: tuple[str, str] | None = None
    prepare_hint: str = ""  # how to obtain the raw files, shown when they or the prepared data are missing
    # Training keeps only answers that carry this final-answer marker: an answer without one can
    # never be scored, so learning from it only teaches the model to omit it (GSM8K's `####`).
    answer_marker: str | None = None
    # Whether labels are scored by default: a metric that calls a paid judge scores only test answers.
    score_labels: bool = True
    # A run's subset (`--saferpaca_mode`): mode -> the value of `subset_column` that the rows a run
    # trains on have (SaferPaca: 1 -> "general", 2 -> "safety"; the generic subset mechanism).
    modes: dict[int, str] = field(default_factory=dict)
    subset_column: str = ""
    # The modes whose ground-truth runs give the evaluator's pairs, balanced between them
    # (`experiments.generate_evaluator_data`; SaferPaca: a general-only and a safety-only run). The
    # run it is given is the first mode's; the others are its siblings named with their mode.
    # Empty: the pairs come from the one run it is given.
    evaluator_modes: tuple[int, ...] = ()
    # Checks the rows a run will score before training (e.g. every BIRD database can be opened):
    # a missing input found after hours of training costs the run.
    check_rows: Callable[[Sequence[Dataset]], None] | None = None
    # Sampling temperatures of the paper's runs of this task (the scripts' defaults, checked against
    # them in tests/test_dataset_registry.py): the weak model's labels, the half models' ILR
    # proposals, and the 6 samples per prompt a DPO round draws its pairs from. 0 is beam search.
    weak_label_temp: float = 0.0
    proposal_temp: float = 0.0
    dpo_sample_temp: float = 0.7
    # The LLM judge's prompt (`core.judge`): a file in iterative_label_refinement/judge_templates/
    # with {question}, {answer_a} and {answer_b}; "" when the task has none.
    judge_template: str = ""

    def check_mode(self, mode: int | None, flag: str) -> None:
        """ConfigError naming `flag` unless `mode` is None or one of the task's modes."""
        if mode is not None and mode not in self.modes:
            valid = " or ".join(f"{m} ({c})" for m, c in self.modes.items()) or f"unset: {self.name} has no modes"
            raise ConfigError(f"{flag} must be {valid}, got {mode!r}")


_REGISTRY: dict[str, DatasetConfig] = {}
# Core registers no task: each registers itself (`iterative_label_refinement.tasks`, the toy world)
# when `load_plugins` runs, which every entry point does first.
WHERE_TASKS_REGISTER = "iterative_label_refinement.plugins.load_plugins()"


def register_dataset(config: DatasetConfig) -> DatasetConfig:
    """Add a task (or replace the one of that name); its modes must name a subset column and back its evaluator modes."""
    if config.modes and not config.subset_column:
        raise ConfigError(f"task {config.name!r} has modes {config.modes} but no subset_column to select them on")
    unknown = [m for m in config.evaluator_modes if m not in config.modes]
    if unknown:
        raise ConfigError(f"task {config.name!r}: evaluator_modes {unknown} are not among its modes {config.modes}")
    _REGISTRY[config.name] = config
    return config


def dataset_names() -> list[str]:
    """The registered tasks, in the order they registered."""
    return list(_REGISTRY)


def preparable_datasets() -> list[str]:
    """The tasks `experiments.prepare_data` builds from raw files."""
    return [name for name, cfg in _REGISTRY.items() if cfg.preparer is not None]


def get_dataset_config(ds_name: str) -> DatasetConfig:
    if not _REGISTRY:
        raise ConfigError(f"Unknown dataset {ds_name!r}: no task is registered yet. Tasks register when "
                          f"{WHERE_TASKS_REGISTER} runs, which every entry point runs first")  # fmt: skip
    if ds_name not in _REGISTRY:
        raise ConfigError(f"Unknown dataset {ds_name!r}. Valid: {dataset_names()}")
    return _REGISTRY[ds_name]


def prepared_loader(ds_name: str) -> Callable[[str], Dataset]:
    """Read split `split` of the prepared `$ILR_DATA_PATH/<ds_name>`, with a how-to when missing."""

    def load(split: str) -> Dataset:
        from datasets import load_from_disk

        path = get_data_path() / ds_name
        if not (path / "dataset_dict.json").exists():
            raise ConfigError(
                f"No prepared data for {ds_name!r} at {path}. Prepare it with:\n"
                f"  python -m iterative_label_refinement.experiments.prepare_data --ds_name={ds_name} "
                f"--raw_path=<raw files>\n{_REGISTRY[ds_name].prepare_hint}"
            )
        dd = load_from_disk(str(path))
        if split not in dd:
            raise ConfigError(f"{path} has no split {split!r}; it has {list(dd)}")
        return dd[split]

    return load


def load_dataset(ds_name: str, seed: int = 0, split_sizes: dict[str, int] | None = None) -> DatasetDict:
    """The first `n` rows of each split, then shuffled with `seed` (deterministic)."""
    from datasets import DatasetDict

    cfg = get_dataset_config(ds_name)
    split_sizes = split_sizes or {"train": 20000, "test": 10000}
    out = {}
    for split, n in split_sizes.items():
        ds = cfg.loader(split)
        ds = ds.select(range(min(n, len(ds))))
        out[split] = ds.shuffle(seed=seed).flatten_indices()
    return DatasetDict(out)


def heldout_rows(ds_name: str, seed: int, n_train: int, n: int) -> Dataset:
    """`n` training-split rows that a run of `n_train` training rows never sees (those after them),
    shuffled with `seed`: where settings are tuned without looking at the test split."""
    ds = get_dataset_config(ds_name).loader("train")
    if len(ds) < n_train + n:
        raise ConfigError(f"eval_on=heldout needs n_docs + n_test_docs = {n_train + n} training rows; "
                          f"{ds_name} has {len(ds)}")  # fmt: skip
    return ds.select(range(n_train, n_train + n)).shuffle(seed=seed).flatten_indices()


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The SFT prompt of a question, after a BOS token when the model's registry entry asks for one."""
    from iterative_label_refinement.core.models import prompt_prefix_ids

    return prompt_prefix_ids(tokenizer) + _encode(tokenizer, format_prompt(question))


def tokenize_example(tokenizer, question: str, answer: str) -> dict[str, list[int]]:
    """Prompt and answer tokenised separately, then concatenated; prompt positions labelled -100."""
    prompt = prompt_ids(tokenizer, question)
    answer_ids = _encode(tokenizer, answer) + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt + answer_ids,
        "labels": [-100] * len(prompt) + answer_ids,
    }


def tokenize_dataset(ds: Dataset, tokenizer, preference: bool = False, max_len: int | None = None) -> Dataset:
    """Token ids for training. SFT rows get `input_ids`/`labels`; preference rows get prompt, chosen and rejected ids.

    Rows whose answer is longer than `max_len` tokens are dropped (a truncated answer would teach a
    cut-off label); a generated answer is never longer, so labels a model wrote are always kept.
    """
    if preference:

        def fn(row):
            chosen = tokenize_example(tokenizer, row["question"], row["chosen"])
            rejected = tokenize_example(tokenizer, row["question"], row["rejected"])
            return {
                "prompt_input_ids": prompt_ids(tokenizer, row["question"]),
                "chosen_input_ids": chosen["input_ids"],
                "chosen_labels": chosen["labels"],
                "rejected_input_ids": rejected["input_ids"],
                "rejected_labels": rejected["labels"],
            }

        labels = ("chosen_labels", "rejected_labels")
    else:

        def fn(row):
            return tokenize_example(tokenizer, row["question"], first(row["answer"]))

        labels = ("labels",)
    out = ds.map(fn, desc="tokenize")
    if max_len:

        def short_enough(row) -> bool:  # answer tokens + eos
            return all(sum(t != -100 for t in row[c]) <= max_len + 1 for c in labels)

        n = len(out)
        out = out.filter(short_enough, desc="length filter")
        if n and not len(out):
            raise ConfigError(f"0 of {n} training rows left: {n} dropped because their answers are longer than "
                              f"max_len={max_len} tokens (raise --max_len to keep them)")  # fmt: skip
        if len(out) < n:
            # Silent drops would bias a run towards short answers without anyone noticing.
            logger.warning("max_len filter dropped %d of %d training rows (%.1f%%): their answers are longer "
                           "than max_len=%d tokens (raise --max_len to keep them)", n - len(out), n,
                           100 * (n - len(out)) / n, max_len)  # fmt: skip
    return out


# What the pipelines in scripts/ read from a task's entry instead of spelling it again.
SCRIPT_FACTS = ("weak_label_temp", "proposal_temp", "dpo_sample_temp")


def main(ds_name: str, fact: str) -> None:
    """Print one fact of a task's entry (the pipelines' sampling temperatures come from here).

    python -m iterative_label_refinement.core.datasets --ds_name=saferpaca --fact=proposal_temp
    """
    entry = get_dataset_config(ds_name)
    if fact not in SCRIPT_FACTS:
        raise ConfigError(f"Unknown fact {fact!r}. Valid: {list(SCRIPT_FACTS)}")
    print(getattr(entry, fact))


if __name__ == "__main__":
    from iterative_label_refinement.core import datasets
    from iterative_label_refinement.core.cli import run_cli
    from iterative_label_refinement.plugins import load_plugins

    load_plugins()
    # The plug-ins register into the imported module's registry, not into this `__main__` copy's.
    run_cli(datasets.main)
