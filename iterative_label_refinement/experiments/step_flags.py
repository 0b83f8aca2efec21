"""The flags the refinement step CLIs share (experiments.ilr, naive, dpo, refine), each declared once.

Each CLI declares the runs it judges and its method's parameters in its signature and takes these
dataclasses as parameters, which `core.cli.expand_flags` spreads into its flags: `StepInputs`
and `StepFlags` (every step), `FeedbackFlags` (every step that takes comparisons: where they come from).
`StepFlags.run` is the one call of `core.refinement_step.run_step` they all make.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from iterative_label_refinement.core.cli import NON_NEGATIVE, POSITIVE, REQUIRED, Valid, flag
from iterative_label_refinement.core.judge import judge_flags
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.core.refinement_step import FEEDBACK_SOURCES, run_step


@dataclass(frozen=True)
class StepInputs:
    """The task and the weak run whose labels a step refines."""

    ds_name: str = flag(REQUIRED, "the task (a registered dataset), the weak run's")
    weak_model_path: str = flag(REQUIRED, "the weak run dir: the labels refined are its, the label set goes there")


@dataclass(frozen=True)
class FeedbackFlags:
    """Where a step's comparisons come from (README "Feedback sources", docs/feedback_sources.md)."""

    evaluator_path: str | None = flag(None, "the trained evaluator's dir, with --feedback=evaluator")
    batch_size: Annotated[int, POSITIVE] = flag(32, "comparisons per evaluator batch")
    feedback: Annotated[str, Valid(choices=FEEDBACK_SOURCES)] = flag(
        "evaluator", "evaluator (--evaluator_path), judge (an LLM judge) or human (people's verdicts)")  # fmt: skip
    judge_base_url: str | None = flag(
        None, "the judge's OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1 ($ILR_FEEDBACK_JUDGE_BASE_URL)")  # fmt: skip
    judge_model: str | None = flag(None, "the model the judge's server serves ($ILR_FEEDBACK_JUDGE_MODEL)")
    judge_api_key: str | None = flag(None, "the judge server's key, never recorded ($ILR_FEEDBACK_JUDGE_API_KEY)")
    verdicts_path: str | None = flag(None, "with --feedback=human: run the step on people's verdicts in this file")
    export_comparisons: str | None = flag(
        None, "with --feedback=human: write the comparisons this step asks to this folder, and stop")  # fmt: skip

    def step_kwargs(self) -> dict[str, Any]:
        """run_step's feedback arguments; the judge's endpoint is resolved (and judge flags without a judge refused)."""
        judge = judge_flags(self.feedback, self.judge_base_url, self.judge_model, self.judge_api_key)
        return dict(evaluator_path=self.evaluator_path, batch_size=self.batch_size, feedback=self.feedback,
                    judge=judge, verdicts_path=self.verdicts_path, export_comparisons=self.export_comparisons)  # fmt: skip


@dataclass(frozen=True)
class StepFlags:
    """What every refinement step takes beside its runs and its method's parameters."""

    round_id: Annotated[int, NON_NEGATIVE] = flag(0, "the round: its runs proposed the answers, its labels are refined")
    save_results: bool = flag(True, "write the label set (False: only print its path)")
    seed: Annotated[int, NON_NEGATIVE] = flag(0, "seed of the step's random choices and of the label set's order")
    start_with_correct_labels: bool = flag(False, "round 0 starts from the correct weak labels only (`cor` methods)")
    force: bool = flag(False, "redo a finished step")
    print_save_path: bool = flag(False, "print the label set's path (the last stdout line) and read nothing")

    def run(self, inputs: StepInputs, method: Method, runs: dict[str, str | None],
            source: FeedbackFlags | None = None) -> str:  # fmt: skip
        """Run `method`'s step on the given runs (those named None are not given) and return the label set's path."""
        given = {name: path for name, path in runs.items() if path is not None}
        more = source.step_kwargs() if source is not None else {}
        return run_step(inputs.ds_name, inputs.weak_model_path, method, self.round_id, given, seed=self.seed,
                        save_results=self.save_results, force=self.force, print_save_path=self.print_save_path,
                        **more)  # fmt: skip
