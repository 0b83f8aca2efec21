"""A refinement step of any kind of method, the paper's three and every kind added beside them.

    python -m iterative_label_refinement.experiments.refine --kind=ilr --ds_name=gsm8k \
        --weak_model_path=<weak run> --model1_path=<half 1 run> --model2_path=<half 2 run> \
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

from iterative_label_refinement.core.cli import FRACTION, NON_NEGATIVE, POSITIVE, Valid
from iterative_label_refinement.core.judge import judge_flags
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.core.refinement_step import FEEDBACK_SOURCES, run_step


def main(
    kind: str,
    ds_name: str,
    weak_model_path: str,
    model1_path: str | None = None,
    model2_path: str | None = None,
    strong_model_path: str | None = None,
    evaluator_path: str | None = None,
    round_id: Annotated[int, NON_NEGATIVE] = 0,
    max_replace: Annotated[float | None, FRACTION] = None,
    beta: Annotated[float | None, POSITIVE] = None,
    subsample: Annotated[float | None, FRACTION] = None,
    use_oracle_feedback: bool = False,
    neutral_oracle_ties: bool = False,
    start_with_correct_labels: bool = False,
    seed: Annotated[int, NON_NEGATIVE] = 0,
    batch_size: Annotated[int, POSITIVE] = 32,
    save_results: bool = True,
    force: bool = False,
    print_save_path: bool = False,
    feedback: Annotated[str, Valid(choices=FEEDBACK_SOURCES)] = "evaluator",
    judge_base_url: str | None = None,
    judge_model: str | None = None,
    judge_api_key: str | None = None,
    verdicts_path: str | None = None,
    export_comparisons: str | None = None,
    redraw_each_round: bool = False,
) -> str:
    """Run round `round_id`'s step of the method `kind` with these parameters (as in
    `experiments.ilr`, `naive` and `dpo`), among them:

    max_replace: ilr replaces the disagreeing labels whose proposal scores strictly above
    max(0.5, the (1 - max_replace) quantile of the m disagreements' scores): at most
    ceil(max_replace (m - 1)), more than a `max_replace` fraction when m is small (1 of 2 at 0.1,
    4 of 26 at 0.15). naive replaces exactly int(n * max_replace) of its n labels.
    redraw_each_round: naive only; each round replaces other rows instead of the reference's same
    questions every round (its label sets are named `naive<max_replace>rd`).
    feedback: where comparisons come from (README "Feedback sources", docs/feedback_sources.md):
    `evaluator` (--evaluator_path), `judge` (an LLM judge: --judge_base_url, --judge_model,
    --judge_api_key or $ILR_FEEDBACK_JUDGE_*) or `human` (--export_comparisons=<folder> writes the comparisons
    this step asks, --verdicts_path=<file> runs it on people's verdicts).
    """
    method = Method(kind, oracle=use_oracle_feedback, correct_start=start_with_correct_labels, max_replace=max_replace,
                    beta=beta, subsample=subsample, neutral_ties=neutral_oracle_ties,
                    redraw_each_round=redraw_each_round)  # fmt: skip
    runs = dict(model1_path=model1_path, model2_path=model2_path, strong_model_path=strong_model_path)
    return run_step(ds_name, weak_model_path, method, round_id, {k: v for k, v in runs.items() if v is not None},
                    evaluator_path=evaluator_path, batch_size=batch_size, seed=seed, save_results=save_results,
                    force=force, print_save_path=print_save_path, feedback=feedback,
                    judge=judge_flags(feedback, judge_base_url, judge_model, judge_api_key),
                    verdicts_path=verdicts_path, export_comparisons=export_comparisons)  # fmt: skip


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
