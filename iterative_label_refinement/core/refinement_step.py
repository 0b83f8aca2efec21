"""One refinement step of any method: the skeleton `experiments.ilr`, `naive` and `dpo` share.

A step names its output from the method and round, refuses model runs of another round, does
nothing when its label set exists, reads the current labels (ilr, naive) and the answers to judge
(the half models' proposals, or the round model's samples for dpo), asks the feedback (evaluator or
oracle) about them, decides with the pure functions of `core.refinement`, and saves the rows.
Each kind of method contributes only how its rows are decided and which runs it judges (`STEPS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.common import ConfigError, get_logger
from iterative_label_refinement.core.datasets import DatasetConfig, get_dataset_config
from iterative_label_refinement.core.label_sets import (
    REFINEMENT_COLUMNS,
    check_known_acc,
    check_round,
    current_labels_path,
    first,
    label_accuracy,
    load_current_labels,
    load_label_set,
    refined_path,
    save_label_set,
)
from iterative_label_refinement.core.locks import writing
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.core.provenance import (
    artifact_identity,
    evaluator_identity,
    read_record,
    reuse,
    run_identity,
)
from iterative_label_refinement.core.refinement import (
    dpo_pairs,
    ilr_decide,
    match_proposals,
    naive_choice,
    oracle_score,
    preference_rows,
    refined_rows,
)

if TYPE_CHECKING:
    from datasets import Dataset

    from iterative_label_refinement.core.evaluator import Evaluator

logger = get_logger(__name__)


@dataclass(frozen=True)
class Feedback:
    """P(the second answer is better than the first) for each comparison: the evaluator's debiased
    verdict, or ground truth (`oracle_score`) when there is no evaluator (`--use_oracle_feedback`)."""

    method: Method
    evaluator: Evaluator | None
    batch_size: int = 32

    def scores(self, questions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
               first_accs: Sequence[float | None], second_accs: Sequence[float | None]) -> list[float]:  # fmt: skip
        if not questions:
            return []
        if self.evaluator is None:
            return [oracle_score(self.method, a, b) for a, b in zip(first_accs, second_accs)]
        from iterative_label_refinement.core.evaluator import debiased_scores

        return debiased_scores(self.evaluator, questions, firsts, seconds, batch_size=self.batch_size).tolist()


@dataclass(frozen=True)
class StepInputs:
    """What a method decides on: the current labels (None for dpo, which draws on samples only),
    the answers to judge (one label set per run), the feedback (None for naive)."""

    method: Method
    round_id: int
    seed: int
    dataset: DatasetConfig
    labels: Dataset | None
    candidates: list[Dataset]
    feedback: Feedback | None


def run_step(ds_name: str, weak_model_path: str, method: Method, round_id: int, candidate_runs: dict[str, str], *,
             evaluator_path: str | None = None, batch_size: int = 32, seed: int = 0, save_results: bool = True,
             force: bool = False, print_save_path: bool = False) -> str:  # fmt: skip
    """Run `method`'s step of round `round_id` and return the label set's path.

    candidate_runs: flag -> run dir whose `weak_labels` hold the answers to judge (`model1_path`,
    `model2_path` for ilr and naive; `strong_model_path` for dpo), all of round `round_id`.
    print_save_path: print the path the step writes (the last stdout line) and read nothing.
    """
    kind = STEPS.get(method.kind)
    if kind is None:
        raise ConfigError(f"no refinement step is registered for method kind {method.kind!r} "
                          f"(core.refinement_step.STEPS has {sorted(STEPS)})")  # fmt: skip
    if sorted(candidate_runs) != sorted(kind.judges):
        given = ", ".join(f"--{flag}" for flag in sorted(candidate_runs)) or "none"
        raise ConfigError(f"a {method.kind} step judges the runs of {', '.join(f'--{f}' for f in kind.judges)}; "
                          f"got {given}")  # fmt: skip
    if evaluator_path is not None and not method.takes_feedback:
        raise ConfigError(f"a {method.kind} step takes no feedback: drop --evaluator_path")
    dataset = get_dataset_config(ds_name)
    out_path = refined_path(weak_model_path, method, round_id)
    if print_save_path:  # naming needs only the flags: nothing is read
        print(out_path)
        return str(out_path)
    check_round(round_id, **candidate_runs)
    weak_config = read_record(weak_model_path, "experiment_config.json")
    if weak_config and weak_config.get("ds_name", ds_name) != ds_name:  # another task's rule would decide
        raise ConfigError(f"--ds_name={ds_name}, but the weak run {weak_model_path} is of {weak_config['ds_name']}")
    record = step_record(method, round_id, seed, dataset.name, weak_model_path, candidate_runs, evaluator_path)
    # Checked, and the inputs read, before the lock too: a refusal leaves not even a lock file behind.
    if _reusable(out_path, record, force):
        return str(out_path)
    step = _inputs(dataset, weak_model_path, method, round_id, candidate_runs, evaluator_path, batch_size, seed)
    with writing(out_path):
        if _reusable(out_path, record, force):  # another writer finished it while this one started
            return str(out_path)
        logger.info("Writing %s", out_path)  # at the start too: a long step says where it writes
        return save_label_set(kind.rows(step), out_path, seed, record, save_results)


def _reusable(out_path: Path, record: dict[str, Any], force: bool) -> bool:
    """The label set exists and these inputs made it (`core.provenance.reuse`): print its path."""
    if force or not reuse(out_path, record, "--force=True"):
        return False
    logger.info("%s exists, made as this step would make it: nothing to do (pass --force=True to redo)", out_path)
    print(out_path)
    return True


def _inputs(dataset: DatasetConfig, weak_model_path: str, method: Method, round_id: int, candidate_runs: dict[str, str],
            evaluator_path: str | None, batch_size: int, seed: int) -> StepInputs:  # fmt: skip
    """Read what the step decides on: the feedback, the current labels and the answers to judge."""
    feedback = None
    if method.takes_feedback:
        from iterative_label_refinement.core.evaluator import load_feedback_evaluator

        feedback = Feedback(method, load_feedback_evaluator(evaluator_path, method.oracle), batch_size)
    # A dpo round learns from its own model's samples: it reads no current labels.
    labels = None if method.is_dpo else load_current_labels(weak_model_path, method, round_id, method.correct_start)
    paths = [Path(p) / "weak_labels" for p in candidate_runs.values()]
    candidates = [load_label_set(p, REFINEMENT_COLUMNS) for p in paths]
    if method.oracle:
        for ds, path in zip(candidates, paths):
            check_known_acc(ds, path, "--use_oracle_feedback")
    return StepInputs(method, round_id, seed, dataset, labels, candidates, feedback)


def step_record(method: Method, round_id: int, seed: int, ds_name: str, weak_model_path: str,
                candidate_runs: dict[str, str], evaluator_path: str | None) -> dict[str, Any]:  # fmt: skip
    """What makes a step's label set (`core.provenance`): the method with every parameter, round and
    seed; the labels it starts from (round 0: the weak run's, later: the previous label set's record);
    the runs whose answers it judges; and the feedback's source (naive takes none)."""
    inputs: dict[str, Any] = {flag: run_identity(path) for flag, path in candidate_runs.items()}
    if not method.is_dpo:
        labels = current_labels_path(weak_model_path, method, round_id)
        inputs["labels"] = run_identity(weak_model_path) if round_id == 0 else artifact_identity(labels)
    if method.takes_feedback:
        inputs["feedback"] = evaluator_identity(None if method.oracle else evaluator_path)
    return {"artifact": "label_set", "ds_name": ds_name, "method": str(method), "settings": asdict(method),
            "round_id": round_id, "seed": seed, "inputs": inputs}  # fmt: skip


def _accuracy(acc: list[Any]) -> str:
    value = label_accuracy(acc)
    return f"{value:.4f}" if value is not None else "n/a"


def ilr_rows(step: StepInputs) -> list[dict[str, Any]]:
    """Disagreeing proposals the feedback prefers replace the labels (`ilr_decide`)."""
    labels, max_replace = step.labels, step.method.max_replace
    questions = list(labels["question"])
    proposals = match_proposals(questions, step.candidates)
    current = [first(a) for a in labels["answer"]]
    proposed = [first(p["answer"]) for p in proposals]
    agree = step.dataset.agreement(current, proposed, list(labels))
    current_acc = [first(a) for a in labels["acc"]]
    compared = [i for i, a in enumerate(agree) if not a]
    values = step.feedback.scores([questions[i] for i in compared], [current[i] for i in compared],
                                  [proposed[i] for i in compared], [current_acc[i] for i in compared],
                                  [first(proposals[i].get("acc")) for i in compared])  # fmt: skip
    scores = [-1.0] * len(labels)  # an agreeing row is not compared
    for i, v in zip(compared, values):
        scores[i] = v
    decision = ilr_decide(agree, scores, max_replace, oracle=step.method.oracle)
    rows = refined_rows(labels, proposals, decision.replace, scores)
    logger.info(
        "ILR round %d: %d rows, %d agreed, %d compared, %d replaced (threshold %.3f); label accuracy %s -> %s",
        step.round_id, len(rows), sum(agree), len(compared), sum(decision.replace), decision.threshold,
        _accuracy(list(labels["acc"])), _accuracy([r["acc"] for r in rows]),
    )  # fmt: skip
    return rows


def naive_rows(step: StepInputs) -> list[dict[str, Any]]:
    """A random `max_replace` fraction of labels is replaced by their proposals (`naive_choice`):
    the same questions every round, or other rows each round with `redraw_each_round`."""
    labels, method = step.labels, step.method
    questions = list(labels["question"])
    proposals = match_proposals(questions, step.candidates)
    replace = naive_choice(questions, method.max_replace, step.seed, step.round_id, method.redraw_each_round)
    rows = refined_rows(labels, proposals, replace, [-1.0] * len(labels))
    logger.info("naive round %d: %d of %d labels replaced; label accuracy %s -> %s", step.round_id, sum(replace),
                len(rows), _accuracy(list(labels["acc"])), _accuracy([r["acc"] for r in rows]))  # fmt: skip
    return rows


def _sample_acc(row: dict[str, Any], i: int) -> float | None:
    return None if row.get("acc") is None else row["acc"][i]


def dpo_rows(step: StepInputs) -> list[dict[str, Any]]:
    """The round model's samples, paired and judged, kept as chosen/rejected preferences."""
    rows = list(step.candidates[0])
    pairs = dpo_pairs(rows)
    scores = step.feedback.scores([rows[r]["question"] for r, _, _ in pairs],
                                  [rows[r]["answer"][a] for r, a, _ in pairs],
                                  [rows[r]["answer"][b] for r, _, b in pairs],
                                  [_sample_acc(rows[r], a) for r, a, _ in pairs],
                                  [_sample_acc(rows[r], b) for r, _, b in pairs])  # fmt: skip
    prefs = preference_rows(rows, pairs, scores, step.dataset.extra_columns, step.method.subsample, step.seed)
    logger.info("DPO round %d: kept %d preference pairs; chosen answers correct: %s", step.round_id, len(prefs),
                _accuracy([r["acc"] for r in prefs]))  # fmt: skip
    return prefs


@dataclass(frozen=True)
class StepKind:
    """How a kind of method decides its rows, and the flags naming the runs whose answers it judges."""

    rows: Callable[[StepInputs], list[dict[str, Any]]]
    judges: tuple[str, ...]


HALF_RUNS = ("model1_path", "model2_path")  # cross-fitted proposals: each half model labelled the other half
STEPS: dict[str, StepKind] = {
    "ilr": StepKind(ilr_rows, HALF_RUNS),
    "naive": StepKind(naive_rows, HALF_RUNS),
    "dpo": StepKind(dpo_rows, ("strong_model_path",)),  # the round model's own samples
}
