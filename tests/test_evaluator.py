"""The comparison evaluator: pair data from checkpoints, training, reloading, batched debiased scoring."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from iterative_label_refinement.core import evaluator_pairs, train_evaluator
from iterative_label_refinement.core.evaluator import (
    ClassifierEvaluator,
    Evaluator,
    LikelihoodEvaluator,
    debiased_scores,
    load_evaluator,
    save_evaluator,
)
from iterative_label_refinement.core.files import write_json
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.prompts import ACCEPT, REJECT, format_evaluator_prompt
from iterative_label_refinement.core.provenance import digest
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import generate_evaluator_data as ged
from iterative_label_refinement.experiments import main as main_module

TINY = dict(ds_name="toy_arith", model_size="tiny-random", n_docs=48, n_test_docs=8, batch_size=8, epochs=1,
            lora_rank=4, minibatch_size_per_device=4)  # fmt: skip
EVAL_TINY = dict(model_size="tiny-random", batch_size=8, minibatch_size_per_device=8)


# ---------------------------------------------------------------------------------------------
# Pure functions on plain data
# ---------------------------------------------------------------------------------------------


def test_pairs_follow_the_spec_rules():
    questions = ["q_mixed", "q_all_correct", "q_all_wrong", "q_unscored"]
    gold = ["G1", "G2", "G3", "G4"]
    answers = [["c1", "c2", "w3", "w4"], ["w1", "c2b", "w3b", "w4b"]]  # checkpoint x question
    accs = [[1.0, 1.0, 0.0, None], [0.0, 1.0, 0.0, None]]
    pairs = evaluator_pairs.build_pairs(questions, gold, answers, accs, seed=0)
    by_q = {}
    for p in pairs:
        by_q.setdefault(p["question"], []).append(p)
    mixed = {p["kind"]: p for p in by_q["q_mixed"]}
    assert mixed["gold_vs_correct"]["better"] == "G1" and mixed["gold_vs_correct"]["worse"] == "c1"
    assert mixed["correct_vs_wrong"]["better"] in ("G1", "c1") and mixed["correct_vs_wrong"]["worse"] == "w1"
    assert [p["kind"] for p in by_q["q_all_correct"]] == ["gold_vs_correct"]
    assert by_q["q_all_correct"][0]["worse"] in ("c2", "c2b")
    assert [(p["kind"], p["better"]) for p in by_q["q_all_wrong"]] == [("gold_vs_wrong", "G3")]
    assert [(p["kind"], p["better"]) for p in by_q["q_unscored"]] == [("gold_vs_wrong", "G4")]  # no score: wrong


def test_pairs_drop_identical_answers_and_favour_early_checkpoints():
    # A correct answer identical to gold gives no pair: its two rows would contradict each other.
    assert evaluator_pairs.build_pairs(["q"], ["same"], [["same "]], [[1.0]]) == []
    n = 3000
    answers = [[f"early{i}" for i in range(n)], [f"mid{i}" for i in range(n)], [f"late{i}" for i in range(n)]]
    pairs = evaluator_pairs.build_pairs([f"q{i}" for i in range(n)], ["gold"] * n, answers, [[0.0] * n] * 3, seed=1)
    counts = Counter(p["worse"].rstrip("0123456789") for p in pairs)
    assert counts["early"] / n == pytest.approx(4 / 7, abs=0.03)  # weights 2^(n-1-i): 4, 2, 1
    assert counts["mid"] / n == pytest.approx(2 / 7, abs=0.03)


def test_rows_split_and_balance():
    pairs = [dict(question=f"q{i // 2}", better=f"b{i}", worse=f"w{i}", kind="gold_vs_wrong") for i in range(200)]
    rows = evaluator_pairs.pairs_to_rows(pairs[:1])
    assert rows == [
        {"prompt": format_evaluator_prompt("q0", "b0", "w0"), "label": REJECT, "question": "q0", "answer_a": "b0",
         "answer_b": "w0", "pair_id": 0, "pair_kind": "gold_vs_wrong"},
        {"prompt": format_evaluator_prompt("q0", "w0", "b0"), "label": ACCEPT, "question": "q0", "answer_a": "w0",
         "answer_b": "b0", "pair_id": 0, "pair_kind": "gold_vs_wrong"},
    ]  # fmt: skip
    train, test = evaluator_pairs.split_by_question(pairs, seed=0)
    assert len({p["question"] for p in test}) == 10 and len({p["question"] for p in train}) == 90
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    balanced = evaluator_pairs.balance({"general": pairs[:50], "safety": pairs[50:]}, seed=0)
    assert Counter(p["source"] for p in balanced) == {"general": 50, "safety": 50}


def test_fit_scale_calibrates_without_reordering():
    rng = np.random.default_rng(0)
    gaps = rng.normal(2.0, 2.0, 2000)  # log p(better) - log p(worse), mostly positive
    scale = train_evaluator.fit_scale(gaps)
    assert 0.2 < scale < 2.0
    assert train_evaluator.fit_scale(gaps * 100) == pytest.approx(scale / 100, rel=0.2)


# ---------------------------------------------------------------------------------------------
# Debiased scoring
# ---------------------------------------------------------------------------------------------


class LengthEvaluator(Evaluator):
    """P(accept) = sigmoid(len(B) - len(A) + bias); bias = 0 makes it position-symmetric."""

    kind = "fake"

    def __init__(self, bias: float = 0.0):
        self.bias, self.calls = bias, []

    def p_accept(self, questions, answers_a, answers_b, batch_size=32):
        self.calls.append((list(questions), list(answers_a), list(answers_b)))
        gap = np.array([len(b) - len(a) for a, b in zip(answers_a, answers_b)], dtype=float)
        return 1 / (1 + np.exp(-(gap + self.bias)))


def test_debiased_scores_forward_the_batch_size_and_refuse_unequal_lengths():
    seen = []

    class Recorder(LengthEvaluator):
        def p_accept(self, questions, answers_a, answers_b, batch_size=32):
            seen.append(batch_size)
            return super().p_accept(questions, answers_a, answers_b)

    evaluator = Recorder()
    debiased_scores(evaluator, ["q"], ["a"], ["b"])
    debiased_scores(evaluator, ["q"], ["a"], ["b"], batch_size=5)
    assert seen == [32, 5]
    for args in ((["q", "q"], ["a"], ["b"]), (["q"], ["a", "a"], ["b"]), (["q"], ["a"], ["b", "b"])):
        with pytest.raises(ConfigError, match="must have the same length"):
            debiased_scores(evaluator, *args)


def test_debiased_score_is_antisymmetric_and_swaps_positions():
    qs, a, b = ["q1", "q2", "q3"], ["x", "xxx", "xx"], ["xxx", "x", "xx"]
    sym = LengthEvaluator()
    ab, ba = debiased_scores(sym, qs, a, b), debiased_scores(sym, qs, b, a)
    np.testing.assert_allclose(ab, 1 - ba, atol=1e-12)
    np.testing.assert_allclose(ab, sym.p_accept(qs, a, b), atol=1e-12)  # symmetric: both halves agree
    biased = LengthEvaluator(bias=1.5)  # leans to "accept" whatever the order
    score = debiased_scores(biased, qs, a, b)
    assert biased.calls[-1] == (qs + qs, a + b, b + a)  # (A=current, B=proposal), then swapped
    expected = 0.5 * (biased.p_accept(qs, a, b) + 1 - biased.p_accept(qs, b, a))
    np.testing.assert_allclose(score, expected, atol=1e-12)
    assert score[2] == pytest.approx(0.5)  # equal answers: the bias cancels
    assert biased.p_accept(qs, a, b)[2] > 0.8


# ---------------------------------------------------------------------------------------------
# Pipeline on tiny models: GT run with checkpoints -> evaluator data -> evaluator
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    run = main_module.main(results_folder=str(results), save_frequency=0.5, generate_weak_labels=False,
                           force_eval=False, **TINY)  # fmt: skip
    run_dir = Path(run["save_path"])
    data = ged.main(save_path=str(run_dir), results_folder=str(results))
    return results, run_dir, Path(data["save_path"])


def test_checkpoints_give_evaluator_data(pipeline, monkeypatch):
    results, run_dir, data_dir = pipeline
    checkpoints = ged.find_checkpoints(run_dir)
    assert len(checkpoints) == 2 and int(checkpoints[0].name[11:]) < int(checkpoints[1].name[11:])
    assert data_dir == results / "evaluator-data" / "d=toy_arith-ms=tiny-random-s=0"
    printed = ged.main(model_size="tiny-random", ds_name="toy_arith", results_folder=str(results), print_save_path=True)
    assert printed == str(data_dir)  # what the round scripts ask before the run dir exists
    dd = load_from_disk(str(data_dir))
    cached = json.loads((checkpoints[0] / ged.ANSWERS_FILE).read_text())
    assert len(cached["answers"]) == 24 and cached["temperature"] == 0.6 and len(cached["acc"]) == 24
    rows = list(dd["train"]) + list(dd["test"])
    for r in rows:
        assert r["prompt"] == format_evaluator_prompt(r["question"], r["answer_a"], r["answer_b"])
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["pair_id"], []).append(r)
    for pair in by_pair.values():  # both orderings of every pair, with opposite labels
        assert sorted(r["label"] for r in pair) == [ACCEPT, REJECT]
        accept, reject = sorted(pair, key=lambda r: r["label"] != ACCEPT)
        assert (accept["answer_a"], accept["answer_b"]) == (reject["answer_b"], reject["answer_a"])
    n_questions = {s: len(set(dd[s]["question"])) for s in ("train", "test")}
    assert n_questions["test"] == round(0.1 * sum(n_questions.values()))
    assert not set(dd["train"]["question"]) & set(dd["test"]["question"])

    # A rerun reuses every checkpoint's cached answers: no model is loaded, the data is the same.
    monkeypatch.setattr(ged, "_generate", lambda *a, **k: pytest.fail("regenerated despite the cache"))
    ged.main(save_path=str(run_dir), results_folder=str(results))
    assert load_from_disk(str(data_dir))["train"]["prompt"] == dd["train"]["prompt"]


@pytest.fixture(scope="module")
def classifier_dir(pipeline):
    results, _, data_dir = pipeline
    out = train_evaluator.main(ds_name=str(data_dir), epochs=8, lr=1e-2, results_folder=str(results), **EVAL_TINY)
    return Path(out["save_path"]), out


def test_evaluator_trains_stops_early_and_reloads_alone(classifier_dir, pipeline, tmp_path, monkeypatch):
    results, _, data_dir = pipeline
    out_dir, out = classifier_dir
    assert out_dir.parent == results / "evaluators" / data_dir.name
    assert out["stopped_early"] and out["epochs_run"] < 8 and out["best_epoch"] < out["epochs_run"]
    assert not (out_dir / "checkpoints").exists()
    summary = json.loads((out_dir / "results_summary.json").read_text())
    assert 0 <= summary["pair_accuracy"] <= 1 and summary["n_test_pairs"] > 0
    config = json.loads((out_dir / "experiment_config.json").read_text())
    assert config["evaluator_kind"] == "classifier"
    assert json.loads((out_dir / "config.json").read_text())["pad_token_id"] is not None

    printed = train_evaluator.main(ds_name=str(data_dir), epochs=8, lr=1e-2, results_folder=str(results),
                                   print_save_path=True, **EVAL_TINY)  # fmt: skip
    assert printed == str(out_dir)
    # Rerun: found, not retrained.
    again = train_evaluator.main(ds_name=data_dir.name, epochs=8, lr=1e-2, results_folder=str(results), **EVAL_TINY)
    assert again["skipped"] is True

    # Reload from a copy of the dir, with no registry, cache or results folder to fall back on.
    copy = tmp_path / "moved-evaluator"
    shutil.copytree(out_dir, copy)
    monkeypatch.setenv("ILR_CACHE_PATH", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("ILR_SAVE_PATH", raising=False)
    evaluator = load_evaluator(copy)
    assert isinstance(evaluator, ClassifierEvaluator)
    dd = load_from_disk(str(data_dir))
    p = evaluator.p_accept(dd["test"]["question"], dd["test"]["answer_a"], dd["test"]["answer_b"])
    assert p.shape == (len(dd["test"]),) and ((p >= 0) & (p <= 1)).all()
    assert not (tmp_path / "empty-cache").exists()


def test_an_evaluator_of_other_weights_is_refused_not_reused(classifier_dir, pipeline, tmp_path):
    """Evaluator dirs are named by model name too: one trained on another recipe of tiny-random
    must not be taken as this one."""
    from iterative_label_refinement.core.models import resolve_model_path

    results, _, data_dir = pipeline
    out_dir, _ = classifier_dir
    config = json.loads((out_dir / "experiment_config.json").read_text())
    assert config["model_weights"] == Path(resolve_model_path("tiny-random")).name  # the build it trained on
    copy = tmp_path / "results"
    shutil.copytree(out_dir, copy / out_dir.relative_to(results))
    moved = copy / out_dir.relative_to(results)
    write_json(moved / "experiment_config.json", dict(config, model_weights="tiny-random-00000000"))
    before = {p: p.stat().st_mtime_ns for p in moved.rglob("*")}
    for kwargs in (dict(), dict(print_save_path=True)):
        with pytest.raises(ConfigError, match=f"{moved} was made with the weights tiny-random-00000000"):
            train_evaluator.main(ds_name=str(data_dir), epochs=8, lr=1e-2, results_folder=str(copy), **EVAL_TINY,
                                 **kwargs)  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in moved.rglob("*")} == before


def test_evaluator_data_and_evaluators_are_reused_only_when_the_same_inputs_made_them(classifier_dir, pipeline,
                                                                                      tmp_path):  # fmt: skip
    """Evaluator data is named by task, model and seed only, and an evaluator by its settings: data
    sampled at another temperature, or an evaluator of other data, must be refused, not reused."""
    results, run_dir, data_dir = pipeline
    out_dir, _ = classifier_dir
    record = json.loads((data_dir / "provenance.json").read_text())
    assert record["sampling"] == {"temperature": 0.6, "top_k": 0, "top_p": 1.0} and record["do_eval"] is True
    weights = json.loads((run_dir / "experiment_config.json").read_text())["model_weights"]
    assert record["runs"] == {"": {"run": run_dir.name, "model_weights": weights}}
    files = lambda path: {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}  # noqa: E731
    before = files(data_dir)
    with pytest.raises(ConfigError) as error:
        ged.main(save_path=str(run_dir), results_folder=str(results), temperature=0.9)
    assert str(error.value) == (f"{data_dir} was made with sampling.temperature=0.6, but this step now has "
                                "sampling.temperature=0.9; pass --force_regenerate=True to redo it, or start another "
                                "results folder")  # fmt: skip
    assert files(data_dir) == before
    evaluator_record = json.loads((out_dir / "provenance.json").read_text())
    assert evaluator_record["data"] == {"name": data_dir.name, "record": digest(record)}

    # The same evaluator settings on data remade at 0.9: the evaluator of the 0.6 data is refused.
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    copied_data = copy / data_dir.relative_to(results)
    ged.main(save_path=str(copy / run_dir.relative_to(results)), results_folder=str(copy), temperature=0.9,
             force_regenerate=True)  # fmt: skip
    assert json.loads((copied_data / "provenance.json").read_text())["sampling"]["temperature"] == 0.9
    copied_evaluator = copy / out_dir.relative_to(results)
    before = files(copied_evaluator)
    with pytest.raises(ConfigError, match=rf"^{copied_evaluator} was made with data.record=.*--force_retrain=True"):
        train_evaluator.main(ds_name=str(copied_data), epochs=8, lr=1e-2, results_folder=str(copy), **EVAL_TINY)
    assert files(copied_evaluator) == before


def _varied_triples(n: int = 13):
    rng = random.Random(0)
    qs = [f"{rng.randint(10, 99)} plus {rng.randint(10, 99)}" + " minus 3" * (i % 3) for i in range(n)]
    a = [f"{i}+1={i + 1}\n#### {i + 1}" + "\n" * (i % 4) for i in range(n)]
    b = [f"#### {i * 7}" for i in range(n)]
    return qs, a, b


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_classifier_scores_equal_one_at_a_time(classifier_dir, padding_side):
    evaluator = load_evaluator(classifier_dir[0])
    evaluator.tokenizer.padding_side = padding_side
    qs, a, b = _varied_triples()
    batched = evaluator.p_accept(qs, a, b, batch_size=5)
    single = evaluator.p_accept(qs, a, b, batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert np.ptp(single) > 0  # the scores differ, so the comparison means something
    np.testing.assert_allclose(debiased_scores(evaluator, qs, a, b, 4) + debiased_scores(evaluator, qs, b, a, 3), 1.0,
                               atol=1e-4)  # fmt: skip
    assert debiased_scores(evaluator, [], [], []).shape == (0,)
    with pytest.raises(ConfigError, match="same length"):
        evaluator.p_accept(qs, a, b[:-1])


def test_likelihood_evaluator_trains_saves_and_scores(pipeline):
    results, _, data_dir = pipeline
    out = train_evaluator.main(ds_name=str(data_dir), epochs=1, evaluator_kind="likelihood",
                               results_folder=str(results), **EVAL_TINY)  # fmt: skip
    out_dir = Path(out["save_path"])
    config = json.loads((out_dir / "experiment_config.json").read_text())
    assert config["evaluator_kind"] == "likelihood" and config["likelihood_scale"] > 0
    assert "pair_accuracy" in json.loads((out_dir / "results_summary.json").read_text())
    evaluator = load_evaluator(out_dir)
    assert isinstance(evaluator, LikelihoodEvaluator)
    qs, a, b = _varied_triples()
    np.testing.assert_allclose(evaluator.p_accept(qs, a, b, batch_size=6), evaluator.p_accept(qs, a, b, batch_size=1),
                               atol=1e-4)  # fmt: skip
    logp = evaluator.answer_logps(qs, a)
    expected = 1 / (1 + np.exp(-config["likelihood_scale"] * (evaluator.answer_logps(qs, b) - logp)))
    np.testing.assert_allclose(evaluator.p_accept(qs, a, b), expected, atol=1e-6)
    assert debiased_scores(evaluator, [], [], []).shape == (0,)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_run_without_checkpoints_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="No checkpoint-N dirs.*--save_frequency"):
        ged.main(save_path=str(tmp_path / "run"), ds_name="toy_arith", model_size="tiny-random",
                 results_folder=str(tmp_path))  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.generate_evaluator_data",
                           f"--save_path={tmp_path / 'run'}", f"--results_folder={tmp_path}"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "save_frequency" in proc.stderr


def test_evaluator_dir_without_head_or_tokenizer_is_a_clear_error(tmp_path):
    tok = load_tokenizer("tiny-random")
    with pytest.raises(ConfigError, match="not an evaluator dir"):
        load_evaluator(tmp_path)
    lm_dir = tmp_path / "lm"
    save_evaluator(load_model("tiny-random"), tok, lm_dir, {"evaluator_kind": "classifier"})
    with pytest.raises(ConfigError, match="no sequence-classification head"):
        load_evaluator(lm_dir)
    clf_dir = tmp_path / "clf"
    save_evaluator(load_model("tiny-random", kind="classifier"), tok, clf_dir, {})
    assert isinstance(load_evaluator(clf_dir), ClassifierEvaluator)
    (clf_dir / "tokenizer_config.json").unlink()
    with pytest.raises(ConfigError, match="no tokenizer"):
        load_evaluator(clf_dir)
    write_json(clf_dir / "experiment_config.json", {"evaluator_kind": "oracle"})
    with pytest.raises(ConfigError, match="unknown evaluator_kind 'oracle'"):
        load_evaluator(clf_dir)
    with pytest.raises(ConfigError, match="unknown evaluator_kind 'oracle'"):
        save_evaluator(load_model("tiny-random"), tok, tmp_path / "bad", {"evaluator_kind": "oracle"})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="unknown evaluator_kind 'oracle'"):
        train_evaluator.main(ds_name=str(tmp_path / "nothing"), evaluator_kind="oracle", results_folder=str(tmp_path))
    with pytest.raises(ConfigError, match="No evaluator data"):
        train_evaluator.main(ds_name=str(tmp_path / "nothing"), model_size="tiny-random", results_folder=str(tmp_path))
