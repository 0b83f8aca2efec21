"""SaferPaca: open-ended instructions (general and safety), scored by an LLM judge against the reference."""

from __future__ import annotations

from iterative_label_refinement.core.datasets import DatasetConfig, prepared_loader, register_dataset
from iterative_label_refinement.core.raw_data import SAFERPACA_HINT, prepare_saferpaca
from iterative_label_refinement.metrics.eval_saferpaca import saferpaca_eval_func


def judge_metric(predictions, references, rows) -> list[float]:
    return saferpaca_eval_func(list(predictions), list(references), [r["question"] for r in rows])


def similar_embedding(current, proposals, rows=None) -> list[bool]:
    """ILR's agreement check: cosine similarity of the two answers above the median of this batch."""
    import numpy as np

    from iterative_label_refinement.core.embedder import get_embedder

    if not len(current):
        return []
    sims = get_embedder().similarity(list(current), list(proposals))
    return list(sims > np.median(sims))


register_dataset(
    DatasetConfig(
        name="saferpaca",
        loader=prepared_loader("saferpaca"),
        max_len=512,
        metric=judge_metric,
        agreement=similar_embedding,
        extra_columns=("category",),
        score_labels=False,
        modes={1: "general", 2: "safety"},
        subset_column="category",
        evaluator_modes=(1, 2),
        preparer=prepare_saferpaca,
        prepare_hint=SAFERPACA_HINT,
        judge_template="saferpaca.txt",
        # Open-ended answers: every sample is drawn at 1.0, as in the reference's SaferPaca scripts.
        weak_label_temp=1.0,
        proposal_temp=1.0,
        dpo_sample_temp=1.0,
    )
)
