"""One round of iterative label refinement.

    python -m iterative_label_refinement.experiments.ilr --ds_name=gsm8k --weak_model_path=<weak run> \
        --model1_path=<half 1 run> --model2_path=<half 2 run> --evaluator_path=<evaluator> --round_id=0

Cross-fitted proposals (each half model labelled the half it did not see) replace current labels
that the evaluator prefers them to: those of the m disagreements whose score is strictly above
max(0.5, the (1 - max_replace) quantile of their scores), as the reference. That is at most
ceil(max_replace (m - 1)) rows, more than a `max_replace` fraction when m is small (1 of 2 at 0.1,
4 of 26 at 0.15; `core.refinement.ilr_threshold`). With `--use_oracle_feedback` every correct
proposal replaces its label, uncapped.
Writes `<weak run>/<cor?><ora?>ilr<max_replace>_<round>_weak_labels`.
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
    model1_path: str,
    model2_path: str,
    evaluator_path: str | None = None,
    round_id: Annotated[int, NON_NEGATIVE] = 0,
    save_results: bool = True,
    max_replace: Annotated[float, FRACTION] = 0.1,
    seed: Annotated[int, NON_NEGATIVE] = 0,
    use_oracle_feedback: bool = False,
    start_with_correct_labels: bool = False,
    batch_size: Annotated[int, POSITIVE] = 32,
    force: bool = False,
    print_save_path: bool = False,
    feedback: Annotated[str, Valid(choices=FEEDBACK_SOURCES)] = "evaluator",
    judge_base_url: str | None = None,
    judge_model: str | None = None,
    judge_api_key: str | None = None,
    verdicts_path: str | None = None,
    export_comparisons: str | None = None,
) -> str:
    """Refine the current labels with the half models' proposals and the evaluator's verdicts.

    max_replace: in (0, 1]; the (1 - max_replace) quantile of the disagreements' scores is the
    threshold, so about that fraction of them change, at most ceil(max_replace (m - 1)) of m.
    feedback: where comparisons come from (README "Feedback sources", docs/feedback_sources.md):
    `evaluator` (--evaluator_path), `judge` (an LLM judge: --judge_base_url, --judge_model,
    --judge_api_key or $ILR_FEEDBACK_JUDGE_*) or `human` (--export_comparisons=<folder> writes the comparisons
    this step asks, --verdicts_path=<file> runs it on people's verdicts).
    """
    method = Method("ilr", oracle=use_oracle_feedback, correct_start=start_with_correct_labels, max_replace=max_replace)
    return run_step(ds_name, weak_model_path, method, round_id, dict(model1_path=model1_path, model2_path=model2_path),
                    evaluator_path=evaluator_path, batch_size=batch_size, seed=seed, save_results=save_results,
                    force=force, print_save_path=print_save_path, feedback=feedback,
                    judge=judge_flags(feedback, judge_base_url, judge_model, judge_api_key),
                    verdicts_path=verdicts_path, export_comparisons=export_comparisons)  # fmt: skip


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
