"""One round of iterative label refinement.

    python -m iterative_label_refinement.experiments.ilr --ds_name=gsm8k --weak_model_path=<weak run> \
        --model1_path=<half 1 run> --model2_path=<half 2 run> --evaluator_path=<evaluator> --round_id=0

Cross-fitted proposals (each half model labelled the half it did not see) replace current labels
that the evaluator prefers them to; at most `max_replace` of the disagreements change per round.
Writes `<weak run>/<cor?><ora?>ilr<max_replace>_<round>_weak_labels`.
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
    check_known_acc,
    check_round,
    first,
    label_accuracy,
    load_current_labels,
    load_label_set,
    refined_path,
    save_label_set,
)
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.core.refinement import (
    ilr_decide,
    match_proposals,
    refined_rows,
)

logger = get_logger(__name__)


def main(
    ds_name: str,
    weak_model_path: str,
    model1_path: str,
    model2_path: str,
    evaluator_path: str | None = None,
    round_id: int = 0,
    save_results: bool = True,
    max_replace: float = 0.1,
    seed: int = 0,
    use_oracle_feedback: bool = False,
    start_with_correct_labels: bool = False,
    batch_size: int = 32,
    force: bool = False,
    print_save_path: bool = False,
) -> str:
    """Refine the current labels with the half models' proposals and the evaluator's verdicts."""
    ds_cfg = get_dataset_config(ds_name)
    method = Method("ilr", oracle=use_oracle_feedback, correct_start=start_with_correct_labels, max_replace=max_replace)
    out_path = refined_path(weak_model_path, method, round_id)
    if print_save_path:  # naming needs only the flags: nothing is read
        print(out_path)
        return str(out_path)
    check_round(round_id, model1_path=model1_path, model2_path=model2_path)
    if already_done(out_path, force):
        return str(out_path)
    from iterative_label_refinement.core.evaluator import load_feedback_evaluator

    evaluator = load_feedback_evaluator(evaluator_path, use_oracle_feedback)

    labels = load_current_labels(weak_model_path, method, round_id, method.correct_start)
    proposal_paths = [Path(p) / "weak_labels" for p in (model1_path, model2_path)]
    proposal_sets = [load_label_set(p, REFINEMENT_COLUMNS) for p in proposal_paths]
    if use_oracle_feedback:
        for ds, path in zip(proposal_sets, proposal_paths):
            check_known_acc(ds, path, "--use_oracle_feedback")
    questions = list(labels["question"])
    proposals = match_proposals(questions, proposal_sets)
    current = [first(a) for a in labels["answer"]]
    proposed = [first(p["answer"]) for p in proposals]
    agree = ds_cfg.agreement(current, proposed, list(labels))

    scores = [-1.0] * len(labels)
    compared = [i for i, a in enumerate(agree) if not a]
    if compared:
        if use_oracle_feedback:
            values = [float(first(proposals[i]["acc"])) for i in compared]
        else:
            from iterative_label_refinement.core.evaluator import debiased_scores

            values = debiased_scores(evaluator, [questions[i] for i in compared], [current[i] for i in compared],
                                     [proposed[i] for i in compared], batch_size=batch_size).tolist()  # fmt: skip
        for i, v in zip(compared, values):
            scores[i] = v
    decision = ilr_decide(agree, scores, max_replace, oracle=use_oracle_feedback)

    rows = refined_rows(labels, proposals, decision.replace, scores)
    before, after = label_accuracy(list(labels["acc"])), label_accuracy([r["acc"] for r in rows])
    logger.info(
        "ILR round %d: %d rows, %d agreed, %d compared, %d replaced (threshold %.3f); label accuracy %s -> %s",
        round_id, len(rows), sum(agree), len(compared), sum(decision.replace), decision.threshold,
        f"{before:.4f}" if before is not None else "n/a", f"{after:.4f}" if after is not None else "n/a",
    )  # fmt: skip
    return save_label_set(rows, out_path, seed, save_results)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
