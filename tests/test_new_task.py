"""A new task in three files: its data (`word_sums.jsonl`), its registry entry (`word_sums_task.py`) and
this test. One pipeline round runs on it with no other file knowing its name: the weak supervisor's
ground-truth run, then the strong model's run on the weak labels; every answer is scored by the
task's own metric, checked here against a computation of that rule written out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk
from word_sums_task import DATA, TASK

from iterative_label_refinement.core import datasets as datasets_module
from iterative_label_refinement.core.datasets import register_dataset
from iterative_label_refinement.experiments import main as main_module

TINY = dict(ds_name="word_sums", model_size="tiny-random", n_docs=32, n_test_docs=8, batch_size=8, epochs=1,
            lora_rank=4, minibatch_size_per_device=4, num_beams=1)  # fmt: skip


@pytest.fixture
def word_sums(monkeypatch):
    monkeypatch.setattr(datasets_module, "_REGISTRY", dict(datasets_module._REGISTRY))
    register_dataset(TASK)


def mentioned(prediction: str, reference: str) -> float:
    """The rule, by hand: the number after the reference's last `####` is one of the prediction's
    maximal runs of digits (`12` is not mentioned by `123`, nor `2` by `12`)."""
    target = reference[reference.rindex("####") + 4 :].strip()
    runs, current = [], ""
    for ch in prediction + " ":
        if ch in "0123456789":
            current += ch
        elif current:
            runs.append(current)
            current = ""
    return 1.0 if target in runs else 0.0


def file_rows(split: str) -> list[dict[str, str]]:
    return [r for r in map(json.loads, DATA.read_text().splitlines()) if r["split"] == split]


def scored(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_task_added_in_three_files_runs_a_round(word_sums, tmp_path):
    # The weak labels are sampled (temperature 1): an untrained model's greedy answers repeat one string.
    weak_dir = Path(main_module.main(results_folder=str(tmp_path), label_temp=1.0, **TINY)["save_path"])
    assert "-dn=word_sums-" in weak_dir.name and "-ml=48-" in weak_dir.name  # its entry's max_len names the run

    tests = scored(weak_dir / "test_results.jsonl")
    assert sorted(r["question"] for r in tests) == sorted(r["question"] for r in file_rows("test")[:8])
    expected = [mentioned(r["answer"], r["gt_answer"]) for r in tests]
    assert [r["acc"] for r in tests] == expected
    summary = json.loads((weak_dir / "results_summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(sum(expected) / len(expected))

    labels = load_from_disk(str(weak_dir / "weak_labels"))
    train_answers = {r["question"]: r["answer"] for r in file_rows("train")}
    assert all(train_answers[q] == gt for q, gt in zip(labels["question"], labels["gt_answer"]))
    label_expected = [mentioned(a, gt) for a, gt in zip(labels["answer"], labels["gt_answer"])]
    assert list(labels["acc"]) == label_expected and len(labels) == 16

    strong_dir = Path(main_module.main(results_folder=str(tmp_path), weak_labels_path=str(weak_dir),
                                       **TINY)["save_path"])  # fmt: skip
    config = json.loads((strong_dir / "experiment_config.json").read_text())
    assert config["weak_labels_path"] == str(weak_dir / "weak_labels") and config["ds_name"] == "word_sums"
    strong_tests = scored(strong_dir / "test_results.jsonl")
    strong_expected = [mentioned(r["answer"], r["gt_answer"]) for r in strong_tests]
    assert [r["acc"] for r in strong_tests] == strong_expected
    # The metric told right from wrong on these answers (the sampled labels): a pipeline scoring with
    # another task's metric (GSM8K's `####` match: 0 for every untrained answer) would not give these.
    every = expected + label_expected + strong_expected
    assert 0 < sum(every) < len(every)
