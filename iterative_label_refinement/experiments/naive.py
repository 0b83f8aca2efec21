"""naive ILR: replace a random `max_replace` fraction of labels by proposals, no feedback.

    python -m iterative_label_refinement.experiments.naive --ds_name=gsm8k --weak_model_path=<weak run>
                    --model1_path=<half 1 run> --model2_path=<half 2 run> --round_id=0

Proposals are matched to labels by question (the reference paired them by sorted position).
Which labels: as the reference, int(n * max_replace) positions of the rows sorted by question,
drawn with NumPy reseeded with `--seed` every round, so every round replaces the same questions
(`core.refinement.naive_choice`). `--redraw_each_round=True` draws other rows each round (Python's
`random` seeded with seed + round_id), this project's rule before it followed the reference.
Writes `<weak run>/<cor?>naive<max_replace>_<round>_weak_labels` (`...naive<max_replace>rd_...`
with `--redraw_each_round`). Label sets and runs named `naive<max_replace>` that were made before
the reference's rule became the default drew other rows each round: redo them (`--force`).
`--print_save_path` prints that path (the last stdout line) and reads nothing: the same flags name
the step before any of its inputs exist.
"""

from __future__ import annotations

from typing import Annotated

from iterative_label_refinement.core.cli import FRACTION, expand_flags
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.experiments.step_flags import StepFlags, StepInputs


@expand_flags
def main(
    inputs: StepInputs,
    model1_path: str,
    model2_path: str,
    max_replace: Annotated[float, FRACTION] = 0.1,
    redraw_each_round: bool = False,
    *,
    step: StepFlags,
) -> str:
    """Replace int(n * max_replace) random labels of the n by the half models' proposals, the same
    questions every round as in the reference (flags as in the reference, plus `redraw_each_round`).

    Args:
        model1_path: the run trained on half 1 of the labels: it proposes answers for half 2
        model2_path: the run trained on half 2 of the labels: it proposes answers for half 1
        max_replace: the fraction of the labels replaced
        redraw_each_round: each round replaces other rows (Python's `random`, seed + round_id) instead of the
            reference's same questions every round; its label sets are named `naive<max_replace>rd`
    """
    method = Method("naive", correct_start=step.start_with_correct_labels, max_replace=max_replace,
                    redraw_each_round=redraw_each_round)  # fmt: skip
    return step.run(inputs, method, dict(model1_path=model1_path, model2_path=model2_path))


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
