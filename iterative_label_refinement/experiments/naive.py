"""naive ILR: replace a random `max_replace` fraction of labels by proposals, no feedback.

    python -m iterative_label_refinement.experiments.naive --ds_name=gsm8k --weak_model_path=<weak run> \
        --model1_path=<half 1 run> --model2_path=<half 2 run> --round_id=0

Proposals are matched to labels by question (the reference paired them by sorted position).
Writes `<weak run>/<cor?>naive<max_replace>_<round>_weak_labels`.
`--print_save_path` prints that path (the last stdout line) and reads nothing: the same flags name
the step before any of its inputs exist.
"""

from __future__ import annotations

from pathlib import Path

from iterative_label_refinement.core.common import get_logger
from iterative_label_refinement.core.datasets import get_dataset_config
from iterative_label_refinement.core.label_sets import (
    REFINEMENT_COLUMNS,
    already_done,
    check_round,
    label_accuracy,
    load_current_labels,
    load_label_set,
    refined_path,
    save_label_set,
)
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.core.refinement import (
    match_proposals,
    naive_choice,
    refined_rows,
)

logger = get_logger(__name__)


def main(
    ds_name: str,
    weak_model_path: str,
    model1_path: str,
    model2_path: str,
    round_id: int = 0,
    save_results: bool = True,
    max_replace: float = 0.1,
    seed: int = 0,
    start_with_correct_labels: bool = False,
    force: bool = False,
    print_save_path: bool = False,
) -> str:
    get_dataset_config(ds_name)
    method = Method("naive", correct_start=start_with_correct_labels, max_replace=max_replace)
    out_path = refined_path(weak_model_path, method, round_id)
    if print_save_path:  # naming needs only the flags: nothing is read
        print(out_path)
        return str(out_path)
    check_round(round_id, model1_path=model1_path, model2_path=model2_path)
    if already_done(out_path, force):
        return str(out_path)
    labels = load_current_labels(weak_model_path, method, round_id, method.correct_start)
    proposal_sets = [load_label_set(Path(p) / "weak_labels", REFINEMENT_COLUMNS) for p in (model1_path, model2_path)]
    proposals = match_proposals(list(labels["question"]), proposal_sets)
    replace = naive_choice(len(labels), max_replace, seed=seed + round_id)
    rows = refined_rows(labels, proposals, replace, [-1.0] * len(labels))
    logger.info(
        "naive round %d: %d of %d labels replaced; label accuracy %s -> %s", round_id, sum(replace), len(rows),
        label_accuracy(list(labels["acc"])), label_accuracy([r["acc"] for r in rows]),
    )  # fmt: skip
    return save_label_set(rows, out_path, seed, save_results)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
