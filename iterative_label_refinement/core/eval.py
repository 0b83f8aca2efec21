"""Generate answers for a dataset and score them with the task's metric."""

from __future__ import annotations

import math
from typing import Any

from datasets import Dataset

from iterative_label_refinement.core.common import get_logger
from iterative_label_refinement.core.datasets import DatasetConfig
from iterative_label_refinement.core.generation import generate_answers

logger = get_logger(__name__)


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


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
        mean, se = mean_and_stderr([a for a in flat_acc if a is not None])
        logger.info("%s accuracy %.4f +- %.4f (n=%d answers)", desc, mean, se, len(flat_acc))
    return records
