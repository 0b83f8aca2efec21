"""Human comparisons (core.human_feedback): export what a step asks, import verdicts, run the step on them.

The round trip writes the verdicts from ground truth, so the label set must be oracle feedback's,
file for file: ILR at max_replace=1 (the oracle is uncapped; at 1 the threshold is 0.5 once one
proposal is wrong) and DPO against oracle scores with neutral ties (a tie verdict is 0.5).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest
from datasets import load_from_disk
from feedback_world import make_world

from iterative_label_refinement.core.human_feedback import comparison_id, read_verdicts
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import dpo, ilr


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path / "world", n=24)


def _rows(path: str) -> list[dict]:
    return [dict(r) for r in load_from_disk(path)]


def _acc(world: dict, run: str) -> dict[tuple[str, str], float]:
    """(question, answer) -> correctness, from a run's label set (samples: one entry per sample)."""
    out = {}
    for row in load_from_disk(str(Path(world[run]) / "weak_labels")):
        answers, accs = row["answer"], row["acc"]
        for a, acc in zip(answers, accs) if isinstance(answers, list) else [(answers, accs)]:
            out[row["question"], a] = acc
    return out


def _fill(path: Path, verdict) -> list[dict]:
    """Read an exported file and fill in each row's verdict (the test plays the annotator)."""
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [dict(r, verdict=verdict(r)) for r in rows]


def _write(rows: list[dict], path: Path) -> Path:
    if path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ilr_round_trip_gives_oracle_labels(world, tmp_path):
    args = ("toy_arith", world["weak"], world["h1"], world["h2"])
    out = ilr.main(*args, max_replace=1.0, feedback="human", export_comparisons=str(tmp_path / "export"))
    assert out == str(tmp_path / "export")
    assert not list(Path(world["weak"]).glob("ilr*"))  # an export writes no label set
    exported = [json.loads(line) for line in (tmp_path / "export" / "comparisons.jsonl").read_text().splitlines()]
    with open(tmp_path / "export" / "comparisons.csv", newline="") as f:
        assert list(csv.DictReader(f)) == exported  # the same rows in both formats
    labels = {r["question"]: r for r in load_from_disk(str(Path(world["weak"]) / "weak_labels"))}
    proposals = _acc(world, "h1") | _acc(world, "h2")
    for row in exported:
        assert (
            row["id"]
            == hashlib.sha256(json.dumps([row["question"], row["first"], row["second"]]).encode()).hexdigest()[:16]
        )
        assert row["first"] == labels[row["question"]]["answer"] and (row["question"], row["second"]) in proposals
        assert row["verdict"] == row["confidence"] == ""
    assert 0 < len(exported) < len(labels)  # only disagreements are asked
    # A second export names every comparison by the same id.
    ilr.main(*args, max_replace=1.0, feedback="human", export_comparisons=str(tmp_path / "again"))
    assert (tmp_path / "again" / "comparisons.jsonl").read_text() == (
        tmp_path / "export" / "comparisons.jsonl"
    ).read_text()

    truth = _fill(tmp_path / "export" / "comparisons.jsonl",
                  lambda r: "second" if proposals[r["question"], r["second"]] == 1.0 else "first")  # fmt: skip
    assert {r["verdict"] for r in truth} == {"first", "second"}
    human = ilr.main(*args, max_replace=1.0, feedback="human", verdicts_path=str(_write(truth, tmp_path / "v.jsonl")))
    oracle = ilr.main(*args, max_replace=1.0, use_oracle_feedback=True)
    assert Path(human).name == "ilr1.0_0_weak_labels" and Path(oracle).name == "orailr1.0_0_weak_labels"
    assert _rows(human) == _rows(oracle)
    assert _rows(human) != _rows(str(Path(world["weak"]) / "weak_labels"))  # some labels changed


def test_dpo_round_trip_from_csv_gives_oracle_pairs(world, tmp_path):
    args = ("toy_arith", world["weak"], world["r0"])
    dpo.main(*args, subsample=0.5, feedback="human", export_comparisons=str(tmp_path / "export"))
    acc = _acc(world, "r0")

    def truth(r):
        first, second = acc[r["question"], r["first"]], acc[r["question"], r["second"]]
        return "second" if second > first else "first" if first > second else "tie"

    verdicts = _fill(tmp_path / "export" / "comparisons.csv", truth)
    assert {r["verdict"] for r in verdicts} == {"first", "second", "tie"}
    human = dpo.main(*args, subsample=0.5, feedback="human", verdicts_path=str(_write(verdicts, tmp_path / "v.csv")))
    oracle = dpo.main(*args, subsample=0.5, use_oracle_feedback=True, neutral_oracle_ties=True)
    assert _rows(human) == _rows(oracle)
    assert read_verdicts(tmp_path / "v.csv")[verdicts[0]["id"]] in (0.0, 0.5, 1.0)


def test_a_verdict_file_must_answer_exactly_what_the_step_asks(world, tmp_path):
    args = ("toy_arith", world["weak"], world["h1"], world["h2"])
    ilr.main(*args, max_replace=0.5, feedback="human", export_comparisons=str(tmp_path / "export"))
    rows = _fill(tmp_path / "export" / "comparisons.jsonl", lambda r: "tie")
    asked = len(rows)
    rows = rows[2:] + [dict(rows[0], id="0123456789abcdef")]  # two missing, one unknown
    with pytest.raises(ConfigError, match=f"misses 2 of the {asked} comparisons this step asks and has 1 unknown ids"):
        ilr.main(*args, max_replace=0.5, feedback="human", verdicts_path=str(_write(rows, tmp_path / "v.jsonl")))
    assert not list(Path(world["weak"]).glob("ilr0.5_0_weak_labels*"))


def test_verdict_scores_and_confidence_by_hand(tmp_path):
    rows = [{"id": "a", "verdict": "second", "confidence": 0.6}, {"id": "b", "verdict": "first", "confidence": "0.6"},
            {"id": "c", "verdict": "tie", "confidence": 0.9}, {"id": "d", "verdict": "first"},
            {"id": "e", "verdict": "second", "confidence": ""}]  # fmt: skip
    scores = read_verdicts(_write(rows, tmp_path / "v.jsonl"))
    assert scores == pytest.approx({"a": 0.8, "b": 0.2, "c": 0.5, "d": 0.0, "e": 1.0})
    assert comparison_id("q", "a", "b") != comparison_id("q", "b", "a")  # the order shown is part of the comparison


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": "a", "verdict": "better"}], "verdict 'better' is not one of ['first', 'second', 'tie']"),
        ([{"id": "a", "verdict": "first", "confidence": 1.5}], "confidence 1.5 is not a number in [0, 1]"),
        ([{"id": "a", "verdict": "first", "confidence": "high"}], "confidence 'high' is not a number in [0, 1]"),
        ([{"id": "a", "verdict": "first"}, {"id": "a", "verdict": "second"}], "id a has two different verdicts"),
        ([{"verdict": "first"}], "row 1 has no id"),
    ],
)
def test_bad_verdict_files_are_refused_in_one_line(tmp_path, rows, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_verdicts(_write(rows, tmp_path / "v.jsonl"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (dict(feedback="human"), "--feedback=human takes one of --export_comparisons"),
        (dict(feedback="human", verdicts_path="v.jsonl", export_comparisons="x"), "--feedback=human takes one of"),
        (dict(verdicts_path="v.jsonl"), "--feedback=evaluator takes no --verdicts_path"),
        (dict(feedback="human", verdicts_path="v.txt"), "must end in .jsonl or .csv"),
        (dict(feedback="human", verdicts_path="nowhere.jsonl"), "does not exist"),
    ],
)
def test_human_flags_are_checked(world, flags, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v.txt").write_text("")
    with pytest.raises(ConfigError, match=message):
        ilr.main("toy_arith", world["weak"], world["h1"], world["h2"], **flags)
