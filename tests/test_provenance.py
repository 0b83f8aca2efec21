"""Provenance (core.provenance): a derived artifact is reused only when the inputs that made it are the
inputs a step has now; otherwise the step refuses in one line and leaves it as it is.

The runs are synthetic run dirs (a config with the recorded weights, and `weak_labels`), so the
strong model, the evaluator and the rounds can be swapped without training; the evaluator's verdict
is a fixed function of the texts (no model). Evaluator data and evaluators are checked on real tiny
runs in tests/test_evaluator.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from iterative_label_refinement.core import evaluator
from iterative_label_refinement.core.files import write_json
from iterative_label_refinement.core.models import weights_id
from iterative_label_refinement.core.provenance import differences, digest, reuse
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import dpo, ilr

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# The rule on plain records
# ---------------------------------------------------------------------------------------------


def test_differences_name_every_differing_leaf_with_both_sides():
    old = {"seed": 0, "inputs": {"model1_path": {"run": "a", "model_weights": "A"}, "feedback": "oracle"}}
    new = {"seed": 0, "inputs": {"model1_path": {"run": "a", "model_weights": "B"}, "feedback": {"name": "e"}}}
    assert differences(old, new) == [("inputs.feedback", "oracle", {"name": "e"}),
                                     ("inputs.model1_path.model_weights", "A", "B")]  # fmt: skip
    assert differences(old, old) == []
    assert differences({"a": 1}, {"a": 1, "b": None}) == []  # an absent key reads as null on both sides
    assert differences({"a": 1}, {"b": 2}) == [("a", 1, None), ("b", None, 2)]
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1}) != digest({"a": 1, "b": [2, 1]})


def test_reuse_only_what_the_same_inputs_made(tmp_path, caplog):
    out = tmp_path / "ilr0.1_0_weak_labels"
    record = {"seed": 0, "inputs": {"model1_path": {"model_weights": "A"}}}
    assert reuse(out, record, "--force=True") is False  # absent: make it
    out.mkdir()
    with caplog.at_level("WARNING"):
        assert reuse(out, record, "--force=True") is True  # made before records: reused, with a warning
    assert f"{out} has no provenance.json (made before records were kept): reused unchecked" in caplog.messages
    write_json(out / "provenance.json", record)
    assert reuse(out, json.loads(json.dumps(record)), "--force=True") is True
    other = {"seed": 1, "inputs": {"model1_path": {"model_weights": "B"}}}
    with pytest.raises(ConfigError) as error:
        reuse(out, other, "--force=True")
    assert str(error.value) == (f'{out} was made with inputs.model1_path.model_weights="A", but this step now has '
                                'inputs.model1_path.model_weights="B" (and 1 more difference(s)); pass --force=True '
                                "to redo it, or start another results folder")  # fmt: skip
    (out / "provenance.json").write_text('{"seed": ')
    with pytest.raises(ConfigError, match=r"provenance.json is damaged"):
        reuse(out, record, "--force=True")


# ---------------------------------------------------------------------------------------------
# Refinement steps: ILR label sets and DPO pairs
# ---------------------------------------------------------------------------------------------


def _label(rng: random.Random, i: int) -> dict:
    return {"question": f"What is {i} plus 0?", "answer": f"#### {rng.choice([i, i, i + 1])}",
            "gt_answer": f"#### {i}", "acc": float(rng.random() < 0.5)}  # fmt: skip


def _run(root: Path, name: str, weights: str, rows: list[dict], round_id: int = 0) -> str:
    run = root / name
    Dataset.from_list(rows).save_to_disk(str(run / "weak_labels"))
    write_json(run / "experiment_config.json", {"round_id": round_id, "model_weights": weights})
    return str(run)


def _evaluator_dir(root: Path, name: str, weights: str) -> str:
    path = root / "evaluators" / "d=toy_arith-ms=tiny-s=0" / name
    write_json(path / "provenance.json", {"artifact": "evaluator", "model_weights": weights})
    return str(path)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A weak run, the half runs of two strong models (A, B) in rounds 0 and 1, each strong model's
    round-0 samples for DPO, and two evaluators; verdicts come from the texts."""
    rng = random.Random(0)
    base = [_label(rng, i) for i in range(30)]
    runs = {"weak": _run(tmp_path, "weak-ms=w-ri=0", "W", base)}
    for model in "AB":
        for round_id in (0, 1):
            proposals = [dict(r, answer=_label(rng, i)["answer"]) for i, r in enumerate(base)]
            for half, part in ((1, proposals[:15]), (2, proposals[15:])):
                runs[f"{model}{half}r{round_id}"] = _run(tmp_path, f"ms={model}-hd={half}-ri={round_id}", model, part,
                                                         round_id)  # fmt: skip
        samples = [{"question": r["question"], "gt_answer": r["gt_answer"],
                    "answer": [_label(rng, i)["answer"] for _ in range(4)],
                    "acc": [float(rng.random() < 0.5) for _ in range(4)]} for i, r in enumerate(base)]  # fmt: skip
        runs[f"{model}samples"] = _run(tmp_path, f"ms={model}-ri=0", model, samples)
    runs["evalA"] = _evaluator_dir(tmp_path, "e-lr=0.01", "E1")
    runs["evalB"] = _evaluator_dir(tmp_path, "e-lr=0.001", "E2")

    def scores(_, questions, first, second, batch_size=32):
        return np.array(
            [zlib.crc32(f"{q}|{a}|{b}".encode()) % 1000 / 1000 for q, a, b in zip(questions, first, second)]
        )

    monkeypatch.setattr(evaluator, "load_evaluator", lambda path, device=None: object())
    monkeypatch.setattr(evaluator, "debiased_scores", scores)
    return runs


def _files(path: str | Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def _ilr(w: dict, model: str, evaluator_path: str, round_id: int = 0, **kwargs) -> str:
    return ilr.main("toy_arith", w["weak"], w[f"{model}1r{round_id}"], w[f"{model}2r{round_id}"], round_id=round_id,
                    max_replace=0.5, evaluator_path=evaluator_path, **kwargs)  # fmt: skip


def test_ilr_labels_of_another_strong_model_or_evaluator_are_refused_not_reused(world):
    """The case that went wrong: the same weak run, then another strong model's half runs, or another
    (or a missing) evaluator, with the first label set present. It used to be "done already"."""
    out = _ilr(world, "A", world["evalA"])
    made = _files(out)
    record = json.loads((Path(out) / "provenance.json").read_text())
    assert record["inputs"]["model1_path"] == {"run": "ms=A-hd=1-ri=0", "model_weights": "A"}
    assert record["inputs"]["labels"] == {"run": "weak-ms=w-ri=0", "model_weights": "W"}
    assert record["inputs"]["feedback"]["name"] == "d=toy_arith-ms=tiny-s=0/e-lr=0.01"
    assert record["method"] == "ilr0.5" and record["settings"]["max_replace"] == 0.5 and record["round_id"] == 0

    assert _ilr(world, "A", world["evalA"]) == out and _files(out) == made  # the same inputs: reused as it is
    for model, evaluator_path in (("B", world["evalA"]), ("A", world["evalB"]), ("A", world["evalA"] + "-gone")):
        with pytest.raises(ConfigError, match=rf"^{out} was made with inputs\..* but this step now has inputs\."):
            _ilr(world, model, evaluator_path)
        assert _files(out) == made
    with pytest.raises(ConfigError) as error:
        _ilr(world, "B", world["evalA"])
    assert str(error.value).startswith(f'{out} was made with inputs.model1_path.model_weights="A", but this step now '
                                       'has inputs.model1_path.model_weights="B" (and 3 more')  # fmt: skip
    with pytest.raises(ConfigError) as error:
        _ilr(world, "A", world["evalB"])
    assert "inputs.feedback.name=" in str(error.value) and "e-lr=0.001" in str(error.value)

    _ilr(world, "B", world["evalA"], force=True)  # --force redoes it, and records the new inputs
    assert json.loads((Path(out) / "provenance.json").read_text())["inputs"]["model1_path"]["model_weights"] == "B"


def test_a_later_round_cites_the_label_set_it_started_from(world):
    """Round 1 starts from round 0's label set: remade from other feedback, round 1's old output no
    longer follows from it."""
    r0 = _ilr(world, "A", world["evalA"])
    r1 = _ilr(world, "A", world["evalA"], round_id=1)
    cited = json.loads((Path(r1) / "provenance.json").read_text())["inputs"]["labels"]
    assert cited == {"name": Path(r0).name, "record": digest(json.loads((Path(r0) / "provenance.json").read_text()))}
    assert _ilr(world, "A", world["evalA"], round_id=1) == r1
    _ilr(world, "A", world["evalB"], force=True)  # round 0 remade with the other evaluator
    made = _files(r1)
    with pytest.raises(ConfigError, match=rf"^{r1} was made with inputs.labels.record="):
        _ilr(world, "A", world["evalA"], round_id=1)
    assert _files(r1) == made


def test_dpo_pairs_of_another_round_model_or_evaluator_are_refused(world):
    out = dpo.main("toy_arith", world["weak"], world["Asamples"], evaluator_path=world["evalA"], subsample=0.5)
    made = _files(out)
    assert dpo.main("toy_arith", world["weak"], world["Asamples"], evaluator_path=world["evalA"], subsample=0.5) == out
    with pytest.raises(ConfigError, match=r'strong_model_path.model_weights="A", but this step now has .*="B"'):
        dpo.main("toy_arith", world["weak"], world["Bsamples"], evaluator_path=world["evalA"], subsample=0.5)
    with pytest.raises(ConfigError, match=r"inputs.feedback.name="):
        dpo.main("toy_arith", world["weak"], world["Asamples"], evaluator_path=world["evalB"], subsample=0.5)
    with pytest.raises(ConfigError, match=r"^.* was made with seed=0, but this step now has seed=3; pass --force=True"):
        dpo.main("toy_arith", world["weak"], world["Asamples"], evaluator_path=world["evalA"], subsample=0.5, seed=3)
    assert _files(out) == made


def test_a_pipeline_asks_the_step_before_it_skips_an_existing_output(tmp_path):
    """scripts/lib.sh's `refine` used to skip any step whose output existed ("done already"): now the
    step itself is asked, and its refusal stops the pipeline."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/asked\necho "error: made with other inputs" >&2\nexit 2\n')
    fake.chmod(0o755)
    (tmp_path / "out").mkdir()
    script = f'. "{REPO}/scripts/lib.sh"; TOTAL_STEPS=1; refine "{tmp_path}/out" experiments.ilr --round_id=0'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake), "DRY_RUN": "0"})  # fmt: skip
    assert proc.returncode == 2 and "done already" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: made with other inputs"
    assert (tmp_path / "asked").read_text().split() == ["-m", "iterative_label_refinement.experiments.ilr",
                                                         "--round_id=0"]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# One model, one identity
# ---------------------------------------------------------------------------------------------


def test_one_folder_is_one_model_by_any_path(tmp_path, monkeypatch):
    folder = tmp_path / "models" / "my-llama"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (tmp_path / "link").symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    ids = {weights_id(str(folder)), weights_id("models/my-llama"), weights_id("./models/../models/my-llama"),
           weights_id("link"), weights_id(str(tmp_path / "link") + "/")}  # fmt: skip
    assert ids == {os.path.realpath(folder)}
    other = tmp_path / "models" / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert weights_id("models/other") != weights_id("models/my-llama")


def test_a_run_of_a_local_folder_is_found_again_by_any_path(tmp_path, monkeypatch, capsys):
    """A run made with a model folder by its absolute path is the same run when the folder is named
    by a relative path or through a symlink (it used to be refused as "made with other weights"),
    also when its record names the folder as it was given (before folders were named by real path)."""
    from iterative_label_refinement.core.models import resolve_model_path
    from iterative_label_refinement.core.saved_models import check_same_weights
    from iterative_label_refinement.experiments import main as main_module

    folder = Path(resolve_model_path("tiny-random"))  # a model folder like any other
    (tmp_path / "linked").symlink_to(folder.parent)
    monkeypatch.chdir(tmp_path)
    flags = dict(ds_name="toy_arith", n_docs=16, n_test_docs=4, batch_size=8, epochs=1, lora_rank=4,
                 minibatch_size_per_device=8, results_folder=str(tmp_path / "results"))  # fmt: skip
    first = main_module.main(model_size=str(folder), **flags)
    run_dir = Path(first["save_path"])
    assert json.loads((run_dir / "experiment_config.json").read_text())["model_weights"] == os.path.realpath(folder)
    relative = os.path.relpath(folder, tmp_path)
    for name in (relative, f"linked/{folder.name}", f"linked/{folder.name}/"):
        again = main_module.main(model_size=name, **flags)
        assert again == {"save_path": str(run_dir), "skipped": True}, name
    config = json.loads((run_dir / "experiment_config.json").read_text())
    write_json(run_dir / "experiment_config.json", dict(config, model_weights=relative))  # an older record
    check_same_weights(run_dir, weights_id(f"linked/{folder.name}"))
    with pytest.raises(ConfigError, match="was made with the weights"):
        check_same_weights(run_dir, weights_id("tiny-random"))
