"""Preference labels for a DPO round (SPEC §7).

    python -m iterative_label_refinement.experiments.dpo --ds_name=gsm8k --weak_model_path=<weak run> \
        --strong_model_path=<round r run> --evaluator_path=<evaluator> --round_id=r

The round's model drew 6 samples per prompt; samples are paired (0,1), (2,3), (4,5), the evaluator
says how likely the second is better (both orders, debiased: the reference release asked in one
order only), and the most confident `subsample` fraction becomes chosen/rejected pairs.
Writes `<weak run>/<cor?><ora?>dpo<beta><subsample>_<round>_weak_labels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset

from iterative_label_refinement.core.common import ConfigError, get_logger
from iterative_label_refinement.core.datasets import get_dataset_config
from iterative_label_refinement.core.label_sets import (
    already_done,
    check_round,
    load_label_set,
    refined_path,
    save_label_set,
)
from iterative_label_refinement.core.refinement import (
    check_fraction,
    method_name,
    oracle_pair_score,
    sample_pairs,
    select_preferences,
)

logger = get_logger(__name__)


def preference_rows(samples: Dataset, extras: tuple[str, ...], scorer, subsample: float) -> list[dict[str, Any]]:
    """Pair every prompt's samples, score each pair with `scorer(pairs) -> P(second better)`, keep the
    most confident `subsample` fraction, and return SPEC §3 preference rows."""
    rows = list(samples)
    for i, row in enumerate(rows):
        if not isinstance(row["answer"], list) or len(row["answer"]) < 2:
            raise ConfigError(f"row {i} holds {row['answer']!r}: DPO needs several samples per prompt (num_samples=6)")
    pairs = [(r, a, b) for r, row in enumerate(rows) for a, b in sample_pairs(row["answer"])]
    scores = scorer(rows, pairs)
    out = []
    for pref in select_preferences(pairs, scores, subsample):
        row = rows[pref.row]
        chosen, rejected = (pref.second, pref.first) if pref.chosen_is_second else (pref.first, pref.second)
        record = {
            "question": row["question"],
            "chosen": row["answer"][chosen],
            "rejected": row["answer"][rejected],
            "gt_answer": row["gt_answer"],
            "score": pref.score,
            "acc": row["acc"][chosen] if row.get("acc") is not None else None,
        }
        out.append(record | {k: row[k] for k in extras if k in row})
    return out


def main(
    ds_name: str,
    weak_model_path: str,
    strong_model_path: str,
    evaluator_path: str | None = None,
    round_id: int = 0,
    save_results: bool = True,
    subsample: float = 1.0,
    seed: int = 0,
    use_oracle_feedback: bool = False,
    start_with_correct_labels: bool = False,
    beta: float = 0.1,
    batch_size: int = 32,
    force: bool = False,
) -> str:
    ds_cfg = get_dataset_config(ds_name)
    check_fraction("subsample", subsample)
    check_round(round_id, strong_model_path=strong_model_path)
    method = method_name("dpo", correct=start_with_correct_labels, oracle=use_oracle_feedback,
                         suffix=f"{beta}{subsample}")  # fmt: skip
    out_path = refined_path(weak_model_path, method, round_id)
    if already_done(out_path, force):
        return str(out_path)
    from iterative_label_refinement.core.evaluator import debiased_scores, load_feedback_evaluator

    evaluator = load_feedback_evaluator(evaluator_path, use_oracle_feedback)
    if evaluator is None:

        def scorer(rows, pairs):
            return [oracle_pair_score(rows[r]["acc"][a], rows[r]["acc"][b]) for r, a, b in pairs]

    else:

        def scorer(rows, pairs):
            # P(second better) = debiased P(accept changing the first answer to the second).
            return debiased_scores(evaluator, [rows[r]["question"] for r, _, _ in pairs],
                                   [rows[r]["answer"][a] for r, a, _ in pairs],
                                   [rows[r]["answer"][b] for r, _, b in pairs], batch_size=batch_size).tolist()  # fmt: skip

    samples = load_label_set(Path(strong_model_path) / "weak_labels")
    rows = preference_rows(samples, ds_cfg.extra_columns, scorer, subsample)
    accs = [r["acc"] for r in rows if r["acc"] is not None]
    logger.info("DPO round %d: kept %d preference pairs; chosen answers correct: %s", round_id, len(rows),
                f"{sum(accs) / len(accs):.4f}" if accs else "n/a")  # fmt: skip
    return save_label_set(rows, out_path, seed, save_results)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
