"""One refinement step of any method: the skeleton `experiments.ilr`, `naive` and `dpo` share.

A step names its output from the method and round, refuses model runs of another round, does
nothing when its label set exists, reads the current labels (ilr, naive) and the answers to judge
(the half models' proposals, or the round model's samples for dpo), asks the feedback (evaluator or
oracle) about them, decides with the pure functions of `core.refinement`, and saves the rows.
Each kind of method contributes only its declaration (`core.methods.MethodKind`): how its rows
are decided and which runs it judges. The paper's kinds are declared at the end of this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.datasets import DatasetConfig, get_dataset_config
from iterative_label_refinement.core.human_feedback import (
    ComparisonExport,
    ComparisonsAsked,
    Verdicts,
    write_comparisons,
)
from iterative_label_refinement.core.label_sets import (
    REFINEMENT_COLUMNS,
    check_known_acc,
    check_round,
    current_labels_path,
    first,
    label_accuracy,
    load_current_labels,
    load_label_set,
    save_label_set,
)
from iterative_label_refinement.core.layout import refined_path
from iterative_label_refinement.core.locks import writing
from iterative_label_refinement.core.methods import HALF_RUNS, Method, MethodKind, parse_method, register_kind
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
from iterative_label_refinement.core.run_data import half_split
from iterative_label_refinement.core.settings import ConfigError, get_logger

if TYPE_CHECKING:
    from datasets import Dataset

    from iterative_label_refinement.core.evaluator import Evaluator, JudgeEvaluator
    from iterative_label_refinement.core.judge import JudgeEndpoint

logger = get_logger(__name__)


FEEDBACK_SOURCES = ("evaluator", "judge", "human")  # --feedback: a trained evaluator, an LLM judge, people


@dataclass(frozen=True)
class Feedback:
    """P(the second answer is better than the first) for each comparison: an evaluator's debiased
    verdict (a trained evaluator or an LLM judge, `core.judge`), people's verdicts or an export
    (`core.human_feedback`), or ground truth (`oracle_score`) when there is none (`--use_oracle_feedback`)."""

    method: Method
    evaluator: Evaluator | Verdicts | ComparisonExport | None
    batch_size: int = 32

    def scores(self, questions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
               first_accs: Sequence[float | None], second_accs: Sequence[float | None]) -> list[float]:  # fmt: skip
        if not questions:
            return []
        if self.evaluator is None:
            return [oracle_score(self.method, a, b) for a, b in zip(first_accs, second_accs)]
        if isinstance(self.evaluator, (Verdicts, ComparisonExport)):
            return self.evaluator.scores(questions, firsts, seconds)
        from iterative_label_refinement.core.evaluator import debiased_scores

        return debiased_scores(self.evaluator, questions, firsts, seconds, batch_size=self.batch_size).tolist()


@dataclass(frozen=True)
class StepInputs:
    """What a method decides on: the current labels (None for dpo, which draws on samples only),
    the answers to judge (one label set per run, and the runs), the feedback (None for naive)."""

    method: Method
    round_id: int
    seed: int
    dataset: DatasetConfig
    labels: Dataset | None
    candidates: list[Dataset]
    feedback: Feedback | None
    runs: dict[str, str]  # flag -> the run dir whose answers `candidates` holds, in the same order


def run_step(ds_name: str, weak_model_path: str, method: Method, round_id: int, candidate_runs: dict[str, str], *,
             evaluator_path: str | None = None, batch_size: int = 32, seed: int = 0, save_results: bool = True,
             force: bool = False, print_save_path: bool = False, feedback: str = "evaluator",
             judge: JudgeEndpoint | None = None, verdicts_path: str | None = None,
             export_comparisons: str | None = None) -> str:  # fmt: skip
    """Run `method`'s step of round `round_id` and return the label set's path.

    candidate_runs: flag -> run dir whose `weak_labels` hold the answers to judge (`model1_path`,
    `model2_path` for ilr and naive; `strong_model_path` for dpo), all of round `round_id`.
    print_save_path: print the path the step writes (the last stdout line) and read nothing.
    feedback: where comparisons come from (unless `method.oracle`): `evaluator` (`evaluator_path`),
    `judge` (an LLM judge at `judge`, `core.judge`) or `human` (`verdicts_path`, `core.human_feedback`);
    export_comparisons: with `human`, write the comparisons the step asks to that folder (and return
    it) instead of a label set.
    """
    kind = method.spec
    if sorted(candidate_runs) != sorted(kind.judges):
        given = ", ".join(f"--{flag}" for flag in sorted(candidate_runs)) or "none"
        raise ConfigError(f"a {method.kind} step judges the runs of {', '.join(f'--{f}' for f in kind.judges)}; "
                          f"got {given}")  # fmt: skip
    _check_feedback(method, feedback, evaluator_path, judge, verdicts_path, export_comparisons)
    dataset = get_dataset_config(ds_name)
    out_path = refined_path(weak_model_path, method, round_id)
    if print_save_path:  # naming needs only the flags: nothing is read
        print(out_path)
        return str(out_path)
    check_round(round_id, **candidate_runs)
    _check_half_runs(method, candidate_runs)
    weak_config = read_record(weak_model_path, "experiment_config.json")
    if weak_config and weak_config.get("ds_name", ds_name) != ds_name:  # another task's rule would decide
        raise ConfigError(f"--ds_name={ds_name}, but the weak run {weak_model_path} is of {weak_config['ds_name']}")
    source = _feedback_source(dataset.name, feedback, judge, verdicts_path, export_comparisons)
    if isinstance(source, ComparisonExport):
        step = _inputs(dataset, weak_model_path, method, round_id, candidate_runs, source, batch_size, seed)
        return str(_export(kind, step, export_comparisons))
    identity = source.identity() if source is not None else None
    record = step_record(method, round_id, seed, dataset.name, weak_model_path, candidate_runs, evaluator_path,
                         identity)  # fmt: skip
    # Checked, and the inputs read, before the lock too: a refusal leaves not even a lock file behind.
    if _reusable(out_path, record, force):
        return str(out_path)
    step = _inputs(dataset, weak_model_path, method, round_id, candidate_runs, source or evaluator_path, batch_size,
                   seed)  # fmt: skip
    with writing(out_path):
        if _reusable(out_path, record, force):  # another writer finished it while this one started
            return str(out_path)
        logger.info("Writing %s", out_path)  # at the start too: a long step says where it writes
        return save_label_set(kind.rows(step), out_path, seed, record, save_results)


def _check_half_runs(method: Method, candidate_runs: dict[str, str]) -> None:
    """Half runs made for a kind whose half models label every prompt hold other answers than those of
    the other kinds (the other half only): a step reading the one sort as the other would decide on
    wrong proposals. Their records say what each was made for (their run dirs differ by `hla`)."""
    for flag, run in candidate_runs.items():
        made_for = (read_record(run, "experiment_config.json") or {}).get("method")
        if flag not in HALF_RUNS or not made_for:
            continue
        if parse_method(made_for).spec.half_runs_label_all != method.spec.half_runs_label_all:
            raise ConfigError(f"--{flag}={run} was trained for {made_for}, whose half models label "
                              f"{'every prompt' if not method.spec.half_runs_label_all else 'the other half only'}"
                              f": a {method.kind} step cannot read its answers (pass the half runs trained for "
                              f"--method={method})")  # fmt: skip


def _check_feedback(method: Method, feedback: str, evaluator_path: str | None, judge: JudgeEndpoint | None,
                    verdicts_path: str | None, export_comparisons: str | None) -> None:  # fmt: skip
    """One feedback source, with exactly the flags it takes."""
    if feedback not in FEEDBACK_SOURCES:
        raise ConfigError(f"unknown --feedback={feedback!r}. Valid: {list(FEEDBACK_SOURCES)}")
    given = {"--evaluator_path": evaluator_path, "--verdicts_path": verdicts_path,
             "--export_comparisons": export_comparisons}  # fmt: skip
    if not method.takes_feedback:
        extra = [flag for flag, value in given.items() if value is not None]
        if extra or feedback != "evaluator":
            raise ConfigError(f"a {method.kind} step takes no feedback: drop {', '.join(extra) or '--feedback'}")
        return
    takes = {"evaluator": {"--evaluator_path"}, "judge": set(), "human": {"--verdicts_path", "--export_comparisons"}}
    extra = [flag for flag, value in given.items() if value is not None and flag not in takes[feedback]]
    if extra:
        raise ConfigError(f"--feedback={feedback} takes no {', '.join(extra)}")
    if method.oracle and feedback != "evaluator":
        raise ConfigError(f"--use_oracle_feedback replaces the feedback: drop --feedback={feedback}")
    if feedback == "judge" and judge is None:
        raise ConfigError("--feedback=judge needs the judge's endpoint (core.judge.JudgeEndpoint)")
    if feedback == "human" and (verdicts_path is None) == (export_comparisons is None):
        raise ConfigError("--feedback=human takes one of --export_comparisons=<folder> (write the comparisons to "
                          "answer) and --verdicts_path=<file> (the answers)")  # fmt: skip


def _feedback_source(ds_name: str, feedback: str, judge: JudgeEndpoint | None, verdicts_path: str | None,
                     export_comparisons: str | None) -> JudgeEvaluator | Verdicts | ComparisonExport | None:  # fmt: skip
    """The judge or people's verdicts (both cheap to open, so opened before the record); None for the
    trained evaluator (loaded after the reuse check) or the oracle."""
    if feedback == "judge":
        from iterative_label_refinement.core.evaluator import JudgeEvaluator

        return JudgeEvaluator(judge, ds_name)
    if export_comparisons is not None:
        return ComparisonExport()
    if verdicts_path is not None:
        return Verdicts.load(verdicts_path)
    return None


def _export(kind: MethodKind, step: StepInputs, folder: str) -> Path:
    """Run the step to its question and write the comparisons it asks (none: empty files)."""
    try:
        kind.rows(step)
        comparisons = []
    except ComparisonsAsked as asked:
        comparisons = asked.comparisons
    out = write_comparisons(comparisons, folder)
    logger.info("%d comparisons of %s round %d written to %s (comparisons.jsonl, comparisons.csv)",
                len(comparisons), step.method, step.round_id, out)  # fmt: skip
    print(out)
    return out


def _reusable(out_path: Path, record: dict[str, Any], force: bool) -> bool:
    """The label set exists and these inputs made it (`core.provenance.reuse`): print its path."""
    if force or not reuse(out_path, record, "--force=True"):
        return False
    logger.info("%s exists, made as this step would make it: nothing to do (pass --force=True to redo)", out_path)
    print(out_path)
    return True


def _inputs(dataset: DatasetConfig, weak_model_path: str, method: Method, round_id: int, candidate_runs: dict[str, str],
            source: str | Evaluator | Verdicts | ComparisonExport | None, batch_size: int, seed: int) -> StepInputs:  # fmt: skip
    """Read what the step decides on: the feedback (`source`: an opened source, else the trained
    evaluator's path), the current labels and the answers to judge."""
    feedback = None
    if method.takes_feedback:
        from iterative_label_refinement.core.evaluator import load_feedback_evaluator

        if source is None or isinstance(source, str):
            source = load_feedback_evaluator(source, method.oracle)
        feedback = Feedback(method, source, batch_size)
    # A dpo round learns from its own model's samples: it reads no current labels.
    labels = None if method.is_dpo else load_current_labels(weak_model_path, method, round_id, method.correct_start)
    paths = [Path(p) / "weak_labels" for p in candidate_runs.values()]
    candidates = [load_label_set(p, REFINEMENT_COLUMNS) for p in paths]
    if method.oracle:
        for ds, path in zip(candidates, paths):
            check_known_acc(ds, path, "--use_oracle_feedback")
    return StepInputs(method, round_id, seed, dataset, labels, candidates, feedback, candidate_runs)


def step_record(method: Method, round_id: int, seed: int, ds_name: str, weak_model_path: str,
                candidate_runs: dict[str, str], evaluator_path: str | None,
                source_identity: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What makes a step's label set (`core.provenance`): the method with every parameter, round and
    seed; the labels it starts from (round 0: the weak run's, later: the previous label set's record);
    the runs whose answers it judges; and the feedback's source (naive takes none): the trained
    evaluator, or `source_identity` (a judge's endpoint and template, a verdict file's digest)."""
    inputs: dict[str, Any] = {flag: run_identity(path) for flag, path in candidate_runs.items()}
    if not method.is_dpo:
        labels = current_labels_path(weak_model_path, method, round_id)
        inputs["labels"] = run_identity(weak_model_path) if round_id == 0 else artifact_identity(labels)
    if method.takes_feedback:
        inputs["feedback"] = source_identity or evaluator_identity(None if method.oracle else evaluator_path)
    return {"artifact": "label_set", "ds_name": ds_name, "method": str(method), "settings": asdict(method),
            "round_id": round_id, "seed": seed, "inputs": inputs}  # fmt: skip


def _accuracy(acc: list[Any]) -> str:
    value = label_accuracy(acc)
    return f"{value:.4f}" if value is not None else "n/a"


def ilr_rows(step: StepInputs) -> list[dict[str, Any]]:
    """Disagreeing proposals the feedback prefers replace the labels (`ilr_decide`)."""
    return _preferred_rows(step, match_proposals(list(step.labels["question"]), step.candidates), "ILR")


def _preferred_rows(step: StepInputs, proposals: list[dict[str, Any]], name: str,
                    eligible: list[bool] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """ILR's rule: each proposal that disagrees with its label (and is `eligible`, all by default) is
    compared with it, and those the feedback prefers above the threshold replace it (`ilr_decide`)."""
    labels, max_replace = step.labels, step.method.max_replace
    questions = list(labels["question"])
    current = [first(a) for a in labels["answer"]]
    proposed = [first(p["answer"]) for p in proposals]
    agree = step.dataset.agreement(current, proposed, list(labels))
    skipped = [a or (eligible is not None and not eligible[i]) for i, a in enumerate(agree)]
    current_acc = [first(a) for a in labels["acc"]]
    compared = [i for i, s in enumerate(skipped) if not s]
    values = step.feedback.scores([questions[i] for i in compared], [current[i] for i in compared],
                                  [proposed[i] for i in compared], [current_acc[i] for i in compared],
                                  [first(proposals[i].get("acc")) for i in compared])  # fmt: skip
    scores = [-1.0] * len(labels)  # a row not compared has no score
    for i, v in zip(compared, values):
        scores[i] = v
    decision = ilr_decide(skipped, scores, max_replace, oracle=step.method.oracle)
    rows = refined_rows(labels, proposals, decision.replace, scores)
    logger.info(
        "%s round %d: %d rows, %d agreed, %d compared, %d replaced (threshold %.3f); label accuracy %s -> %s",
        name, step.round_id, len(rows), sum(agree), len(compared), sum(decision.replace), decision.threshold,
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


# The paper's kinds. dpo judges the round model's own samples.
register_kind(MethodKind("ilr", ilr_rows, cli="ilr"))
register_kind(MethodKind("naive", naive_rows, flags=("redraw_each_round",), takes_feedback=False, cli="naive"))
register_kind(MethodKind("dpo", dpo_rows, numbers=("beta", "subsample"), flags=("neutral_ties",),
                         judges=("strong_model_path",), pipeline="sft_dpo", cli="dpo"))  # fmt: skip


def ilragree_rows(step: StepInputs) -> list[dict[str, Any]]:
    """ILR where a disagreeing label is compared only when both half models, which each labelled
    every prompt, answered its prompt alike (the task's `agreement`): the cross-fitted proposal, from
    the model that did not train on the prompt, and the answer of the model that did."""
    questions = list(step.labels["question"])
    answers, trained = [], []
    for (flag, run), proposals in zip(step.runs.items(), step.candidates):
        by_question = {row["question"]: row for row in proposals}
        missing = [q for q in questions if q not in by_question]
        if missing:
            raise ConfigError(f"--{flag}={run} has no answer to {len(missing)} of the {len(questions)} prompts (e.g. "
                              f"{missing[0]!r}): an {step.method.kind} step compares both half models on every "
                              f"prompt, so its half runs label them all (--method={step.method})")  # fmt: skip
        answers.append([by_question[q] for q in questions])
        trained.append(_trained_on(run))
    if any((q in trained[0]) == (q in trained[1]) for q in questions):
        raise ConfigError(f"the half runs {', '.join(step.runs.values())} did not split this round's labels "
                          "between them: each prompt must be trained on by exactly one")  # fmt: skip
    cross, trained_answer = zip(*[(answers[1][i], answers[0][i]) if q in trained[0] else (answers[0][i], answers[1][i])
                                  for i, q in enumerate(questions)])  # fmt: skip
    alike = step.dataset.agreement([first(a["answer"]) for a in trained_answer], [first(c["answer"]) for c in cross],
                                   list(step.labels))  # fmt: skip
    return _preferred_rows(step, list(cross), "ILR (both halves agree)", alike)


def _trained_on(run: str) -> set[str]:
    """The prompts a half run trained on: its half of the label set its record names (`half_split`)."""
    record = read_record(run, "experiment_config.json") or {}
    if not record.get("half_data") or not record.get("weak_labels_path"):
        raise ConfigError(f"{run} is not a half-data run on labels (its experiment_config.json names no half_data "
                          "and weak_labels_path)")  # fmt: skip
    labels = load_label_set(record["weak_labels_path"])
    return set(half_split(labels, record["seed"], record["half_data"])[0]["question"])


# A variant: both half models must agree before a label is compared (docs/toy_world.md).
register_kind(MethodKind("ilragree", ilragree_rows, half_runs_label_all=True))
