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

from typing import Annotated

from iterative_label_refinement.core.cli import FRACTION, NON_NEGATIVE, POSITIVE, Valid
from iterative_label_refinement.core.judge import judge_flags
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.core.refinement_step import FEEDBACK_SOURCES, run_step


def main(
    ds_name: str,
    weak_model_path: str,
    strong_model_path: str,
    evaluator_path: str | None = None,
    round_id: Annotated[int, NON_NEGATIVE] = 0,
    save_results: bool = True,
    subsample: Annotated[float, FRACTION] = 1.0,
    seed: Annotated[int, NON_NEGATIVE] = 0,
    use_oracle_feedback: bool = False,
    start_with_correct_labels: bool = False,
    beta: Annotated[float, POSITIVE] = 0.1,
    batch_size: Annotated[int, POSITIVE] = 32,
    neutral_oracle_ties: bool = False,
    force: bool = False,
    print_save_path: bool = False,
    feedback: Annotated[str, Valid(choices=FEEDBACK_SOURCES)] = "evaluator",
    judge_base_url: str | None = None,
    judge_model: str | None = None,
    judge_api_key: str | None = None,
    verdicts_path: str | None = None,
    export_comparisons: str | None = None,
) -> str:
    """Write the preference pairs of round `round_id` (flags as in the reference, plus):

    batch_size: evaluator batch size. neutral_oracle_ties: with oracle feedback, a pair whose two
    answers are both right or both wrong scores 0.5 (no preference) instead of the reference's 0.
    force: redo a finished step.
    feedback: where comparisons come from (README "Feedback sources", docs/feedback_sources.md):
    `evaluator` (--evaluator_path), `judge` (an LLM judge: --judge_base_url, --judge_model,
    --judge_api_key or $ILR_FEEDBACK_JUDGE_*) or `human` (--export_comparisons=<folder> writes the comparisons
    this step asks, --verdicts_path=<file> runs it on people's verdicts).
    """
    # The neutral-ties variant writes its own label set ("nt"), so it never passes for a reference-rule run.
    method = Method("dpo", oracle=use_oracle_feedback, correct_start=start_with_correct_labels, beta=beta,
                    subsample=subsample, neutral_ties=neutral_oracle_ties)  # fmt: skip
    return run_step(ds_name, weak_model_path, method, round_id, dict(strong_model_path=strong_model_path),
                    evaluator_path=evaluator_path, batch_size=batch_size, seed=seed, save_results=save_results,
                    force=force, print_save_path=print_save_path, feedback=feedback,
                    judge=judge_flags(feedback, judge_base_url, judge_model, judge_api_key),
                    verdicts_path=verdicts_path, export_comparisons=export_comparisons)  # fmt: skip


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
