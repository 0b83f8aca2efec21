"""Preference labels for a DPO round.

    python -m iterative_label_refinement.experiments.dpo --ds_name=gsm8k --weak_model_path=<weak run> \
        --strong_model_path=<round r run> --evaluator_path=<evaluator> --round_id=r

The round's model drew 6 samples per prompt; samples are paired (0,1), (2,3), (4,5), the evaluator
says how likely the second is better (both orders, debiased: the reference release asked in one
order only), and the most confident `subsample` fraction becomes chosen/rejected pairs; pairs of
equal confidence are ranked in a seeded random order, as in the reference.
Writes `<weak run>/<cor?><ora?>dpo<beta><subsample>_<round>_weak_labels` (with `nt` after the
subsample for `--neutral_oracle_ties`).
`--print_save_path` prints that path (the last stdout line) and reads nothing: the same flags name
the step before any of its inputs exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset

from iterative_label_refinement.core.common import ConfigError, get_logger
from iterative_label_refinement.core.datasets import get_dataset_config
from iterative_label_refinement.core.label_sets import (
    REFINEMENT_COLUMNS,
    already_done,
    check_known_acc,
    check_round,
    load_label_set,
    refined_path,
    save_label_set,
)
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.core.refinement import (
    oracle_pair_score,
    sample_pairs,
    select_preferences,
)

logger = get_logger(__name__)


def preference_rows(samples: Dataset, extras: tuple[str, ...], scorer, subsample: float,
                    seed: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Pair every prompt's samples, score each pair with `scorer(pairs) -> P(second better)`, keep the
    most confident `subsample` fraction (ties in seeded random order), and return preference rows."""
    rows = list(samples)
    for i, row in enumerate(rows):
        if not isinstance(row["answer"], list) or len(row["answer"]) < 2:
            raise ConfigError(f"row {i} holds {row['answer']!r}: DPO needs several samples per prompt (num_samples=6)")
    pairs = [(r, a, b) for r, row in enumerate(rows) for a, b in sample_pairs(row["answer"])]
    scores = scorer(rows, pairs)
    out = []
    for pref in select_preferences(pairs, scores, subsample, seed):
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
    neutral_oracle_ties: bool = False,
    force: bool = False,
    print_save_path: bool = False,
) -> str:
    """Write the preference pairs of round `round_id` (flags as in the reference, plus):

    batch_size: evaluator batch size. neutral_oracle_ties: with oracle feedback, a pair whose two
    answers are both right or both wrong scores 0.5 (no preference) instead of the reference's 0.
    force: redo a finished step.
    """
    ds_cfg = get_dataset_config(ds_name)
    # The neutral-ties variant writes its own label set ("nt"), so it never passes for a reference-rule run.
    method = Method("dpo", oracle=use_oracle_feedback, correct_start=start_with_correct_labels, beta=beta,
                    subsample=subsample, neutral_ties=neutral_oracle_ties)  # fmt: skip
    out_path = refined_path(weak_model_path, method, round_id)
    if print_save_path:  # naming needs only the flags: nothing is read
        print(out_path)
        return str(out_path)
    check_round(round_id, strong_model_path=strong_model_path)
    if already_done(out_path, force):
        return str(out_path)
    from iterative_label_refinement.core.evaluator import debiased_scores, load_feedback_evaluator

    evaluator = load_feedback_evaluator(evaluator_path, use_oracle_feedback)
    if evaluator is None:

        def scorer(rows, pairs):
            return [oracle_pair_score(rows[r]["acc"][a], rows[r]["acc"][b], neutral_oracle_ties) for r, a, b in pairs]

    else:

        def scorer(rows, pairs):
            # P(second better) = debiased P(accept changing the first answer to the second).
            return debiased_scores(evaluator, [rows[r]["question"] for r, _, _ in pairs],
                                   [rows[r]["answer"][a] for r, a, _ in pairs],
                                   [rows[r]["answer"][b] for r, _, b in pairs], batch_size=batch_size).tolist()  # fmt: skip

    samples_path = Path(strong_model_path) / "weak_labels"
    samples = load_label_set(samples_path, REFINEMENT_COLUMNS)
    if use_oracle_feedback:
        check_known_acc(samples, samples_path, "--use_oracle_feedback")
    rows = preference_rows(samples, ds_cfg.extra_columns, scorer, subsample, seed)
    accs = [r["acc"] for r in rows if r["acc"] is not None]
    logger.info("DPO round %d: kept %d preference pairs; chosen answers correct: %s", round_id, len(rows),
                f"{sum(accs) / len(accs):.4f}" if accs else "n/a")  # fmt: skip
    return save_label_set(rows, out_path, seed, save_results)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
