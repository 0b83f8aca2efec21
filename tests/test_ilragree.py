"""ilragree: ILR where a disagreeing label is compared only when both half models answered its prompt alike.

The decisions are checked against the rule written out here: which half model trained on each prompt
(cross-fitting's split, redone with `datasets`), the candidates, the threshold over their scores
only, and the strict comparison, on inputs where plain ILR decides otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from iterative_label_refinement.core import evaluator
from iterative_label_refinement.core.files import write_json
from iterative_label_refinement.core.methods import parse_method
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import refine

N, SEED, MAX_REPLACE = 16, 3, 0.4


def _final(answer: str) -> str:
    return answer.split("####")[1].strip()


def _world(root: Path, missing: int = 0) -> dict:
    """A weak run's labels of N prompts, and two half runs (each trained on its half, seed SEED) that
    answered every prompt (but the `missing` last ones, for half 2). Prompt i's label is `#### i`; the
    half model that did not train on it proposes `#### i+1` (i % 4 != 3) and the other answers
    `#### i+1` when i % 4 < 2, else `#### i+2`; the proposals' texts differ by who wrote them."""
    labels = [{"question": f"What is {i} plus 0?", "answer": f"label #### {i}", "gt_answer": f"#### {i + 1}",
               "acc": 0.0} for i in range(N)]  # fmt: skip
    weak = root / "weak"
    Dataset.from_list(labels).save_to_disk(str(weak / "weak_labels"))
    split = Dataset.from_list(labels).train_test_split(test_size=0.5, seed=SEED)
    trained = {1: set(split["train"]["question"]), 2: set(split["test"]["question"])}
    runs = {}
    for half in (1, 2):
        run = root / f"h-hd={half}-ri=0"
        rows = []
        for i, row in enumerate(labels):
            if half == 2 and i >= N - missing:
                continue
            if row["question"] in trained[half]:  # the model that trained on it
                answer = f"mine {half} #### {i + 1}" if i % 4 < 2 else f"mine {half} #### {i + 2}"
            else:  # the cross-fitted proposal
                answer = f"cross {half} #### {i + 1}" if i % 4 != 3 else f"cross {half} #### {i}"
            rows.append({**row, "answer": answer, "acc": float(_final(answer) == str(i + 1))})
        Dataset.from_list(rows).save_to_disk(str(run / "weak_labels"))
        write_json(run / "experiment_config.json", {"round_id": 0, "ds_name": "toy_arith", "half_data": half,
                                                    "seed": SEED, "weak_labels_path": str(weak / "weak_labels")})  # fmt: skip
        runs[half] = run
    return {"weak": str(weak), "h1": str(runs[1]), "h2": str(runs[2]), "labels": labels, "trained": trained}


# The evaluator's preference for each prompt's proposal.
# Over ilragree's 8 candidates the threshold is 0.85 (two of them tie there); over plain ILR's 12
# disagreements it is 0.83, which would replace the tied ones.
SCORES = dict(enumerate([0.9, 0.85, 0.3, 0.5, 0.6, 0.85, 0.2, 0.5, 0.7, 0.75, 0.1, 0.5, 0.95, 0.8, 0.99, 0.5]))


@pytest.fixture
def scored(monkeypatch):
    asked = []

    def scores(_, questions, first, second, batch_size=32):
        asked.extend(questions)
        return np.array([SCORES[int(q.split()[2])] for q in questions])

    monkeypatch.setattr(evaluator, "load_evaluator", lambda path, device=None: object())
    monkeypatch.setattr(evaluator, "debiased_scores", scores)
    return asked


def _expected(world: dict, both_must_agree: bool) -> tuple[set[int], set[int]]:
    """(compared, replaced) prompts by the rule itself: the cross-fitted proposal disagrees with the label
    (and, for ilragree, the answer of the half model that trained on it agrees with the proposal); the
    compared ones whose score is strictly above max(0.5, the (1 - max_replace) quantile of their scores)."""
    compared = []
    for i in range(N):
        mine = str(i + 1) if i % 4 < 2 else str(i + 2)
        cross = str(i) if i % 4 == 3 else str(i + 1)
        if cross != str(i) and (not both_must_agree or mine == cross):
            compared.append(i)
    threshold = max(0.5, float(np.quantile([SCORES[i] for i in compared], 1 - MAX_REPLACE)))
    return set(compared), {i for i in compared if SCORES[i] > threshold}


def test_ilragree_replaces_only_labels_both_half_models_would_change(tmp_path, scored):
    world = _world(tmp_path)
    path = refine.main("ilragree", "toy_arith", world["weak"], model1_path=world["h1"], model2_path=world["h2"],
                       max_replace=MAX_REPLACE, evaluator_path="x", seed=SEED)  # fmt: skip
    assert Path(path).name == "ilragree0.4_0_weak_labels"
    compared, replaced = _expected(world, both_must_agree=True)
    plain_compared, plain_replaced = _expected(world, both_must_agree=False)
    assert replaced and replaced != plain_replaced and compared != plain_compared  # inputs where the rules differ
    assert sorted(int(q.split()[2]) for q in scored) == sorted(compared)  # the evaluator is asked about candidates
    threshold_ties = [i for i in compared if SCORES[i] == 0.85]
    assert len(threshold_ties) > 1 and not set(threshold_ties) & replaced  # ties at the threshold all stay
    rows = {int(r["question"].split()[2]): r for r in load_from_disk(path)}
    assert len(rows) == N
    for i, row in rows.items():
        q = world["labels"][i]["question"]
        cross_half = 2 if q in world["trained"][1] else 1  # the model that did not train on it
        expected = f"cross {cross_half} #### {i + 1}" if i in replaced else f"label #### {i}"
        assert row["answer"] == expected, i
        assert row["acc"] == float(i in replaced)


def test_ilragree_needs_both_half_models_to_answer_every_prompt(tmp_path, scored):
    world = _world(tmp_path, missing=1)
    with pytest.raises(ConfigError, match=r"--model2_path=.* has no answer to 1 of the 16 prompts .*label them all"):
        refine.main("ilragree", "toy_arith", world["weak"], model1_path=world["h1"], model2_path=world["h2"],
                    max_replace=MAX_REPLACE, evaluator_path="x", seed=SEED)  # fmt: skip
    assert not scored and not list(Path(world["weak"]).glob("ilragree*"))


def test_ilragree_half_runs_label_every_prompt(run_config, tmp_path):
    """The declaration asks it, so a half run of an ilragree method labels all its labels' prompts,
    and trains on its half as every half run does (run_data.half_split)."""
    from iterative_label_refinement.core.run_data import load_run_data

    world = _world(tmp_path)
    write_json(Path(world["weak"]) / "experiment_config.json", {"ds_name": "toy_arith", "model_size": "tiny-random",
                                                                "round_id": 0, "seed": SEED})  # fmt: skip
    assert parse_method("ilragree0.4").spec.half_runs_label_all
    for method, labelled in (("ilragree0.4", N), ("ilr0.4", N // 2)):
        cfg = run_config(ds_name="toy_arith", model_size="tiny-random", weak_labels_path=world["weak"], method=method,
                         half_data=1, seed=SEED, weak_model_size="tiny-random")  # fmt: skip
        data = load_run_data(cfg)
        assert set(data.train["question"]) == world["trained"][1]
        assert len(data.label_targets) == labelled
