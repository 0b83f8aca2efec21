"""The results report on hand-made results folders: tables, seeds, partial rounds, CSV, plot."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
from datasets import Dataset

from iterative_label_refinement.core.eval import mean_and_stderr
from iterative_label_refinement.core.files import write_json
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import report


def make_run(root, name, acc, **config):
    run = root / name
    base = dict(ds_name="toy_arith", model_size="tiny-llama-strong", half_data=0, round_id=0, method=None,
                weak_label_type=None, do_dpo=False, weak_model={"model_size": "tiny-llama-weak"})  # fmt: skip
    write_json(run / "experiment_config.json", {**base, **config})
    if acc is not None:
        write_json(run / "results_summary.json", {"accuracy": acc})
    return run


def label_set(path, accs, answers=None):
    answers = answers or ["a"] * len(accs)
    rows = [
        {"question": str(i), "answer": x, "gt_answer": "g", "acc": a} for i, (x, a) in enumerate(zip(answers, accs))
    ]
    Dataset.from_list(rows).save_to_disk(str(path))


def rows_of(part, prefixes=("ilr0", "naiv", "dpo0")):
    return {line.split()[0]: line.split() for line in part.splitlines() if line[:4] in prefixes}


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "res"
    weak = make_run(root, "weak", 0.4, model_size="tiny-llama-weak", weak_model=None)
    label_set(weak / "weak_labels", [1, 0, 0, 0])
    write_json(weak / "results_summary.json", {"accuracy": 0.4, "label_accuracy": 0.25})
    make_run(root, "sft0", 0.5, method="ilr0.15", weak_label_type="weak", weak_labels_path=str(weak / "weak_labels"))
    label_set(weak / "ilr0.15_0_weak_labels", [1, 1, 0, 0], answers=["a", "b", "a", "a"])
    make_run(root, "ilr1", 0.6, method="ilr0.15", weak_label_type="ilr0.15", round_id=1,
             weak_labels_path=str(weak / "ilr0.15_0_weak_labels"))  # fmt: skip
    make_run(root, "naive1", 0.45, method="naive0.15", weak_label_type="naive0.15", round_id=1)
    make_run(root, "half", 0.99, method="ilr0.15", weak_label_type="weak", half_data=1)  # ignored
    make_run(root, "dpo0", 0.52, method="dpo0.10.15", weak_label_type="weak", do_dpo=True,
             weak_labels_path=str(weak / "weak_labels"))  # fmt: skip
    dpo2 = make_run(root, "dpo2", None, method="dpo0.10.15", weak_label_type="dpo0.10.15", do_dpo=True, round_id=2)
    write_json(dpo2 / "results_summary.json", {"n_test": 4})  # evaluated, but not scored (compute_test_acc=False)
    return root


def test_report_tables_csv_and_plot(results, capsys):
    csv_path = report.main(results_folder=str(results))
    out = capsys.readouterr().out
    assert "weak model: test accuracy 40.0, weak-label accuracy 25.0" in out
    test_part, rest = out.split("Test accuracy")[1].split("Accuracy (%) of the training labels")
    label_part, replaced_part = rest.split("Labels the refinement step")
    lines, labels = rows_of(test_part), rows_of(label_part)
    assert lines["ilr0.15"][1:4] == ["50.0", "60.0", "-"]  # round 0 is the shared SFT run; round 2 missing
    assert lines["naive0.15"][1:4] == ["50.0", "45.0", "-"]
    assert lines["dpo0.10.15"][1:4] == ["52.0", "-", "-"]  # round 1 missing, round 2 unscored
    assert labels["ilr0.15"][1:3] == ["25.0", "50.0"]  # weak labels, then the refined labels round 1 used
    # ILR round 0 changed one label ("1": a -> b), from wrong to right: 1/0, precision 100%.
    assert rows_of(replaced_part)["ilr0.15"][1:5] == ["-", "1/0", "100%", "-"]
    rows = list(csv.DictReader(open(csv_path)))
    assert {(r["method"], r["round"]) for r in rows} >= {("ilr0.15", "1"), ("naive0.15", "0"), ("dpo0.10.15", "2")}
    assert all(str(results / "half") not in r["run_dirs"] for r in rows)
    assert [r["method"] for r in rows].count("weak model") == 1
    (ilr1,) = [r for r in rows if (r["method"], r["round"]) == ("ilr0.15", "1")]
    assert (ilr1["replaced"], ilr1["wrong_to_right"], ilr1["right_to_wrong"]) == ("1", "1", "0")
    assert (results / "accuracy_toy_arith_tiny-llama-strong.png").stat().st_size > 1000


def test_report_bad_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        report.main(results_folder=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no runs"):
        report.main(results_folder=str(tmp_path / "empty"))


# Three seeds: test accuracies per (method, round, seed); seed 2 never finished ILR round 2.
TEST_ACC = {
    ("sft", 0): [0.50, 0.40, 0.45],
    ("ilr", 1): [0.60, 0.52, 0.47],
    ("ilr", 2): [0.70, 0.58],
}
WEAK_ACC = [0.30, 0.36, 0.33]


@pytest.fixture
def seeded(tmp_path):
    root = tmp_path / "res"
    for seed in range(3):
        weak = make_run(root, f"weak-s{seed}", WEAK_ACC[seed], model_size="tiny-llama-weak", weak_model=None,
                        seed=seed)  # fmt: skip
        label_set(weak / "weak_labels", [0, 0, 0, 0])
        write_json(weak / "results_summary.json", {"accuracy": WEAK_ACC[seed], "label_accuracy": 0.0})
        # Round 0's ILR step fixes `seed` + 1 labels and breaks none; round 1's breaks one of them.
        fixed = [1] * (seed + 1) + [0] * (3 - seed)
        label_set(weak / "ilr0.15_0_weak_labels", fixed, answers=["b" if a else "a" for a in fixed])
        label_set(
            weak / "ilr0.15_1_weak_labels", [0] + fixed[1:], answers=["c"] + ["b" if a else "a" for a in fixed[1:]]
        )
        common = dict(method="ilr0.15", seed=seed, weak_model={"model_size": "tiny-llama-weak", "seed": seed})
        make_run(root, f"sft-s{seed}", TEST_ACC["sft", 0][seed], weak_label_type="weak",
                 weak_labels_path=str(weak / "weak_labels"), **common)  # fmt: skip
        for r in (1, 2):
            if seed < len(TEST_ACC["ilr", r]):
                make_run(root, f"ilr{r}-s{seed}", TEST_ACC["ilr", r][seed], weak_label_type="ilr0.15", round_id=r,
                         weak_labels_path=str(weak / f"ilr0.15_{r - 1}_weak_labels"), **common)  # fmt: skip
    return root


def by_hand(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))


def test_mean_and_stderr_against_the_formula():
    assert mean_and_stderr([0.6, 0.52, 0.47]) == pytest.approx(by_hand([0.6, 0.52, 0.47]))
    assert mean_and_stderr([0.2, None, 0.4]) == pytest.approx((0.3, statistics.stdev([0.2, 0.4]) / math.sqrt(2)))
    assert mean_and_stderr([0.7]) == (0.7, None)
    assert mean_and_stderr([None]) == (None, None)


def test_seeds_aggregate_into_mean_and_standard_error(seeded, capsys):
    csv_path = report.main(results_folder=str(seeded))
    out = capsys.readouterr().out
    assert "3 seeds" in out
    test_part = out.split("Test accuracy")[1].split("Accuracy (%)")[0]
    ilr = rows_of(test_part)["ilr0.15"]
    for r, cell in zip((0, 1), ilr[1:3]):
        mean, se = by_hand(TEST_ACC["sft" if r == 0 else "ilr", r])
        assert cell == f"{100 * mean:.1f}±{100 * se:.1f}"
    mean, se = by_hand(TEST_ACC["ilr", 2])
    assert ilr[3] == f"{100 * mean:.1f}±{100 * se:.1f}[2/3]"  # a partial round says so
    mean, se = by_hand(WEAK_ACC)
    assert f"weak model: test accuracy {100 * mean:.1f}±{100 * se:.1f}, weak-label accuracy 0.0" in out

    rows = {(r["method"], r["round"]): r for r in csv.DictReader(open(csv_path))}
    r2 = rows["ilr0.15", "2"]
    assert (r2["seeds"], r2["n_seeds"]) == ("0;1", "2")
    assert (float(r2["test_accuracy"]), float(r2["test_accuracy_se"])) == pytest.approx(by_hand(TEST_ACC["ilr", 2]))
    # Replacements summed over seeds: round 1's labels gained 1+2+3 correct; round 2's lost one per seed
    # that reached it, while changing one more label each (precision 0 in both seeds).
    r1 = rows["ilr0.15", "1"]
    assert (r1["replaced"], r1["wrong_to_right"], r1["right_to_wrong"]) == ("6", "6", "0")
    assert (r2["replaced"], r2["wrong_to_right"], r2["right_to_wrong"]) == ("2", "0", "2")
    assert float(r1["replacement_precision"]) == 1.0 and r1["replacement_precision_se"] == "0.0"
    label_mean, label_se = by_hand([1 / 4, 2 / 4, 3 / 4])
    assert (float(r1["label_accuracy"]), float(r1["label_accuracy_se"])) == pytest.approx((label_mean, label_se))


def test_plot_draws_standard_errors(seeded, monkeypatch):
    import matplotlib.axes

    drawn = {}
    original = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kwargs):
        drawn.setdefault(kwargs["label"], (list(x), list(y), list(yerr)))  # the accuracy plot: drawn first
        return original(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    report.main(results_folder=str(seeded))
    x, y, yerr = drawn["ilr0.15"]
    assert x == [0, 1, 2]
    expected = [by_hand(TEST_ACC["sft", 0]), by_hand(TEST_ACC["ilr", 1]), by_hand(TEST_ACC["ilr", 2])]
    assert y == pytest.approx([100 * m for m, _ in expected])
    assert yerr == pytest.approx([100 * s for _, s in expected])


def test_seeds_are_one_experiment_when_they_loaded_the_same_weights_from_other_places(seeded, capsys):
    """Where the weights were loaded from (each machine's cache folder; a record from before
    `model_weights`) does not split seeds; other weights do: a row of their own, named by them."""
    for seed in range(3):
        config_path = seeded / f"ilr1-s{seed}" / "experiment_config.json"
        loaded = [{"model_weights": "tiny-llama-strong-2ea67516", "model_loaded_from": "/a/tiny/tiny-llama-strong-2ea67516"},
                  {"model_loaded_from": "/other/cache/tiny/tiny-llama-strong-2ea67516"},
                  {"model_weights": "tiny-llama-strong-2ea67516", "model_loaded_from": "/b/tiny/tiny-llama-strong-2ea67516"}]  # fmt: skip
        write_json(config_path, {**json.loads(config_path.read_text()), **loaded[seed]})
    report.main(results_folder=str(seeded))
    ilr = rows_of(capsys.readouterr().out.split("Test accuracy")[1].split("Accuracy (%)")[0])["ilr0.15"]
    mean, se = by_hand(TEST_ACC["ilr", 1])
    assert ilr[2] == f"{100 * mean:.1f}±{100 * se:.1f}"
    config_path = seeded / "ilr1-s1" / "experiment_config.json"
    write_json(
        config_path, {**json.loads(config_path.read_text()), "model_loaded_from": "/c/tiny/tiny-llama-strong-91e8e6ea"}
    )
    csv_path = report.main(results_folder=str(seeded))
    test_part = capsys.readouterr().out.split("Test accuracy")[1].split("Accuracy (%)")[0]
    rows = {line.split("  ")[0]: line.split() for line in test_part.splitlines() if line.startswith("ilr0.15")}
    same = rows["ilr0.15 [model_weights=tiny-llama-strong-2ea67516]"]
    mean, se = by_hand([TEST_ACC["ilr", 1][0], TEST_ACC["ilr", 1][2]])
    assert same[2:] == ["-", f"{100 * mean:.1f}±{100 * se:.1f}", "-"]  # seeds 0 and 2, of 2
    assert rows["ilr0.15 [model_weights=tiny-llama-strong-91e8e6ea]"][2:] == ["-", "52.0", "-"]
    settings = {(r["method"], r["settings"], r["round"]) for r in csv.DictReader(open(csv_path))}
    assert ("ilr0.15", "model_weights=tiny-llama-strong-91e8e6ea", "1") in settings


# Two learning rates of SFT+ILR in one folder, on the same weak runs: lr 5e-6 with three seeds, lr 1e-4
# with two (test accuracies per (setting, method, round), one per seed).
SETTINGS_ACC = {
    (5e-6, "sft", 0): [0.50, 0.40, 0.45],
    (5e-6, "ilr", 1): [0.60, 0.52, 0.47],
    (1e-4, "sft", 0): [0.30, 0.36],
    (1e-4, "ilr", 1): [0.41, 0.49],
}


@pytest.fixture
def two_settings(tmp_path):
    root = tmp_path / "res"
    for seed in range(3):
        weak = make_run(root, f"weak-s{seed}", 0.3, model_size="tiny-llama-weak", weak_model=None, seed=seed)
        label_set(weak / "weak_labels", [0, 0, 1, 0])
        label_set(weak / "ilr0.15_0_weak_labels", [1, 0, 1, 0], answers=["b", "a", "a", "a"])
    for (lr, kind, r), accs in SETTINGS_ACC.items():
        for seed, acc in enumerate(accs):
            labels = root / f"weak-s{seed}" / ("weak_labels" if r == 0 else "ilr0.15_0_weak_labels")
            make_run(root, f"{kind}{r}-lr{lr}-s{seed}", acc, method="ilr0.15", round_id=r, seed=seed, lr=lr,
                     weak_label_type="weak" if r == 0 else "ilr0.15", weak_labels_path=str(labels),
                     weak_model={"model_size": "tiny-llama-weak", "seed": seed, "lr": 3e-3})  # fmt: skip
    return root


def test_two_settings_of_one_method_are_rows_side_by_side_named_by_what_differs(two_settings, capsys, monkeypatch):
    import matplotlib.axes

    drawn = {}
    original = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kwargs):
        drawn.setdefault(kwargs["label"], (list(x), list(y), list(yerr)))  # the accuracy plot: drawn first
        return original(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    csv_path = report.main(results_folder=str(two_settings))
    test_part = capsys.readouterr().out.split("Test accuracy")[1].split("Accuracy (%)")[0]
    rows = {line.split("  ")[0]: line.split() for line in test_part.splitlines() if line[:3] in ("ilr", "SFT")}
    assert set(rows) == {"ilr0.15 [lr=0.0001]", "ilr0.15 [lr=5e-06]", "SFT [lr=0.0001]", "SFT [lr=5e-06]"}
    csv_rows = {(r["method"], r["settings"], r["round"]): r for r in csv.DictReader(open(csv_path))}
    for lr, name in ((5e-6, "lr=5e-06"), (1e-4, "lr=0.0001")):
        expected = [by_hand(SETTINGS_ACC[lr, "sft", 0]), by_hand(SETTINGS_ACC[lr, "ilr", 1])]
        cells = [f"{100 * m:.1f}±{100 * e:.1f}" for m, e in expected]
        assert rows[f"ilr0.15 [{name}]"][2:] == cells  # every seed of that setting, none of the other's
        assert rows[f"SFT [{name}]"][2:] == cells[:1] + ["-"]
        for r in (0, 1):
            row = csv_rows["ilr0.15", name, str(r)]
            assert (float(row["test_accuracy"]), float(row["test_accuracy_se"])) == pytest.approx(expected[r])
            assert row["n_seeds"] == str(len(SETTINGS_ACC[lr, "sft", 0]))
        x, y, yerr = drawn[f"ilr0.15 [{name}]"]
        assert x == [0, 1] and y == pytest.approx([100 * m for m, _ in expected])
        assert yerr == pytest.approx([100 * e for _, e in expected])


def test_a_dead_run_dir_is_skipped_and_listed_not_blocking(seeded, capsys):
    """A failed run leaves its dir with only experiment_config.json (or nothing): it has no result,
    so it neither blocks the report nor changes a number of it."""
    before = Path(report.main(results_folder=str(seeded))).read_text()
    capsys.readouterr()
    # An SFT run of seed 0 at another learning rate that died before its results, and an empty run dir.
    dead = make_run(seeded, "sft0-lr0.01-s0", None, method="ilr0.15", seed=0, lr=1e-2, weak_label_type="weak",
                    weak_model={"model_size": "tiny-llama-weak", "seed": 0})  # fmt: skip
    empty = seeded / "ilr1-died-s1"
    empty.mkdir()
    assert Path(report.main(results_folder=str(seeded))).read_text() == before
    out = capsys.readouterr().out
    assert "skipped 2 run dir(s) without results" in out
    assert f"  {dead} (no results_summary.json)" in out.splitlines()
    assert f"  {empty} (empty)" in out.splitlines()
    assert "lr=0.01" not in out
    provenance = json.loads((seeded / "report_provenance.json").read_text())
    assert {s["path"] for s in provenance["skipped"]} == {str(dead), str(empty)}


def test_two_runs_of_one_seed_are_refused(seeded):
    make_run(seeded, "ilr1-again", 0.9, method="ilr0.15", weak_label_type="ilr0.15", round_id=1, seed=0,
             weak_model={"model_size": "tiny-llama-weak", "seed": 0})  # fmt: skip
    with pytest.raises(ConfigError, match="two runs of ilr0.15 round 1 seed 0"):
        report.main(results_folder=str(seeded))


def test_replacement_counts_sorts_changed_labels_by_what_they_did():
    before = [("a", "1", 0), ("b", "2", 1), ("c", "3", 0), ("d", "4", 1)]
    after = [("a", "5", 1), ("b", "6", 0), ("c", "7", 0), ("d", "4", 1)]
    r = report.replacement_counts(before, after)
    assert (r.changed, r.wrong_to_right, r.right_to_wrong, r.precision) == (3, 1, 1, 0.5)
    # Rows in another order, a question asked twice (one of its copies fixed), an unchanged unknown label.
    before = [("q", "1", 0), ("q", "1", 0), ("u", "9", None)]
    after = [("u", "9", None), ("q", "2", 1), ("q", "1", 0)]
    r = report.replacement_counts(before, after)
    assert (r.changed, r.wrong_to_right, r.right_to_wrong) == (1, 1, 0)
    assert report.replacement_counts([("u", "1", None)], [("u", "2", 1)]) is None  # unknown before: no guess
    assert report.Replacements(2, 0, 0).precision is None  # nothing moved: no precision, not 0


def test_label_sets_are_found_beside_the_run_when_paths_were_relative_to_another_folder(seeded, monkeypatch, capsys):
    """Configs keep --weak_labels_path as the scripts gave it (relative to where they ran): a report
    run from elsewhere still finds the labels in the weak run dir beside the run."""
    for config_path in seeded.rglob("experiment_config.json"):
        config = json.loads(config_path.read_text())
        if config.get("weak_labels_path"):
            labels = Path(config["weak_labels_path"])
            config["weak_labels_path"] = f"elsewhere/results/{labels.parent.name}/{labels.name}"
            config_path.write_text(json.dumps(config))
    csv_path = report.main(results_folder=str(seeded))
    rows = {(r["method"], r["round"]): r for r in csv.DictReader(open(csv_path))}
    assert float(rows["ilr0.15", "1"]["label_accuracy"]) == pytest.approx(by_hand([1 / 4, 2 / 4, 3 / 4])[0])
    assert rows["ilr0.15", "1"]["wrong_to_right"] == "6"
    # A label set that is nowhere says so, and its cells stay empty instead of guessed.
    shutil.rmtree(next(seeded.glob("weak-s0")) / "ilr0.15_0_weak_labels")
    csv_path = report.main(results_folder=str(seeded))
    rows = {(r["method"], r["round"]): r for r in csv.DictReader(open(csv_path))}
    assert rows["ilr0.15", "1"]["seeds"] == "0;1;2" and rows["ilr0.15", "1"]["replaced"] == "5"


def test_the_pipelines_manifests_are_printed_compactly_and_kept(seeded, capsys):
    """One line per commit and library versions, with the pipeline runs made with them; the whole
    manifests go to report_provenance.json."""
    names = ("torch", "transformers", "peft", "datasets", "accelerate")
    versions = dict(zip(names, ("2.1.0", "4.40.0", "0.10.0", "2.19.0", "0.30.0")))
    made = [("evaluator", "0123456789abcdef", True, "2026-01-01T10:00:00"),
            ("sft_ilr", "0123456789abcdef", True, "2026-01-01T11:00:00"),
            ("sft_ilr", "fedcba9876543210", False, "2026-01-02T09:00:00")]  # fmt: skip
    for pipeline, commit, dirty, recorded in made:
        write_json(seeded / "default" / "manifests" / f"{pipeline}-{recorded}.json",
                   {"pipeline": pipeline, "recorded": recorded, "git": {"commit": commit, "dirty": dirty},
                    "versions": versions, "settings": {"SEED": "0", "MAX_REPLACE": "0.15"}})  # fmt: skip
    report.main(results_folder=str(seeded))
    lines = capsys.readouterr().out.splitlines()
    libs = "torch 2.1.0, transformers 4.40.0, peft 0.10.0, datasets 2.19.0, accelerate 0.30.0"
    assert f"  commit 0123456789ab (dirty), {libs}: evaluator x1, sft_ilr x1" in lines
    assert f"  commit fedcba987654, {libs}: sft_ilr x1" in lines
    kept = json.loads((seeded / "report_provenance.json").read_text())["manifests"]
    assert [(m["pipeline"], m["git"]["commit"], m["settings"]["MAX_REPLACE"]) for m in kept] == [
        (p, c, "0.15") for p, c, _, _ in made
    ]


def test_seeds_stay_one_row_across_pipelines_and_older_records(seeded, capsys):
    """The shared round-0 SFT run records the method of whichever pipeline trained it first, and a
    record from before the training keys (dtype, LoRA, ...) lacks them: neither is another setting."""
    edits = {"sft-s1": {"method": "naive0.15"},
             "ilr1-s0": {"dtype": "float32", "mixed_precision": "no", "lora_alpha": 128,
                         "lora_target_modules": "all-linear", "gradient_checkpointing": False}}  # fmt: skip
    for name, entries in edits.items():
        config_path = seeded / name / "experiment_config.json"
        write_json(config_path, {**json.loads(config_path.read_text()), **entries})
    report.main(results_folder=str(seeded))
    ilr = rows_of(capsys.readouterr().out.split("Test accuracy")[1].split("Accuracy (%)")[0])["ilr0.15"]
    for r, cell in zip((0, 1), ilr[1:3]):
        mean, se = by_hand(TEST_ACC["sft" if r == 0 else "ilr", r])
        assert cell == f"{100 * mean:.1f}±{100 * se:.1f}"


# ---------------------------------------------------------------------------------------------
# The report page
# ---------------------------------------------------------------------------------------------

# DPO rounds 1 and 2 per seed: (reward margin, implicit KL) of each logged step, the last one the round's.
DPO_LOGS = {
    1: [[(0.1, 0.01), (0.4, 0.05)], [(0.2, 0.02), (0.3, 0.04)], [(0.0, 0.0), (0.8, 0.09)]],
    2: [[(0.5, 0.1), (1.5, 0.3)], [(0.6, 0.2), (0.7, 0.25)], [(0.9, 0.4), (2.9, 0.7)]],
}
DPO_ACC = {1: [0.40, 0.45, 0.35], 2: [0.30, 0.50, 0.20]}


def write_log(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def row_cells(page, *first):
    """The cells of the page's table row that starts with `first` (the numbers under a plot; DPO's test
    accuracy is under two plots, the same numbers)."""
    start = "<tr>" + "".join(f"<td>{x}</td>" for x in first)
    (row,) = {r.split("</tr>")[0] for r in page.split("<tr>")[1:] if ("<tr>" + r).startswith(start)}
    return [c.split("</td>")[0] for c in row.split("<td>")[1 + len(first) :]]


def test_report_page_shows_every_plot_with_the_numbers_it_draws(seeded):
    for seed in range(3):
        common = dict(
            method="dpo0.10.15", seed=seed, do_dpo=True, weak_model={"model_size": "tiny-llama-weak", "seed": seed}
        )
        make_run(seeded, f"dpo0-s{seed}", TEST_ACC["sft", 0][seed], weak_label_type="weak", **common)
        for r in (1, 2):
            run = make_run(
                seeded, f"dpo{r}-s{seed}", DPO_ACC[r][seed], weak_label_type="dpo0.10.15", round_id=r, **common
            )
            write_log(
                run,
                [
                    {"loss": 0.7 - 0.1 * i, "rewards/margins": m, "kl": k, "step": i + 1}
                    for i, (m, k) in enumerate(DPO_LOGS[r][seed])
                ]
                + [{"train_loss": 0.6, "step": 2}],
            )  # the Trainer's summary record: no curve point
        write_log(seeded / f"ilr1-s{seed}", [{"loss": 2.0 - 0.5 * i - 0.1 * seed, "step": i + 1} for i in range(3)])
    evaluator = seeded / "evaluators" / "data-s0" / "ms=tiny"
    write_json(evaluator / "results_summary.json", {"pair_accuracy": 0.625, "pair_accuracy_by_kind": {"gt": 0.75}})
    write_log(evaluator, [{"loss": 0.69, "epoch": 0.5, "step": 1}, {"eval_loss": 0.61, "epoch": 1.0, "step": 2}])
    write_json(seeded / "default" / "manifests" / "dpo-1.json",
               {"pipeline": "sft_dpo", "recorded": "2026-12-01T10:00:00", "git": {"commit": "abc123def4567890"},
                "versions": {"torch": "2.13.0"}, "settings": {"BETA": "0.5", "ROUNDS": "2"}})  # fmt: skip
    report.main(results_folder=str(seeded))
    page = (seeded / "report.html").read_text()

    def pct(values):
        mean, se = by_hand(values)
        return f"{100 * mean:.1f} ± {100 * se:.1f}"

    # test accuracy: mean ± standard error over seeds, per round, of each method
    assert row_cells(page, "test accuracy (%)", "ilr0.15") == [pct(TEST_ACC["sft", 0]), pct(TEST_ACC["ilr", 1]),
                                                              pct(TEST_ACC["ilr", 2])]  # fmt: skip
    assert row_cells(page, "test accuracy (%)", "dpo0.10.15") == [
        pct(TEST_ACC["sft", 0]),
        pct(DPO_ACC[1]),
        pct(DPO_ACC[2]),
    ]
    # training labels (a quarter, half, three quarters correct in round 1) and replacement precision
    assert row_cells(page, "training labels correct (%)", "ilr0.15")[1] == pct([1 / 4, 2 / 4, 3 / 4])
    assert row_cells(page, "precision of replacements (%)", "ilr0.15")[1:] == ["100.0 ± 0.0", "0.0 ± 0.0"]
    # DPO: the last logged margin and KL of each round, over seeds; round 0 (SFT) logs none
    for label, index in (("reward margin", 0), ("implicit KL", 1)):
        cells = row_cells(page, label, "dpo0.10.15")
        assert cells[0] == "-"
        for r in (1, 2):
            mean, se = by_hand([log[-1][index] for log in DPO_LOGS[r]])
            assert cells[r] == f"{mean:.3f} ± {se:.3f}", (label, r)
    # loss curves: every round's runs, first and last logged loss (mean over seeds)
    assert row_cells(page, "ilr0.15", "1") == ["3", "1.900", "0.900"]
    assert row_cells(page, "dpo0.10.15 (DPO loss, rounds 1+)", "2") == ["3", "0.700", "0.600"]
    # the evaluator's curve and held-out accuracy, and the pipelines' settings
    assert row_cells(page, "held-out pair accuracy") == ["62.5%"] and row_cells(page, "pair accuracy (gt)") == ["75.0%"]
    assert row_cells(page, "held-out loss, epoch 1") == ["0.6100"]
    assert row_cells(page, "BETA") == ["0.5"] and row_cells(page, "commit") == ["abc123def456"]
    # self-contained: every plot embedded, each also a PNG beside the page
    assert page.count('src="data:image/png;base64,') == 5
    for kind in ("accuracy", "labels", "dpo", "losses"):
        assert (seeded / f"{kind}_toy_arith_tiny-llama-strong.png").stat().st_size > 1000


def test_a_series_keeps_its_color_in_every_panel_even_where_another_is_missing(monkeypatch):
    """Label accuracy has every method, replacement precision not DPO: a color cycle restarted per
    panel would draw ILR in DPO's color there (seen on the demo's page)."""
    import matplotlib.axes

    from iterative_label_refinement.experiments import report_page

    drawn = []
    original = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kwargs):
        drawn.append((kwargs["label"], kwargs.get("color")))
        return original(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    points = [(0, 0.2, 0.01), (1, 0.3, None)]
    accuracy = {"dpo": points, "ilr": points, "naive": points}
    precision = {"dpo": [], "ilr": points[1:], "naive": points[1:]}
    report_page.round_panels("t", [("labels", 100, accuracy), ("precision", 100, precision)])
    assert [name for name, _ in drawn] == ["dpo", "ilr", "naive", "ilr", "naive"]
    colors = {}
    for name, color in drawn:
        assert color is not None and colors.setdefault(name, color) == color, (name, color, colors)
    assert len(set(colors.values())) == 3
