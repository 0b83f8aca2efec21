"""The one refinement step (core.refinement_step) behind ilr, naive and dpo, on synthetic label sets.

The label sets have known correctness (both-correct disagreements, mixed pairs, unknown-free), and
the evaluator is a fixed function of the texts, so every step's rows are pinned: the digests are
those of the rows the three separate CLIs wrote before they shared one runner.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from iterative_label_refinement.core import evaluator
from iterative_label_refinement.core.common import ConfigError
from iterative_label_refinement.experiments import dpo, ilr, naive


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
    ("naive0.5_0", "86b1b7e02cf091a2", lambda w: naive.main("toy_arith", w["weak"], w["h1"], w["h2"], max_replace=0.5,
                                                             seed=1)),
    ("cornaive0.3_0", "44ccfbc8ecaadba6", lambda w: naive.main("toy_arith", w["weak"], w["h1"], w["h2"],
                                                                max_replace=0.3, seed=1,
                                                                start_with_correct_labels=True)),
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
    # Round 1 starts from round 0's output (orailr0.5_0, naive0.5_0) with round-1 proposals.
    r1 = {k: v.replace("ri=0", "ri=1") for k, v in world.items()}
    path = ilr.main("toy_arith", r1["weak"], r1["h1"], r1["h2"], round_id=1, max_replace=0.5, use_oracle_feedback=True)
    assert _digest(path) == "42227a5b204cc211"
    path = naive.main("toy_arith", r1["weak"], r1["h1"], r1["h2"], round_id=1, max_replace=0.5, seed=1)
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
