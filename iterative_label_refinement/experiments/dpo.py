"""Preference labels for a DPO round.

    python -m iterative_label_refinement.experiments.dpo --ds_name=gsm8k --weak_model_path=<weak run>
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

from iterative_label_refinement.core.cli import FRACTION, POSITIVE, expand_flags
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.experiments.step_flags import FeedbackFlags, StepFlags, StepInputs


@expand_flags
def main(
    inputs: StepInputs,
    strong_model_path: str,
    subsample: Annotated[float, FRACTION] = 1.0,
    beta: Annotated[float, POSITIVE] = 0.1,
    use_oracle_feedback: bool = False,
    neutral_oracle_ties: bool = False,
    *,
    step: StepFlags,
    source: FeedbackFlags,
) -> str:
    """Write the preference pairs of round `round_id` (flags as in the reference, plus `neutral_oracle_ties`).

    Args:
        strong_model_path: the run of round `round_id` whose 6 samples per prompt are paired
        subsample: the most confident fraction of the pairs kept
        beta: the DPO beta of the round these pairs train (it names the label set)
        use_oracle_feedback: the ground truth says which answer is better
        neutral_oracle_ties: with oracle feedback, a pair whose two answers are both right or both wrong scores
            0.5 (no preference) instead of the reference's 0
    """
    # The neutral-ties variant writes its own label set ("nt"), so it never passes for a reference-rule run.
    method = Method("dpo", oracle=use_oracle_feedback, correct_start=step.start_with_correct_labels, beta=beta,
                    subsample=subsample, neutral_ties=neutral_oracle_ties)  # fmt: skip
    return step.run(inputs, method, dict(strong_model_path=strong_model_path), source)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
