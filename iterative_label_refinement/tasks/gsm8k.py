"""GSM8K: grade-school math word problems, scored by the final answer after `####`."""

from __future__ import annotations

from iterative_label_refinement.core.datasets import DatasetConfig, prepared_loader, register_dataset
from iterative_label_refinement.core.raw_data import GSM8K_HINT, prepare_gsm8k
from iterative_label_refinement.metrics.eval_gsm8k import gsm8k_eval_func, normalize_numbers, same_final_answer


def final_answer_metric(predictions, references, rows=None) -> list[float]:
    """1.0 where a prediction's final answer (after `####`) is the reference's."""
    normalize = normalize_numbers()
    return [gsm8k_eval_func(p, r, normalize) for p, r in zip(predictions, references)]


def same_final_answer_agreement(current, proposals, rows=None) -> list[bool]:
    """ILR's agreement check: the two answers end in the same final answer."""
    normalize = normalize_numbers()
    return [same_final_answer(a, b, normalize) for a, b in zip(current, proposals)]


register_dataset(
    DatasetConfig(
        name="gsm8k",
        loader=prepared_loader("gsm8k"),
        max_len=256,
        metric=final_answer_metric,
        agreement=same_final_answer_agreement,
        answer_marker="####",
        preparer=prepare_gsm8k,
        hub_source=("openai/gsm8k", "main"),
        prepare_hint=GSM8K_HINT,
        judge_template="gsm8k.txt",
    )
)
