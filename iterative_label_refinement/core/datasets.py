"""The task registry: where each task's data comes from, its length budget, and its metric.

Task data is a `DatasetDict` (`train`, `test`) with `question` and `answer` columns, read from
`$ILR_DATA_PATH/<name>` (default `data/<name>`, built by `experiments.prepare_data`). The offline
synthetic task is generated from a seed instead, so tests and the demo need no preparation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.common import ConfigError, format_prompt, get_data_path, get_logger, load_env
from iterative_label_refinement.core.label_sets import first
from iterative_label_refinement.core.raw_data import (
    BIRD_HINT,
    GSM8K_HINT,
    SAFERPACA_HINT,
    prepare_bird,
    prepare_gsm8k,
    prepare_saferpaca,
)
from iterative_label_refinement.toy import arithmetic

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
    # `--saferpaca_mode` values: mode -> the `category` a run keeps (general-only or safety-only runs).
    modes: dict[int, str] = field(default_factory=dict)
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


_REGISTRY: dict[str, DatasetConfig] = {}
VALID_DATASETS: list[str] = []
DATASET_MAX_LEN: dict[str, int] = {}
DATASET_EVAL_FUNC: dict[str, Metric] = {}


def register_dataset(config: DatasetConfig) -> DatasetConfig:
    _REGISTRY[config.name] = config
    if config.name not in VALID_DATASETS:
        VALID_DATASETS.append(config.name)
    DATASET_MAX_LEN[config.name] = config.max_len
    DATASET_EVAL_FUNC[config.name] = config.metric
    return config


def preparable_datasets() -> list[str]:
    """The tasks `experiments.prepare_data` builds from raw files."""
    return [name for name in VALID_DATASETS if _REGISTRY[name].preparer is not None]


def get_dataset_config(ds_name: str) -> DatasetConfig:
    if ds_name not in _REGISTRY:
        raise ConfigError(f"Unknown dataset {ds_name!r}. Valid: {VALID_DATASETS}")
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


# ---------------------------------------------------------------------------------------------
# Registered tasks
# ---------------------------------------------------------------------------------------------


def _gsm8k_metric(predictions, references, rows=None):
    from iterative_label_refinement.metrics.eval_gsm8k import gsm8k_eval_func, normalize_numbers

    normalize = normalize_numbers()
    return [gsm8k_eval_func(p, r, normalize) for p, r in zip(predictions, references)]


def bird_root() -> str | None:
    """$ILR_BIRD_PATH; may be unset only when $ILR_BIRD_DB_URLS names every database."""
    load_env()
    root = os.environ.get("ILR_BIRD_PATH")
    if not root and not os.environ.get("ILR_BIRD_DB_URLS"):
        raise ConfigError(
            "BIRD scoring executes SQL: set ILR_BIRD_PATH to the folder holding <db>/<db>.sqlite "
            "(or ILR_BIRD_DB_URLS to a JSON file of SQLAlchemy URLs)"
        )
    return root


def _bird_metric(predictions, references, rows):
    from iterative_label_refinement.metrics.eval_bird import bird_eval_func

    return bird_eval_func(list(predictions), list(references), [r["db_name"] for r in rows], bird_root(), 30.0)


def _saferpaca_metric(predictions, references, rows):
    from iterative_label_refinement.metrics.eval_saferpaca import saferpaca_eval_func

    return saferpaca_eval_func(list(predictions), list(references), [r["question"] for r in rows])


def _same_final_answer(current, proposals, rows=None):
    from iterative_label_refinement.metrics.eval_gsm8k import normalize_numbers, same_final_answer

    normalize = normalize_numbers()
    return [same_final_answer(a, b, normalize) for a, b in zip(current, proposals)]


def _same_execution_result(current, proposals, rows):
    """BIRD: two queries agree when they return the same set of rows (the metric's own executor)."""
    from iterative_label_refinement.metrics.eval_bird import same_execution_result

    return same_execution_result(list(current), list(proposals), [r["db_name"] for r in rows], bird_root())


def _similar_embedding(current, proposals, rows=None):
    """SaferPaca: cosine similarity of the two answers above the median of this batch."""
    import numpy as np

    from iterative_label_refinement.core.embedder import get_embedder

    if not len(current):
        return []
    sims = get_embedder().similarity(list(current), list(proposals))
    return list(sims > np.median(sims))


def _arith_loader(split: str) -> Dataset:
    from datasets import Dataset

    rows = _arith_rows()
    if split not in rows:
        raise ConfigError(f"toy_arith has splits {list(rows)}, not {split!r}")
    return Dataset.from_list(rows[split])


_ARITH_CACHE: dict[str, list[dict[str, str]]] = {}


def _arith_rows() -> dict[str, list[dict[str, str]]]:
    if not _ARITH_CACHE:
        _ARITH_CACHE.update(arithmetic.make_task(n_train=4000, n_test=1000, seed=1234))
    return _ARITH_CACHE


def _check_bird_databases(splits: Sequence[Dataset]) -> None:
    """Scoring executes SQL on every database the rows name: each must open before training starts."""
    from iterative_label_refinement.metrics.eval_bird import check_bird_databases

    check_bird_databases([name for ds in splits for name in ds["db_name"]], bird_root())


register_dataset(
    DatasetConfig(
        name="gsm8k",
        loader=prepared_loader("gsm8k"),
        max_len=256,
        metric=_gsm8k_metric,
        agreement=_same_final_answer,
        answer_marker="####",
        preparer=prepare_gsm8k,
        hub_source=("openai/gsm8k", "main"),
        prepare_hint=GSM8K_HINT,
        judge_template="gsm8k.txt",
    )
)
register_dataset(
    DatasetConfig(
        name="bird",
        loader=prepared_loader("bird"),
        max_len=256,
        metric=_bird_metric,
        agreement=_same_execution_result,
        extra_columns=("db_name", "db_schema"),
        check_rows=_check_bird_databases,
        preparer=prepare_bird,
        prepare_hint=BIRD_HINT,
        judge_template="bird.txt",
    )
)
register_dataset(
    DatasetConfig(
        name="saferpaca",
        loader=prepared_loader("saferpaca"),
        max_len=512,
        metric=_saferpaca_metric,
        agreement=_similar_embedding,
        extra_columns=("category",),
        score_labels=False,
        modes={1: "general", 2: "safety"},
        preparer=prepare_saferpaca,
        prepare_hint=SAFERPACA_HINT,
        judge_template="saferpaca.txt",
        # Open-ended answers: every sample is drawn at 1.0, as in the reference's SaferPaca scripts.
        weak_label_temp=1.0,
        proposal_temp=1.0,
        dpo_sample_temp=1.0,
    )
)
register_dataset(
    DatasetConfig(
        name="toy_arith",
        loader=_arith_loader,
        max_len=96,
        metric=_gsm8k_metric,
        agreement=_same_final_answer,
        judge_template="toy_arith.txt",
    )
)

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
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
