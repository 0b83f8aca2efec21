"""Where label sets live, how they are read, which round a run dir is, and refusals of bad label sets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, load_from_disk

from iterative_label_refinement.core.label_sets import (
    LABEL_COLUMNS,
    REFINEMENT_COLUMNS,
    _data_files,
    check_known_acc,
    check_round,
    check_trains,
    current_labels_path,
    first,
    is_label_set,
    label_accuracy,
    load_current_labels,
    load_label_set,
    run_round,
    save_label_set,
    trained_by,
)
from iterative_label_refinement.core.layout import refined_path
from iterative_label_refinement.core.settings import ConfigError


def rows(n: int, acc=1.0, **extra):
    return [
        {"question": f"q{i}", "answer": f"#### {i}", "gt_answer": f"#### {i}", "acc": acc, **extra} for i in range(n)
    ]


def test_paths_of_each_round(tmp_path):
    assert refined_path(tmp_path, "ilr0.15", 2) == tmp_path / "ilr0.15_2_weak_labels"
    assert current_labels_path(tmp_path, "ilr0.15", 0) == tmp_path / "weak_labels"
    assert current_labels_path(tmp_path, None, 0) == tmp_path / "weak_labels"
    assert current_labels_path(tmp_path, "ilr0.15", 1) == tmp_path / "ilr0.15_0_weak_labels"
    assert current_labels_path(tmp_path, "dpo0.10.15", 3) == tmp_path / "dpo0.10.15_2_weak_labels"
    with pytest.raises(ConfigError, match="round_id=2 on labels needs a method"):
        current_labels_path(tmp_path, None, 2)


@pytest.mark.parametrize(
    "name, round_id",
    [("bs=32-ri=0-s=0", 0), ("ri=12-s=0", 12), ("bs=32-ri=3", 3), ("ri=7", 7), ("a=1-ri=10-b=2", 10)],
)
def test_run_round_reads_the_ri_field_only(name, round_id):
    assert run_round(Path("/x") / name) == round_id


@pytest.mark.parametrize("name", ["bs=32-s=0", "xri=1-s=0", "bs=32-ri=-s=0", "bri=1", "ri=1x"])
def test_a_name_without_a_round_field_is_refused(name):
    with pytest.raises(ConfigError, match="is not a run dir of experiments.main"):
        run_round(Path(name))


def test_run_round_reads_the_round_from_the_run_config_where_there_is_one(tmp_path):
    from iterative_label_refinement.core.files import write_json

    run = tmp_path / "bs=8-ri=1-s=0"
    run.mkdir()
    write_json(run / "experiment_config.json", {"round_id": 2, "seed": 0})
    assert run_round(run) == 2  # the config is what the run was given; the name is only made from it
    unnamed = tmp_path / "renamed-by-hand"
    unnamed.mkdir()
    write_json(unnamed / "experiment_config.json", {"round_id": 0})
    assert run_round(unnamed) == 0
    for bad in ({"seed": 0}, {"round_id": "1"}, {"round_id": True}):
        write_json(run / "experiment_config.json", bad)
        with pytest.raises(ConfigError, match="has no integer round_id"):
            run_round(run)


def test_check_round(tmp_path):
    good = tmp_path / "bs=8-ri=1-s=0"
    other = tmp_path / "bs=8-ri=11-s=0"
    good.mkdir()
    other.mkdir()
    check_round(1, model1_path=good, model2_path=good)
    with pytest.raises(ConfigError, match=r"round mismatch: --round_id=1 but .*--model2_path=.* is round 11"):
        check_round(1, model1_path=good, model2_path=other)
    with pytest.raises(ConfigError, match="--model1_path=.* does not exist"):
        check_round(1, model1_path=tmp_path / "bs=8-ri=1-s=1")


def test_first_and_label_accuracy():
    assert first([3, 4]) == 3 and first(5) == 5 and first("ab") == "ab" and first(None) is None
    assert label_accuracy([1.0, 0.0, 0.0, 1.0]) == 0.5
    assert label_accuracy([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) == pytest.approx(2 / 3)  # the first sample counts
    assert label_accuracy([None, 1.0, 0.0, None]) == 0.5  # unknown rows are left out, not counted as 0
    assert label_accuracy([None, None]) is None and label_accuracy([]) is None


def test_save_shuffles_with_the_seed_and_load_checks_columns(tmp_path, capsys):
    data = rows(20, extra_col="x")
    path = Path(save_label_set(data, tmp_path / "set", seed=3, record={"seed": 3}))
    assert capsys.readouterr().out.strip() == str(path) and is_label_set(path)
    assert json.loads((path / "provenance.json").read_text()) == {"seed": 3}  # written with the rows
    loaded = load_label_set(path)
    assert sorted(loaded["question"]) == sorted(r["question"] for r in data)
    assert loaded["question"] != [r["question"] for r in data]  # shuffled
    again = Path(save_label_set(data, tmp_path / "again", seed=3, record={}))
    assert load_from_disk(str(again))["question"] == loaded["question"]  # the same seed, the same order
    assert load_label_set(path, ("question",)).num_rows == 20
    assert save_label_set(data, tmp_path / "dry", seed=0, record={}, save=False) == str(tmp_path / "dry")
    assert not (tmp_path / "dry").exists()

    Dataset.from_list([{"question": "q", "answer": "a"}]).save_to_disk(str(tmp_path / "no_gt"))
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['gt_answer'\]"):
        load_label_set(tmp_path / "no_gt")
    with pytest.raises(ConfigError, match="No label set at"):
        load_label_set(tmp_path / "nothing")
    (tmp_path / "empty_dir").mkdir()
    assert not is_label_set(tmp_path / "empty_dir")


def test_current_labels_need_acc_and_correct_only_needs_known_acc(tmp_path):
    weak = tmp_path / "weak"
    Dataset.from_list([{k: v for k, v in r.items() if k != "acc"} for r in rows(4)]).save_to_disk(
        str(weak / "weak_labels"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['acc'\]"):
        load_current_labels(weak, "ilr0.1", 0)
    mixed = rows(6, acc=0.0)
    mixed[1]["acc"], mixed[4]["acc"] = 1.0, 1.0
    Dataset.from_list(mixed).save_to_disk(str(tmp_path / "w2" / "weak_labels"))
    assert load_current_labels(tmp_path / "w2", "ilr0.1", 0).num_rows == 6
    assert load_current_labels(tmp_path / "w2", "ilr0.1", 0, correct_only=True)["question"] == ["q1", "q4"]
    # correct_only is a round-0 filter: later rounds read the previous refinement as it is
    Dataset.from_list(mixed).save_to_disk(str(tmp_path / "w2" / "corilr0.1_0_weak_labels"))
    assert load_current_labels(tmp_path / "w2", "corilr0.1", 1, correct_only=True).num_rows == 6

    unknown = rows(3, acc=None)
    Dataset.from_list(unknown).save_to_disk(str(tmp_path / "w3" / "weak_labels"))
    with pytest.raises(ConfigError, match="acc=None in 3 of 3 rows, but --start_with_correct_labels needs"):
        load_current_labels(tmp_path / "w3", "corilr0.1", 0, correct_only=True)
    check_known_acc(Dataset.from_list(rows(2)), "p", "x")
    with pytest.raises(ConfigError, match="acc=None in 1 of 2 rows"):
        check_known_acc(Dataset.from_list([{"acc": [1.0, 0.0]}, {"acc": [None, 1.0]}]), "p", "oracle feedback")
    assert REFINEMENT_COLUMNS == (*LABEL_COLUMNS, "acc")


@pytest.mark.parametrize("drop_acc", [True, False])
def test_ilr_oracle_on_proposals_without_correctness_exits_2_and_writes_nothing(tmp_path, drop_acc):
    """No traceback and no label set: one line naming the set and what is missing."""
    weak = tmp_path / "weak"
    Dataset.from_list(rows(4)).save_to_disk(str(weak / "weak_labels"))
    halves = []
    for h in (1, 2):
        half = tmp_path / f"bs=8-hd={h}-ri=0-s=0"
        data = rows(4, acc=None)
        if drop_acc:
            data = [{k: v for k, v in r.items() if k != "acc"} for r in data]
        Dataset.from_list(data).save_to_disk(str(half / "weak_labels"))
        halves.append(half)
    cmd = [sys.executable, "-m", "iterative_label_refinement.experiments.ilr", "--ds_name=toy_arith",
           f"--weak_model_path={weak}", f"--model1_path={halves[0]}", f"--model2_path={halves[1]}",
           "--round_id=0", "--use_oracle_feedback=True"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Label set") and "Traceback" not in proc.stderr
    assert ("missing column(s) ['acc']" if drop_acc else "acc=None in 4 of 4 rows") in lines[0]
    assert sorted(p.name for p in weak.iterdir()) == ["weak_labels"]


def test_error_messages_name_the_path_and_the_round(tmp_path):
    with pytest.raises(ConfigError, match="needs a method to find <method>_2_weak_labels"):
        current_labels_path(tmp_path, None, 3)
    a, b = tmp_path / "x-ri=2", tmp_path / "y-ri=3"
    a.mkdir()
    b.mkdir()
    with pytest.raises(ConfigError) as error:
        check_round(1, model1_path=a, model2_path=b)
    assert str(error.value).endswith(f"--model1_path={a} is round 2, --model2_path={b} is round 3")
    Dataset.from_list([{"question": "q", "answer": "a"}]).save_to_disk(str(tmp_path / "no_gt"))
    with pytest.raises(ConfigError, match=f"^Label set {tmp_path / 'no_gt'} is missing"):
        load_label_set(tmp_path / "no_gt")
    Dataset.from_list(rows(2, acc=None)).save_to_disk(str(tmp_path / "w" / "weak_labels"))
    with pytest.raises(ConfigError) as error:
        load_current_labels(tmp_path / "w", "corilr0.1", 0, correct_only=True)
    assert str(error.value) == (f"Label set {tmp_path / 'w' / 'weak_labels'} has acc=None in 2 of 2 rows, but "
                                "--start_with_correct_labels needs each label's correctness: generate the labels "
                                "with --compute_weak_label_acc=True")  # fmt: skip


@pytest.mark.parametrize("marker", ["dataset_info.json", "state.json"])
def test_either_datasets_file_marks_a_label_set(tmp_path, marker):
    (tmp_path / marker).write_text("{}")
    assert is_label_set(tmp_path)


def _record(folder: Path, **record) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "provenance.json").write_text(json.dumps(record))
    return folder


def test_trained_by_reads_the_record_first_then_the_name(tmp_path):
    assert trained_by(tmp_path / "weak_labels") == (None, 0)
    assert trained_by(tmp_path / "ilr0.3_0_weak_labels") == ("ilr0.3", 1)
    assert trained_by(tmp_path / "naive0.3rd_12_weak_labels") == ("naive0.3rd", 13)
    # the method's own name may hold underscores and digits: the round is the last number
    assert trained_by(tmp_path / "a_1_b_2_weak_labels") == ("a_1_b", 3)
    for other in ("labels", "ilr0.3_x_weak_labels", "ilr0.3_1_weak_labels_copy", "_1_weak_labels", "weak_labels2"):
        assert trained_by(tmp_path / other) is None, other
    # a record names what the set is for, whatever its folder is called
    mine = _record(tmp_path / "my_labels", method="dpo0.50.15", round_id=2)
    assert trained_by(mine) == ("dpo0.50.15", 3)
    renamed = _record(tmp_path / "ilr0.3_0_weak_labels", method="naive0.3", round_id=0)
    assert trained_by(renamed) == ("naive0.3", 1)
    # a record without both fields (evaluator data, a user's note) leaves the name to speak
    partial = _record(tmp_path / "x" / "ilr0.3_4_weak_labels", method="naive0.3")
    assert trained_by(partial) == ("ilr0.3", 5)
    no_round = _record(tmp_path / "y" / "weak_labels", round_id=3)
    assert trained_by(no_round) == (None, 0)


def test_check_trains_refuses_another_method_or_round_and_names_both(tmp_path):
    check_trains(tmp_path / "weak_labels", "ilr0.3", 0)  # round 0's labels suit every method
    check_trains(tmp_path / "weak_labels", None, 0)
    check_trains(tmp_path / "ilr0.3_1_weak_labels", "ilr0.3", 2)
    check_trains(tmp_path / "my_own_labels", "ilr0.3", 5)  # neither a record nor our name: the user's own
    with pytest.raises(ConfigError, match=r"holds the labels of round 0, but this run is --method=ilr0.3 --round_id=1"):
        check_trains(tmp_path / "weak_labels", "ilr0.3", 1)
    with pytest.raises(ConfigError, match=r"holds the labels of naive0.3 round 2, but this run is --method=ilr0.3 --r"):
        check_trains(tmp_path / "naive0.3_1_weak_labels", "ilr0.3", 2)
    with pytest.raises(ConfigError, match=r"holds the labels of ilr0.3 round 2, but this run is --method=ilr0.3 --r"):
        check_trains(tmp_path / "ilr0.3_1_weak_labels", "ilr0.3", 1)
    with pytest.raises(ConfigError, match=r"ilr0.3 round 2.*--round_id=3"):
        check_trains(tmp_path / "ilr0.3_1_weak_labels", "ilr0.3", 3)
    recorded = _record(tmp_path / "kept", method="naive0.3", round_id=0)
    check_trains(recorded, "naive0.3", 1)
    with pytest.raises(ConfigError, match=f"--weak_labels_path={recorded} holds the labels of naive0.3 round 1"):
        check_trains(recorded, "ilr0.3", 1)


def test_data_files_reads_state_json_and_says_none_when_it_cannot(tmp_path):
    assert _data_files(tmp_path) is None  # no state.json
    (tmp_path / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}')
    assert _data_files(tmp_path) == [{"filename": "data-00000-of-00001.arrow"}]
    (tmp_path / "state.json").write_text('{"_data_files": []}')
    assert _data_files(tmp_path) == []
    (tmp_path / "state.json").write_text("{}")
    assert _data_files(tmp_path) is None
    (tmp_path / "state.json").write_text('{"_data_files": ')  # torn
    assert _data_files(tmp_path) is None
    (tmp_path / "state.json").write_text("[1, 2]")  # not an object
    assert _data_files(tmp_path) is None


def test_a_damaged_or_empty_label_set_is_one_line_naming_it(tmp_path):
    path = Path(save_label_set(rows(3), tmp_path / "set", seed=0, record={}))
    (arrow,) = path.glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:40])  # torn
    with pytest.raises(ConfigError, match=f"^Label set {path} is damaged \\(.*\\); remake it with --force$"):
        load_label_set(path)
    Dataset.from_list(rows(2)).select([]).save_to_disk(str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=f"^Label set {tmp_path / 'none'} has no rows; remake it with --force$"):
        load_label_set(tmp_path / "none")
