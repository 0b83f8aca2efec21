"""Generate answers for a dataset and score them with the task's metric."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from datasets import Dataset

from iterative_label_refinement.core.datasets import DatasetConfig
from iterative_label_refinement.core.generation import generate_answers
from iterative_label_refinement.core.settings import get_logger

logger = get_logger(__name__)


def mean_and_stderr(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)) of the known values
    (None is skipped). The mean is None without values, the error None for fewer than two: one value
    has no spread to estimate, and a 0 would claim a certainty no run measured."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var / len(xs))


def evaluate_dataset(
    model: Any,
    tokenizer: Any,
    ds: Dataset,
    dataset: DatasetConfig,
    *,
    compute_acc: bool = True,
    desc: str = "eval",
    **gen_kwargs: Any,
) -> list[dict[str, Any]]:
    """Records `question, gt_answer, answer, acc, answer_ids` (answer/acc/ids are lists when
    `num_samples > 1`). `acc` is None when `compute_acc` is off (e.g. a judge that costs money).
    """
    gens = generate_answers(model, tokenizer, list(ds["question"]), desc=desc, **gen_kwargs)
    n_samples = len(gens.texts[0]) if gens.texts else 1
    rows = list(ds)
    flat_preds = [t for texts in gens.texts for t in texts]
    if compute_acc:
        metric = dataset.metric
        flat_refs = [r["answer"] for r in rows for _ in range(n_samples)]
        flat_rows = [r for r in rows for _ in range(n_samples)]
        flat_acc = [float(a) for a in metric(flat_preds, flat_refs, flat_rows)]
    else:
        flat_acc = [None] * len(flat_preds)
    records = []
    for i, row in enumerate(rows):
        acc = flat_acc[i * n_samples : (i + 1) * n_samples]
        record = {
            "question": row["question"],
            "gt_answer": row["answer"],
            "answer": gens.texts[i] if n_samples > 1 else gens.texts[i][0],
            "acc": acc if n_samples > 1 else acc[0],
            "answer_ids": gens.token_ids[i] if n_samples > 1 else gens.token_ids[i][0],
        }
        for extra in dataset.extra_columns:
            if extra in row:
                record[extra] = row[extra]
        records.append(record)
    if compute_acc:
        mean, se = mean_and_stderr(flat_acc)
        logger.info("%s accuracy %s +- %s (n=%d answers)", desc, _fmt(mean), _fmt(se), len(flat_acc))
    return records


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
