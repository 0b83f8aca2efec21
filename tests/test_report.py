"""The results report on a hand-made results folder: tables, partial rounds, CSV and plot."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
from datasets import Dataset

from iterative_label_refinement.core.common import ConfigError, write_json
from iterative_label_refinement.experiments import report


def make_run(root, name, acc, **config):
    run = root / name
    base = dict(ds_name="toy_arith", model_size="tiny-llama-strong", half_data=0, round_id=0, method=None,
                weak_label_type=None, do_dpo=False, weak_model={"model_size": "tiny-llama-weak"})  # fmt: skip
    write_json(run / "experiment_config.json", {**base, **config})
    if acc is not None:
        write_json(run / "results_summary.json", {"accuracy": acc})
    return run


def label_set(path, accs):
    Dataset.from_list([{"question": str(i), "answer": "a", "gt_answer": "g", "acc": a} for i, a in enumerate(accs)]
                      ).save_to_disk(str(path))  # fmt: skip


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "res"
    weak = make_run(root, "weak", 0.4, model_size="tiny-llama-weak", weak_model=None)
    label_set(weak / "weak_labels", [1, 0, 0, 0])
    write_json(weak / "results_summary.json", {"accuracy": 0.4, "label_accuracy": 0.25})
    make_run(root, "sft0", 0.5, method="ilr0.15", weak_label_type="weak", weak_labels_path=str(weak / "weak_labels"))
    label_set(weak / "ilr0.15_0_weak_labels", [1, 1, 0, 0])
    make_run(root, "ilr1", 0.6, method="ilr0.15", weak_label_type="ilr0.15", round_id=1,
             weak_labels_path=str(weak / "ilr0.15_0_weak_labels"))  # fmt: skip
    make_run(root, "naive1", 0.45, method="naive0.15", weak_label_type="naive0.15", round_id=1)
    make_run(root, "half", 0.99, method="ilr0.15", weak_label_type="weak", half_data=1)  # ignored
    make_run(root, "dpo0", 0.52, method="dpo0.10.15", weak_label_type="weak", do_dpo=True,
             weak_labels_path=str(weak / "weak_labels"))  # fmt: skip
    make_run(root, "dpo2", None, method="dpo0.10.15", weak_label_type="dpo0.10.15", do_dpo=True, round_id=2)
    return root


def test_report_tables_csv_and_plot(results, capsys):
    csv_path = report.main(results_folder=str(results))
    out = capsys.readouterr().out
    assert "weak model: test accuracy 40.0, weak-label accuracy 25.0" in out
    test_part, label_part = out.split("Test accuracy")[1].split("Accuracy (%) of the training labels")

    def rows_of(part):
        return {line.split()[0]: line.split() for line in part.splitlines() if line[:4] in ("ilr0", "naiv", "dpo0")}

    lines, labels = rows_of(test_part), rows_of(label_part)
    assert lines["ilr0.15"][1:4] == ["50.0", "60.0", "-"]  # round 0 is the shared SFT run; round 2 missing
    assert lines["naive0.15"][1:4] == ["50.0", "45.0", "-"]
    assert lines["dpo0.10.15"][1:4] == ["52.0", "-", "-"]  # round 1 missing, round 2 unscored
    assert labels["ilr0.15"][1:3] == ["25.0", "50.0"]  # weak labels, then the refined labels round 1 used
    rows = list(csv.DictReader(open(csv_path)))
    assert {(r["method"], r["round"]) for r in rows} >= {("ilr0.15", "1"), ("naive0.15", "0"), ("dpo0.10.15", "2")}
    assert all(r["run_dir"] != str(results / "half") for r in rows)
    assert (results / "accuracy_toy_arith_tiny-llama-strong.png").stat().st_size > 1000


def test_report_bad_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        report.main(results_folder=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no runs"):
        report.main(results_folder=str(tmp_path / "empty"))


def test_replacement_counts_sorts_changed_labels_by_what_they_did():
    spec = importlib.util.spec_from_file_location("rq", Path(__file__).parents[1] / "benchmarks/replacement_quality.py")
    rq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rq)
    before = {"a": ("1", 0.0), "b": ("2", 1.0), "c": ("3", 0.0), "d": ("4", 1.0)}
    after = {"a": ("5", 1.0), "b": ("6", 0.0), "c": ("7", 0.0), "d": ("4", 1.0)}
    assert rq.replacement_counts(before, after) == {"changed": 3, "wrong_to_right": 1, "right_to_wrong": 1, "same": 1}
