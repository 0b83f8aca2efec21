"""One round of iterative label refinement.

    python -m iterative_label_refinement.experiments.ilr --ds_name=gsm8k --weak_model_path=<weak run>
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

from iterative_label_refinement.core.cli import FRACTION, expand_flags
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.experiments.step_flags import FeedbackFlags, StepFlags, StepInputs


@expand_flags
def main(
    inputs: StepInputs,
    model1_path: str,
    model2_path: str,
    max_replace: Annotated[float, FRACTION] = 0.1,
    use_oracle_feedback: bool = False,
    *,
    step: StepFlags,
    source: FeedbackFlags,
) -> str:
    """Refine the current labels with the half models' proposals and the evaluator's verdicts.

    Args:
        model1_path: the run trained on half 1 of the labels: it proposes answers for half 2
        model2_path: the run trained on half 2 of the labels: it proposes answers for half 1
        max_replace: in (0, 1]; the (1 - max_replace) quantile of the disagreements' scores is the threshold, so
            about that fraction of them change, at most ceil(max_replace (m - 1)) of m
        use_oracle_feedback: every correct proposal replaces its label (the ground truth as feedback)
    """
    method = Method("ilr", oracle=use_oracle_feedback, correct_start=step.start_with_correct_labels,
                    max_replace=max_replace)  # fmt: skip
    return step.run(inputs, method, dict(model1_path=model1_path, model2_path=model2_path), source)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
