"""The one refinement step (core.refinement_step) behind ilr, naive and dpo, on synthetic label sets.

The label sets have known correctness (both-correct disagreements, mixed pairs, unknown-free), and
the evaluator is a fixed function of the texts, so every step's rows are pinned: the digests are
those of the rows the three separate CLIs wrote before they shared one runner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from iterative_label_refinement.core import evaluator, methods, refinement_step
from iterative_label_refinement.core.files import write_json
from iterative_label_refinement.core.label_sets import first
from iterative_label_refinement.core.methods import parse_method
from iterative_label_refinement.core.refinement import match_proposals, refined_rows
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import dpo, ilr, naive, refine


def _label(rng: random.Random, i: int) -> dict:
    value = rng.choice([i, i, i + 1, i + 2])
    return {"question": f"What is {i} plus 0?", "answer": f"step {rng.random():.3f} #### {value}",
            "gt_answer": f"#### {i}", "acc": float(rng.random() < 0.5)}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """weak/weak_labels, two half runs' proposals and a round model's 6 samples per prompt (rounds 0 and 1)."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = random.Random(0)
    weak, h1, h2, r0 = root / "weak", root / "h-hd=1-ri=0", root / "h-hd=2-ri=0", root / "r-ri=0"
    base = [_label(rng, i) for i in range(40)]
    Dataset.from_list(base).save_to_disk(str(weak / "weak_labels"))
    proposals = [dict(r, answer=_label(rng, i)["answer"], acc=float(rng.random() < 0.6)) for i, r in enumerate(base)]
    rng.shuffle(proposals)  # proposals are matched by question, never by position
    Dataset.from_list(proposals[:20]).save_to_disk(str(h1 / "weak_labels"))
    Dataset.from_list(proposals[20:]).save_to_disk(str(h2 / "weak_labels"))
    samples = [{"question": r["question"], "gt_answer": r["gt_answer"],
                "answer": [_label(rng, i)["answer"] for _ in range(6)],
                "acc": [float(rng.random() < 0.5) for _ in range(6)]} for i, r in enumerate(base)]  # fmt: skip
    Dataset.from_list(samples).save_to_disk(str(r0 / "weak_labels"))
    for run in (h1, h2, r0):
        shutil.copytree(run, Path(str(run).replace("ri=0", "ri=1")))
    return {k: str(v) for k, v in dict(weak=weak, h1=h1, h2=h2, r0=r0).items()}


@pytest.fixture
def text_evaluator(monkeypatch):
    """An evaluator whose verdict is a fixed function of (question, first, second); records its calls."""
    calls = []

    def scores(_, questions, first, second, batch_size=32):
        calls.append(list(zip(questions, first, second)))
        return np.array(
            [zlib.crc32(f"{q}|{a}|{b}".encode()) % 1000 / 1000 for q, a, b in zip(questions, first, second)]
        )

    monkeypatch.setattr(evaluator, "load_evaluator", lambda path, device=None: object())
    monkeypatch.setattr(evaluator, "debiased_scores", scores)
    return calls


def _digest(path: str) -> str:
    rows = [dict(r) for r in load_from_disk(path)]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


STEPS = [
    ("orailr0.5_0", "5670f2cd96473ada", lambda w: ilr.main("toy_arith", w["weak"], w["h1"], w["h2"], max_replace=0.5,
                                                            use_oracle_feedback=True)),
    ("cororailr0.1_0", "56f664ce87d32f04", lambda w: ilr.main("toy_arith", w["weak"], w["h1"], w["h2"], max_replace=0.1,
                                                               use_oracle_feedback=True, start_with_correct_labels=True,
                                                               seed=4)),
    ("ilr0.5_0", "fbba813c43b32693", lambda w: ilr.main("toy_arith", w["weak"], w["h1"], w["h2"], max_replace=0.5,
                                                         evaluator_path="x", seed=2)),
    ("ilr0.15_0", "f068a2a3e1f60ea6", lambda w: ilr.main("toy_arith", w["weak"], w["h1"], w["h2"], max_replace=0.15,
                                                          evaluator_path="x")),
    # naive's per-round redraw is the rule it had before the reference's became the default
    ("naive0.5rd_0", "86b1b7e02cf091a2", lambda w: naive.main("toy_arith", w["weak"], w["h1"], w["h2"], max_replace=0.5,
                                                               seed=1, redraw_each_round=True)),
    ("cornaive0.3rd_0", "44ccfbc8ecaadba6", lambda w: naive.main("toy_arith", w["weak"], w["h1"], w["h2"],
                                                                  max_replace=0.3, seed=1,
                                                                  start_with_correct_labels=True,
                                                                  redraw_each_round=True)),
    ("oradpo0.10.5_0", "cb0e419c132469ce", lambda w: dpo.main("toy_arith", w["weak"], w["r0"], subsample=0.5,
                                                               use_oracle_feedback=True)),
    ("oradpo0.10.3nt_0", "d867810c0fbbb9b4", lambda w: dpo.main("toy_arith", w["weak"], w["r0"], subsample=0.3,
                                                                 use_oracle_feedback=True, neutral_oracle_ties=True)),
    ("dpo0.10.5_0", "b55e9f0c409d0b05", lambda w: dpo.main("toy_arith", w["weak"], w["r0"], subsample=0.5,
                                                            evaluator_path="x", seed=3)),
]  # fmt: skip


def test_every_step_writes_the_rows_it_wrote_before_the_shared_runner(world, text_evaluator):
    for name, digest, step in STEPS:
        path = step(world)
        assert Path(path).name == f"{name}_weak_labels"
        assert _digest(path) == digest, name
    # Round 1 starts from round 0's output (orailr0.5_0, naive0.5rd_0) with round-1 proposals.
    r1 = {k: v.replace("ri=0", "ri=1") for k, v in world.items()}
    path = ilr.main("toy_arith", r1["weak"], r1["h1"], r1["h2"], round_id=1, max_replace=0.5, use_oracle_feedback=True)
    assert _digest(path) == "42227a5b204cc211"
    path = naive.main("toy_arith", r1["weak"], r1["h1"], r1["h2"], round_id=1, max_replace=0.5, seed=1,
                      redraw_each_round=True)  # fmt: skip
    assert _digest(path) == "21cf017681fab0b3"


def test_the_evaluator_is_asked_only_about_disagreements_and_oracle_ilr_accepts_every_correct_proposal(
    world, text_evaluator, tmp_path
):
    weak = tmp_path / "weak"
    shutil.copytree(Path(world["weak"]) / "weak_labels", weak / "weak_labels")
    ilr.main("toy_arith", str(weak), world["h1"], world["h2"], max_replace=0.5, evaluator_path="x")
    labels = {r["question"]: r for r in load_from_disk(str(weak / "weak_labels"))}
    asked = [q for call in text_evaluator for q, _, _ in call]
    assert len(text_evaluator) == 1 and asked and len(asked) < len(labels)
    for question, current, proposal in text_evaluator[0]:
        assert current == labels[question]["answer"] and current.split("####")[1] != proposal.split("####")[1]
    out = load_from_disk(ilr.main("toy_arith", str(weak), world["h1"], world["h2"], max_replace=0.1,
                                  use_oracle_feedback=True))  # fmt: skip
    assert len(text_evaluator) == 1  # oracle feedback asks no evaluator
    proposals = {
        r["question"]: r for run in ("h1", "h2") for r in load_from_disk(str(Path(world[run]) / "weak_labels"))
    }
    for row in out:
        disagree = (
            labels[row["question"]]["answer"].split("####")[1] != proposals[row["question"]]["answer"].split("####")[1]
        )
        replaced = disagree and proposals[row["question"]]["acc"] == 1.0  # both-correct too: no cap, no tie rule
        assert row["answer"] == (proposals if replaced else labels)[row["question"]]["answer"]


def test_oracle_feedback_refuses_unknown_correctness(world, tmp_path):
    run = tmp_path / "r-ri=0"
    rows = [dict(r, acc=None) for r in load_from_disk(str(Path(world["r0"]) / "weak_labels"))]
    Dataset.from_list(rows).save_to_disk(str(run / "weak_labels"))
    with pytest.raises(ConfigError, match="has acc=None in 40 of 40 rows, but --use_oracle_feedback needs"):
        dpo.main("toy_arith", str(tmp_path / "weak"), str(run), use_oracle_feedback=True)


def _fresh_weak(world, tmp_path) -> str:
    weak = tmp_path / "weak"
    shutil.copytree(Path(world["weak"]) / "weak_labels", weak / "weak_labels")
    return str(weak)


def test_refine_runs_the_papers_kinds_as_their_own_clis_do(world, text_evaluator, tmp_path):
    weak = _fresh_weak(world, tmp_path)
    path = refine.main("ilr", "toy_arith", weak, model1_path=world["h1"], model2_path=world["h2"], max_replace=0.5,
                       evaluator_path="x", seed=2)  # fmt: skip
    assert Path(path).name == "ilr0.5_0_weak_labels" and _digest(path) == "fbba813c43b32693"
    path = refine.main("naive", "toy_arith", weak, model1_path=world["h1"], model2_path=world["h2"], max_replace=0.3,
                       seed=1, start_with_correct_labels=True, redraw_each_round=True)  # fmt: skip
    assert Path(path).name == "cornaive0.3rd_0_weak_labels" and _digest(path) == "44ccfbc8ecaadba6"
    path = refine.main("dpo", "toy_arith", weak, strong_model_path=world["r0"], beta=0.1, subsample=0.3,
                       use_oracle_feedback=True, neutral_oracle_ties=True)  # fmt: skip
    assert Path(path).name == "oradpo0.10.3nt_0_weak_labels" and _digest(path) == "d867810c0fbbb9b4"


def test_refine_refuses_flags_its_kind_does_not_take(world, tmp_path):
    weak = _fresh_weak(world, tmp_path)
    halves = dict(model1_path=world["h1"], model2_path=world["h2"])
    cases = [
        (dict(kind="ilrx", **halves, max_replace=0.1), "Unknown method kind 'ilrx'"),
        (dict(kind="ilr", **halves), r"--max_replace must be in \(0, 1\], got None"),
        (dict(kind="ilr", **halves, max_replace=0.1, beta=0.1), "an ilr method has no beta"),
        (dict(kind="dpo", **halves, beta=0.1, subsample=0.5), "a dpo step judges the runs of --strong_model_path; "
                                                              "got --model1_path, --model2_path"),
        (dict(kind="ilr", model1_path=world["h1"], max_replace=0.1), "judges the runs of --model1_path, --model2_path"),
        (dict(kind="ilr", max_replace=0.1), "judges the runs of --model1_path, --model2_path; got none$"),
        (dict(kind="naive", **halves, max_replace=0.1, evaluator_path="x"), "takes no feedback: drop --evaluator_path"),
    ]  # fmt: skip
    for flags, message in cases:
        with pytest.raises(ConfigError, match=message):
            refine.main(ds_name="toy_arith", weak_model_path=weak, **flags)
    assert [p.name for p in Path(weak).iterdir()] == ["weak_labels"]  # nothing written


def _greedy_rows(step: refinement_step.StepInputs) -> list[dict]:
    """A throwaway kind: every proposal the feedback prefers replaces its label, agreeing or not, uncapped."""
    labels = step.labels
    questions = list(labels["question"])
    proposals = match_proposals(questions, step.candidates)
    scores = step.feedback.scores(questions, [first(a) for a in labels["answer"]],
                                  [first(p["answer"]) for p in proposals], [first(a) for a in labels["acc"]],
                                  [first(p["acc"]) for p in proposals])  # fmt: skip
    return refined_rows(labels, proposals, [v > 0.5 for v in scores], scores)


def test_a_kind_added_by_one_declaration_runs_through_refine(world, tmp_path):
    """README "Layout and extending": one `register_kind(MethodKind(...))`, then refine runs it."""
    with pytest.raises(ConfigError, match="Unknown method kind 'greedy'"):
        refine.main("greedy", "toy_arith", world["weak"], model1_path=world["h1"], model2_path=world["h2"],
                    max_replace=1, use_oracle_feedback=True)  # fmt: skip
    methods.register_kind(methods.MethodKind("greedy", _greedy_rows))
    try:
        _run_greedy(world, tmp_path)
    finally:
        methods._KINDS.pop("greedy")


def _run_greedy(world, tmp_path):
    assert parse_method("cororagreedy1") == methods.Method("greedy", oracle=True, correct_start=True, max_replace=1)
    weak = _fresh_weak(world, tmp_path)
    path = refine.main("greedy", "toy_arith", weak, model1_path=world["h1"], model2_path=world["h2"], max_replace=1,
                       use_oracle_feedback=True)  # fmt: skip
    assert Path(path) == Path(weak, "oragreedy1_0_weak_labels")
    labels = {r["question"]: r for r in load_from_disk(str(Path(weak, "weak_labels")))}
    proposals = {r["question"]: r for h in ("h1", "h2") for r in load_from_disk(str(Path(world[h], "weak_labels")))}
    out = list(load_from_disk(path))
    assert len(out) == len(labels) == 40
    agreeing_replaced = 0
    for row in out:  # the oracle prefers every correct proposal, whether or not it agrees with the label
        q = row["question"]
        chosen = proposals[q] if proposals[q]["acc"] == 1.0 else labels[q]
        assert first(row["answer"]) == chosen["answer"]
        same = labels[q]["answer"].split("####")[1] == proposals[q]["answer"].split("####")[1]
        agreeing_replaced += same and chosen is proposals[q]
    assert agreeing_replaced > 0  # rows ILR would not have compared: the new kind's rows ran, not ilr's


def test_a_step_refuses_half_runs_made_for_the_other_sort_of_kind(world, tmp_path):
    """Half runs of ilr and of a kind whose half models label every prompt hold different answers: a step
    refuses half runs of the other sort (their records name the method they were made for)."""
    methods.register_kind(methods.MethodKind("everyprompt", refinement_step.ilr_rows, half_runs_label_all=True))
    try:
        runs = {}
        for half in ("h1", "h2"):
            runs[half] = tmp_path / Path(world[half]).name
            shutil.copytree(world[half], runs[half])
            write_json(runs[half] / "experiment_config.json", {"round_id": 0, "method": "everyprompt0.5"})
        with pytest.raises(ConfigError, match=r"--model1_path=.* was trained for everyprompt0.5, whose half models "
                                              "label every prompt: a ilr step cannot read"):  # fmt: skip
            ilr.main("toy_arith", world["weak"], str(runs["h1"]), str(runs["h2"]), max_replace=0.5,
                     use_oracle_feedback=True)  # fmt: skip
        for run in runs.values():
            write_json(run / "experiment_config.json", {"round_id": 0, "method": "ilr0.5"})
        with pytest.raises(ConfigError, match="was trained for ilr0.5, whose half models label the other half only"):
            refine.main("everyprompt", "toy_arith", world["weak"], model1_path=str(runs["h1"]),
                        model2_path=str(runs["h2"]), max_replace=0.5, use_oracle_feedback=True)  # fmt: skip
    finally:
        methods._KINDS.pop("everyprompt")


def _tagged_half_runs(world, root: Path, round_id: int) -> tuple[str, str]:
    """The half runs' proposals as runs of round `round_id`, each answer ending in ` r<round_id>`:
    a refined row shows which round's proposal replaced it."""
    runs = []
    for half in ("h1", "h2"):
        run = root / Path(world[half]).name.replace("ri=0", f"ri={round_id}")
        proposals = load_from_disk(str(Path(world[half], "weak_labels")))
        rows = [dict(r, answer=f"{r['answer']} r{round_id}") for r in proposals]
        Dataset.from_list(rows).save_to_disk(str(run / "weak_labels"))
        runs.append(str(run))
    return runs[0], runs[1]


def test_naive_replaces_the_questions_the_reference_draws_in_every_round(world, tmp_path):
    """The reference: rows sorted by question, NumPy reseeded with --seed each round, positions drawn.
    The weak labels are not in question order ("What is 10 ..." sorts before "What is 2 ..."), and
    round 1 reads round 0's shuffled output."""
    weak = _fresh_weak(world, tmp_path)
    questions = sorted(r["question"] for r in load_from_disk(str(Path(weak, "weak_labels"))))
    np.random.seed(7)
    expected = {questions[i] for i in np.random.choice(40, int(40 * 0.3), replace=False)}
    replaced, row_order = {}, {}
    for redraw in (False, True):
        for r in (0, 1):
            labels = Path(weak, "weak_labels" if r == 0 else f"naive0.3{'rd' if redraw else ''}_0_weak_labels")
            row_order[redraw, r] = list(load_from_disk(str(labels))["question"])
            h1, h2 = _tagged_half_runs(world, tmp_path / f"{redraw}{r}", r)
            path = naive.main("toy_arith", weak, h1, h2, round_id=r, max_replace=0.3, seed=7, redraw_each_round=redraw)
            replaced[redraw, r] = {row["question"] for row in load_from_disk(path) if row["answer"].endswith(f" r{r}")}
    assert replaced[False, 0] == replaced[False, 1] == expected
    # --redraw_each_round: Python's random seeded with seed + round over the rows as read, other rows each round
    for r in (0, 1):
        assert replaced[True, r] == {row_order[True, r][i] for i in random.Random(7 + r).sample(range(40), 12)}
    assert replaced[True, 0] != replaced[True, 1]


def test_dpo_cuts_tied_pairs_with_the_seed_it_is_given(world, tmp_path):
    """The reference's oracle scores are 0 or 1, so every pair ties: which 36 of the 120 pairs are
    kept is the seed's shuffle (`select_preferences`), computed here directly."""
    weak = _fresh_weak(world, tmp_path)
    rows = list(load_from_disk(str(Path(world["r0"], "weak_labels"))))
    pairs = [(r, a, a + 1) for r in range(len(rows)) for a in (0, 2, 4)]
    kept = {}
    for seed in (0, 1, 2):
        path = dpo.main("toy_arith", weak, world["r0"], subsample=0.3, use_oracle_feedback=True, seed=seed, force=True)
        kept[seed] = sorted((p["question"], p["chosen"], p["rejected"]) for p in load_from_disk(path))
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)  # all equally confident: the shuffled order is the ranking
        expected = []
        for r, a, b in (pairs[i] for i in order[:36]):
            second = rows[r]["acc"][b] > rows[r]["acc"][a]
            chosen, rejected = (b, a) if second else (a, b)
            expected.append((rows[r]["question"], rows[r]["answer"][chosen], rows[r]["answer"][rejected]))
        assert kept[seed] == sorted(expected)
    assert kept[0] != kept[1] != kept[2] != kept[0]


def test_each_step_logs_what_it_decided(world, text_evaluator, tmp_path, caplog):
    """The one log line per step, its counts taken here from the inputs and the rows written."""
    weak = _fresh_weak(world, tmp_path)
    labels = {r["question"]: r for r in load_from_disk(str(Path(weak, "weak_labels")))}
    proposals = {r["question"]: r for h in ("h1", "h2") for r in load_from_disk(str(Path(world[h], "weak_labels")))}

    def logged(step) -> tuple[str, list[dict]]:
        caplog.clear()
        refinement_step.logger.addHandler(caplog.handler)  # the package's loggers do not propagate
        try:
            path = step()
        finally:
            refinement_step.logger.removeHandler(caplog.handler)
        return caplog.messages[-1], [dict(r) for r in load_from_disk(path)]

    before = f"{np.mean([r['acc'] for r in labels.values()]):.4f}"
    message, rows = logged(lambda: naive.main("toy_arith", weak, world["h1"], world["h2"], max_replace=0.3, seed=7))
    after = f"{np.mean([r['acc'] for r in rows]):.4f}"
    assert message == f"naive round 0: 12 of 40 labels replaced; label accuracy {before} -> {after}"

    message, rows = logged(lambda: ilr.main("toy_arith", weak, world["h1"], world["h2"], max_replace=0.5,
                                            evaluator_path="x"))  # fmt: skip
    scores = {q: zlib.crc32(f"{q}|{labels[q]['answer']}|{p['answer']}".encode()) % 1000 / 1000
              for q, p in proposals.items() if labels[q]["answer"].split("####")[1] != p["answer"].split("####")[1]}  # fmt: skip
    threshold = max(0.5, float(np.percentile(list(scores.values()), 50)))
    replaced = sum(s > threshold for s in scores.values())
    after = f"{np.mean([r['acc'] for r in rows]):.4f}"
    assert message == (f"ILR round 0: 40 rows, {40 - len(scores)} agreed, {len(scores)} compared, {replaced} replaced "
                       f"(threshold {threshold:.3f}); label accuracy {before} -> {after}")  # fmt: skip
    assert 0 < replaced < len(scores) < 40

    # Labels that are the proposals: nothing to compare, so the evaluator is not asked.
    same = tmp_path / "same"
    Dataset.from_list(list(proposals.values())).save_to_disk(str(same / "weak_labels"))
    calls = len(text_evaluator)
    message, _ = logged(lambda: ilr.main("toy_arith", str(same), world["h1"], world["h2"], evaluator_path="x"))
    accuracy = f"{np.mean([p['acc'] for p in proposals.values()]):.4f}"
    assert message == (f"ILR round 0: 40 rows, 40 agreed, 0 compared, 0 replaced (threshold 0.500); label accuracy "
                       f"{accuracy} -> {accuracy}")  # fmt: skip
    assert len(text_evaluator) == calls

    # DPO on samples of unknown correctness: 60 of the 120 pairs kept, their accuracy unknown.
    run = tmp_path / "r-ri=0"
    samples = [dict(r, acc=None) for r in load_from_disk(str(Path(world["r0"]) / "weak_labels"))]
    Dataset.from_list(samples).save_to_disk(str(run / "weak_labels"))
    message, rows = logged(lambda: dpo.main("toy_arith", weak, str(run), subsample=0.5, evaluator_path="x"))
    assert message == "DPO round 0: kept 60 preference pairs; chosen answers correct: n/a" and len(rows) == 60


def test_run_step_called_directly_takes_the_clis_defaults(world, text_evaluator, tmp_path, monkeypatch, capsys):
    """run_step's own defaults are the CLIs': seed 0, evaluator batches of 32, save, do not redo, read inputs."""
    batch_sizes, loaded = [], object()
    scores = evaluator.debiased_scores
    monkeypatch.setattr(evaluator, "load_evaluator", lambda path, device=None: loaded)
    monkeypatch.setattr(evaluator, "debiased_scores",
                        lambda e, q, a, b, batch_size: batch_sizes.append(batch_size if e is loaded else None)
                        or scores(e, q, a, b))  # fmt: skip
    method = parse_method("dpo0.10.5")
    weak = _fresh_weak(world, tmp_path)
    planned = refinement_step.run_step("toy_arith", weak, method, 0, {"strong_model_path": world["r0"]},
                                       evaluator_path="x", print_save_path=True)  # fmt: skip
    assert capsys.readouterr().out == f"{planned}\n" and not Path(planned).exists()
    with pytest.raises(ConfigError, match="round mismatch: --round_id=1 but --strong_model_path="):
        refinement_step.run_step("toy_arith", weak, method, 1, {"strong_model_path": world["r0"]}, evaluator_path="x")
    path = refinement_step.run_step("toy_arith", weak, method, 0, {"strong_model_path": world["r0"]},
                                    evaluator_path="x")  # fmt: skip
    assert path == planned and batch_sizes == [32]
    reference = dpo.main("toy_arith", _fresh_weak(world, tmp_path / "cli"), world["r0"], subsample=0.5,
                         evaluator_path="x", seed=0)  # fmt: skip
    assert _digest(path) == _digest(reference)
    Path(path, "state.json").unlink()  # a finished step is not redone: the damaged set stays damaged
    assert refinement_step.run_step("toy_arith", weak, method, 0, {"strong_model_path": world["r0"]},
                                    evaluator_path="x") == path and not Path(path, "state.json").exists()  # fmt: skip
    # What the flags change: the evaluator's batch size; save_results=False writes nothing.
    other = _fresh_weak(world, tmp_path / "other")
    unsaved = refinement_step.run_step("toy_arith", other, method, 0, {"strong_model_path": world["r0"]},
                                       evaluator_path="x", batch_size=7, save_results=False)  # fmt: skip
    assert batch_sizes == [32, 32, 7] and not Path(unsaved).exists()


def test_ilr_asks_the_tasks_agreement_with_the_label_rows(world, text_evaluator, tmp_path, monkeypatch):
    """Some tasks' agreement reads the rows (BIRD's database); ILR gives it the current labels' rows."""
    seen = []
    real = refinement_step.get_dataset_config

    def recording(name):
        config = real(name)
        return dataclasses.replace(
            config, agreement=lambda a, b, rows: seen.append(rows) or config.agreement(a, b, rows)
        )

    monkeypatch.setattr(refinement_step, "get_dataset_config", recording)
    weak = _fresh_weak(world, tmp_path)
    ilr.main("toy_arith", weak, world["h1"], world["h2"], evaluator_path="x")
    assert seen == [[dict(r) for r in load_from_disk(str(Path(weak, "weak_labels")))]]


def test_the_answers_to_judge_need_their_correctness_column(world, tmp_path):
    weak = _fresh_weak(world, tmp_path)
    run = tmp_path / "h-hd=1-ri=0"
    Dataset.from_list([{k: v for k, v in r.items() if k != "acc"} for r in load_from_disk(str(Path(world["h1"],
                       "weak_labels")))]).save_to_disk(str(run / "weak_labels"))  # fmt: skip
    with pytest.raises(ConfigError) as error:
        naive.main("toy_arith", weak, str(run), world["h2"])
    assert str(error.value).startswith(f"Label set {run / 'weak_labels'} is missing column(s) ['acc']")
    unknown = tmp_path / "r-ri=0"
    Dataset.from_list([dict(r, acc=None) for r in load_from_disk(str(Path(world["r0"], "weak_labels")))]).save_to_disk(
        str(unknown / "weak_labels"))  # fmt: skip
    with pytest.raises(ConfigError) as error:
        dpo.main("toy_arith", weak, str(unknown), use_oracle_feedback=True)
    assert str(error.value).startswith(f"Label set {unknown / 'weak_labels'} has acc=None in 40 of 40 rows")


def _run(folder: Path, weights: str | None) -> Path:
    folder.mkdir(parents=True)
    config = {"round_id": 0} if weights is None else {"round_id": 0, "model_weights": weights}
    (folder / "experiment_config.json").write_text(json.dumps(config))
    return folder


def test_step_record_names_each_input_by_what_it_is(tmp_path):
    """The record written by hand from the rule: judged runs by name and weights; round 0's labels by
    the weak run, later ones by the previous label set's record digest; feedback by the evaluator's
    `<data>/<settings>` and record digest, or "oracle"; naive names no feedback, dpo no labels."""
    weak = _run(tmp_path / "weak-run", "w-weak")
    halves = {"model1_path": str(_run(tmp_path / "h1", "w1")), "model2_path": str(_run(tmp_path / "h2", None))}
    evaluator_dir = tmp_path / "data" / "ev"
    evaluator_dir.mkdir(parents=True)
    (evaluator_dir / "provenance.json").write_text('{"lr": 1}')
    ev_digest = hashlib.sha256(json.dumps({"lr": 1}, sort_keys=True).encode()).hexdigest()[:16]
    runs = {"model1_path": {"run": "h1", "model_weights": "w1"}, "model2_path": {"run": "h2", "model_weights": None}}

    ilr_method = parse_method("ilr0.3")
    record = refinement_step.step_record(ilr_method, 0, 7, "toy", str(weak), halves, str(evaluator_dir))
    assert record == {
        "artifact": "label_set", "ds_name": "toy", "method": "ilr0.3", "settings": dataclasses.asdict(ilr_method),
        "round_id": 0, "seed": 7,
        "inputs": {**runs, "labels": {"run": "weak-run", "model_weights": "w-weak"},
                   "feedback": {"name": "data/ev", "record": ev_digest}},
    }  # fmt: skip

    previous = weak / "ilr0.3_0_weak_labels"
    previous.mkdir()
    (previous / "provenance.json").write_text('{"round_id": 0}')
    later = refinement_step.step_record(ilr_method, 1, 7, "toy", str(weak), halves, str(evaluator_dir))
    prev_digest = hashlib.sha256(b'{"round_id": 0}').hexdigest()[:16]
    assert later["inputs"]["labels"] == {"name": "ilr0.3_0_weak_labels", "record": prev_digest}
    assert later["round_id"] == 1

    oracle = refinement_step.step_record(parse_method("orailr0.3"), 0, 7, "toy", str(weak), halves, str(evaluator_dir))
    assert oracle["inputs"]["feedback"] == "oracle" and oracle["method"] == "orailr0.3"

    naive_record = refinement_step.step_record(parse_method("naive0.3"), 0, 7, "toy", str(weak), halves, None)
    assert set(naive_record["inputs"]) == {"model1_path", "model2_path", "labels"}

    round_model = {"strong_model_path": str(_run(tmp_path / "r0", "w-r0"))}
    dpo_record = refinement_step.step_record(parse_method("dpo0.50.15"), 0, 3, "toy", str(weak), round_model,
                                             str(evaluator_dir))  # fmt: skip
    assert dpo_record["inputs"] == {"strong_model_path": {"run": "r0", "model_weights": "w-r0"},
                                    "feedback": {"name": "data/ev", "record": ev_digest}}  # fmt: skip
    assert dpo_record["settings"]["beta"] == 0.5 and dpo_record["seed"] == 3
