"""A refinement step of any kind of method, the paper's three and every kind added beside them.

    python -m iterative_label_refinement.experiments.refine --kind=ilr --ds_name=gsm8k
                    --weak_model_path=<weak run> --model1_path=<half 1 run> --model2_path=<half 2 run>
                    --evaluator_path=<evaluator> --max_replace=0.15 --round_id=0

`experiments.ilr`, `naive` and `dpo` keep the reference release's flags and defaults for the
paper's kinds; this CLI takes their flags for any declared kind (`core.methods.MethodKind`) and
checks them against its declaration: dpo takes `beta` and `subsample`, ilr and naive
`max_replace`; each kind names the runs it judges (`model1_path` and `model2_path`, or dpo's
`strong_model_path`); a kind without feedback takes no `evaluator_path`.
Writes `<weak run>/<method>_<round>_weak_labels`; `--print_save_path` prints that path (the last
stdout line) and reads nothing.
"""

from __future__ import annotations

from typing import Annotated

from iterative_label_refinement.core.cli import FRACTION, POSITIVE, expand_flags
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.experiments.step_flags import FeedbackFlags, StepFlags, StepInputs


@expand_flags
def main(
    kind: str,
    inputs: StepInputs,
    model1_path: str | None = None,
    model2_path: str | None = None,
    strong_model_path: str | None = None,
    max_replace: Annotated[float | None, FRACTION] = None,
    beta: Annotated[float | None, POSITIVE] = None,
    subsample: Annotated[float | None, FRACTION] = None,
    use_oracle_feedback: bool = False,
    neutral_oracle_ties: bool = False,
    redraw_each_round: bool = False,
    *,
    step: StepFlags,
    source: FeedbackFlags,
) -> str:
    """Run round `round_id`'s step of the method `kind` with these parameters (as in
    `experiments.ilr`, `naive` and `dpo`).

    Args:
        kind: a declared method kind (core.methods.register_kind), e.g. ilr, naive or dpo
        model1_path: the run trained on half 1 of the labels (the kinds that judge the half models' proposals)
        model2_path: the run trained on half 2 of the labels (the kinds that judge the half models' proposals)
        strong_model_path: the run of round `round_id` whose samples dpo pairs
        max_replace: ilr replaces at most ceil(max_replace (m - 1)) of its m disagreeing labels, those whose
            proposal scores strictly above max(0.5, the (1 - max_replace) quantile of their scores), more than a
            max_replace fraction when m is small (1 of 2 at 0.1, 4 of 26 at 0.15); naive replaces exactly
            int(n * max_replace) of its n labels
        beta: dpo's beta of the round its pairs train (it names the label set)
        subsample: dpo keeps the most confident fraction of its pairs
        use_oracle_feedback: the ground truth is the feedback
        neutral_oracle_ties: dpo with oracle feedback: a pair of two right or two wrong answers scores 0.5, not 0
        redraw_each_round: naive only; each round replaces other rows instead of the reference's same questions
            every round (its label sets are named `naive<max_replace>rd`)
    """
    method = Method(kind, oracle=use_oracle_feedback, correct_start=step.start_with_correct_labels,
                    max_replace=max_replace, beta=beta, subsample=subsample, neutral_ties=neutral_oracle_ties,
                    redraw_each_round=redraw_each_round)  # fmt: skip
    runs = dict(model1_path=model1_path, model2_path=model2_path, strong_model_path=strong_model_path)
    return step.run(inputs, method, runs, source)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
