"""Data preparation never destroys anything, and bad raw files fail with the file, the row and the field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from iterative_label_refinement.core import files, raw_data
from iterative_label_refinement.core.cli import run_cli
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import prepare_data


def _gsm8k_raw(folder: Path, n_train: int = 3, n_test: int = 2) -> Path:
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [{"question": f"{split} q{i}", "answer": f"1+{i}={1 + i}\n#### {1 + i}"} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("force", [False, True])
def test_a_user_folder_survives(tmp_path, force):
    user = tmp_path / "my_folder"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    (user / "figures").mkdir()
    (user / "figures" / "plot.png").write_bytes(b"\x89PNG")
    before = _listing(tmp_path)
    with pytest.raises(ConfigError, match="not written by prepare_data; refusing to replace it"):
        prepare_data.main("gsm8k", raw_path=str(_gsm8k_raw(tmp_path / "raw")), out_path=str(user), force=force)
    after = _listing(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("raw")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_folder", "raw"]  # no .old or .tmp sibling


@pytest.mark.parametrize("force", [False, True])
def test_a_user_file_survives_without_a_stray_copy(tmp_path, force):
    user = tmp_path / "notes.txt"
    user.write_text("keep me")
    with pytest.raises(ConfigError, match="is a file; refusing to replace it"):
        prepare_data.main("gsm8k", raw_path=str(_gsm8k_raw(tmp_path / "raw")), out_path=str(user), force=force)
    assert user.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "raw"]


def test_force_replaces_only_a_dataset_prepared_here(tmp_path):
    out = tmp_path / "out"
    prepare_data.main("gsm8k", raw_path=str(_gsm8k_raw(tmp_path / "small", 3, 2)), out_path=str(out))
    marker = json.loads((out / prepare_data.MARKER).read_text())
    assert marker["files"] == {k: len(v) for k, v in _listing(out).items() if k != prepare_data.MARKER}
    bigger = _gsm8k_raw(tmp_path / "big", 5, 4)
    prepare_data.main("gsm8k", raw_path=str(bigger), out_path=str(out))  # no --force: kept as it is
    assert load_from_disk(str(out)).num_rows == {"train": 3, "test": 2}
    prepare_data.main("gsm8k", raw_path=str(bigger), out_path=str(out), force=True)
    assert load_from_disk(str(out)).num_rows == {"train": 5, "test": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "out", "small"]


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Run prepare_data's command line in this process: its exit code and its error lines."""
    capsys.readouterr()
    try:
        run_cli(prepare_data.main, ["--ds_name=gsm8k", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def _users_datasetdict(out: Path, truncated: bool) -> None:
    rows = {"question": ["my q"] * 40, "answer": ["#### 1"] * 40}
    DatasetDict({s: Dataset.from_dict(rows) for s in ("train", "test")}).save_to_disk(str(out))
    if truncated:
        arrow = out / "train" / "data-00000-of-00001.arrow"
        arrow.write_bytes(arrow.read_bytes()[:-100])


@pytest.mark.parametrize("truncated", [False, True])
@pytest.mark.parametrize("force", [False, True])
def test_a_users_datasetdict_is_refused(tmp_path, capsys, force, truncated):
    """Before, an unmarked train/test DatasetDict counted as prepared here: kept with exit 0 (even a
    truncated one, as if complete) or, with --force, deleted."""
    out = tmp_path / "out"
    _users_datasetdict(out, truncated)
    raw = _gsm8k_raw(tmp_path / "raw")
    before = _listing(out)
    code, errors = _cli(capsys, f"--raw_path={raw}", f"--out_path={out}", f"--force={force}")
    assert code == 2 and len(errors) == 1
    assert f"--out_path={out} is a DatasetDict folder not written by prepare_data; refusing" in errors[0]
    assert "Move it away" in errors[0]
    assert _listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


@pytest.mark.parametrize("force", [False, True])
def test_a_users_file_in_a_prepared_folder_is_refused(tmp_path, capsys, force):
    """Before, --force deleted the user's notes with the dataset (and without it, exit 0)."""
    out = tmp_path / "out"
    prepare_data.main("gsm8k", raw_path=str(_gsm8k_raw(tmp_path / "raw")), out_path=str(out))
    _write(out / "NOTES.md", "why this split")
    _write(out / "train" / "scratch.txt", "mine")
    before = _listing(out)
    code, errors = _cli(capsys, f"--raw_path={tmp_path / 'raw'}", f"--out_path={out}", f"--force={force}")
    assert code == 2 and len(errors) == 1
    assert f"--out_path={out} holds NOTES.md, train/scratch.txt, not written by prepare_data; refusing" in errors[0]
    assert _listing(out) == before


def _truncate(out: Path) -> str:
    arrow = out / "train" / "data-00000-of-00001.arrow"
    size = arrow.stat().st_size
    arrow.write_bytes(arrow.read_bytes()[: size // 2])
    return f"train/data-00000-of-00001.arrow has {size // 2} bytes, not the {size} written"


def _drop_split(out: Path) -> str:
    for p in sorted((out / "test").iterdir()):
        p.unlink()
    (out / "test").rmdir()
    return "test/data-00000-of-00001.arrow is missing"


def _old_marker(out: Path) -> str:
    (out / prepare_data.MARKER).write_text(json.dumps({"ds_name": "gsm8k", "raw_path": "x"}))
    return f"its {prepare_data.MARKER} lists no files"


@pytest.mark.parametrize("damage", [_truncate, _drop_split, _old_marker])
def test_a_damaged_prepared_dataset_is_an_error_that_force_repairs(tmp_path, capsys, damage):
    """Before, a prepared folder with a truncated shard or a missing split was 'already exists', exit 0."""
    out = tmp_path / "out"
    raw = _gsm8k_raw(tmp_path / "raw", 5, 4)
    prepare_data.main("gsm8k", raw_path=str(raw), out_path=str(out))
    what = damage(out)
    before = _listing(out)
    code, errors = _cli(capsys, f"--raw_path={raw}", f"--out_path={out}")
    assert code == 2 and len(errors) == 1
    assert f"--out_path={out} is a damaged prepared dataset: {what}" in errors[0] and "--force" in errors[0]
    assert _listing(out) == before
    assert _cli(capsys, f"--raw_path={raw}", f"--out_path={out}", "--force") == (0, [])
    assert load_from_disk(str(out)).num_rows == {"train": 5, "test": 4}
    assert _cli(capsys, f"--raw_path={raw}", f"--out_path={out}") == (0, [])  # complete again: nothing to do
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_ctrl_c_mid_swap_leaves_the_old_dataset(tmp_path, monkeypatch):
    """Where the filesystem cannot exchange two folders, the swap is two renames; Ctrl-C between them
    left nothing at the path before (the old copy only in a hidden `.old`)."""
    out = tmp_path / "out"
    prepare_data.main("gsm8k", raw_path=str(_gsm8k_raw(tmp_path / "small", 3, 2)), out_path=str(out))
    before = _listing(out)
    replace = os.replace

    def interrupted(src, dst):
        replace(src, dst)
        if Path(src) == out:
            raise KeyboardInterrupt

    monkeypatch.setattr(files, "_exchange", lambda a, b: False, raising=False)
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_data.main("gsm8k", raw_path=str(_gsm8k_raw(tmp_path / "big", 5, 4)), out_path=str(out), force=True)
    assert _listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "out", "small"]


# Runs prepare_data's command line and SIGKILLs itself at one point of the write (argv[1]).
KILLER = """
import os, shutil, signal, sys
from pathlib import Path

import datasets

from iterative_label_refinement.core import files
from iterative_label_refinement.core.cli import run_cli
from iterative_label_refinement.experiments import prepare_data

point, out = sys.argv[1], Path(sys.argv[2])


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point == "shards_written":  # the new dataset half in its temporary folder (no marker yet)
    save = datasets.DatasetDict.save_to_disk
    datasets.DatasetDict.save_to_disk = lambda self, path, **kw: (save(self, path, **kw), die())
elif point == "between_renames":  # a filesystem without the atomic exchange: the old one moved aside
    files._exchange = lambda a, b: False
    replace = os.replace
    os.replace = lambda src, dst: (replace(src, dst), Path(src) == out and die())
elif point == "old_not_deleted":  # the new one in place, the old one still in a hidden sibling
    rmtree = shutil.rmtree
    shutil.rmtree = lambda p, *a, **kw: (Path(p).name.startswith(f".{out.name}.") and die(), rmtree(p, *a, **kw))
run_cli(prepare_data.main, sys.argv[3:])
"""


@pytest.mark.parametrize(
    ("point", "after_rerun"), [("shards_written", "old"), ("between_renames", "old"), ("old_not_deleted", "new")]
)
def test_sigkill_during_force_leaves_one_dataset_and_no_siblings(tmp_path, capsys, point, after_rerun):
    """A --force run killed anywhere leaves, once prepare_data runs again, the old or the new dataset
    at the path and nothing else: before, a kill between the renames left no dataset, and every
    kill a hidden `.tmp` or `.old` copy beside it for good."""
    out = tmp_path / "out"
    old_raw, new_raw = _gsm8k_raw(tmp_path / "small", 3, 2), _gsm8k_raw(tmp_path / "big", 5, 4)
    prepare_data.main("gsm8k", raw_path=str(old_raw), out_path=str(out))
    old = _listing(out)
    killer = _write(tmp_path / "killer.py", KILLER)
    args = ["--ds_name=gsm8k", f"--raw_path={new_raw}", f"--out_path={out}", "--force"]
    run = subprocess.run([sys.executable, str(killer), point, str(out), *args], capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    if point != "between_renames":  # the exchange is atomic: a dataset at the path at every moment
        assert load_from_disk(str(out)).num_rows in ({"train": 3, "test": 2}, {"train": 5, "test": 4})
    assert _cli(capsys, f"--raw_path={new_raw}", f"--out_path={out}") == (0, [])  # no --force: recovers, keeps
    expected = {"old": {"train": 3, "test": 2}, "new": {"train": 5, "test": 4}}[after_rerun]
    assert load_from_disk(str(out)).num_rows == expected
    if after_rerun == "old":
        assert _listing(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "killer.py", "out", "small"]


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


GOOD_LINE = json.dumps({"question": "q", "answer": "#### 1"}) + "\n"


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("", r"train.jsonl: no rows \(an empty file or list\)"),
        ("\n\n", r"train.jsonl: no rows"),
        (GOOD_LINE + '{"question": "q", "answer": 7}\n', r"train.jsonl: row 1 \(line 2\): field 'answer' is 7, expected str"),
        (GOOD_LINE + '{"question": null, "answer": "a"}\n', r"row 1 \(line 2\): field 'question' is None, expected str"),
        (GOOD_LINE * 50 + '{"question": "q", "answer": \n', r"train.jsonl: line 51: not valid JSON"),
        (GOOD_LINE * 2 + "[1, 2]\n", r"train.jsonl: row 2 \(line 3\) is a list, not an object"),
        (GOOD_LINE * 2 + '{"question": "caf\xe9"}\n', r"train.jsonl: row 2 is missing field\(s\) \['answer'\] .*\(line 3\)"),
        (GOOD_LINE.encode() * 2 + b'{"question": "caf\xe9", "answer": "1"}\n', r"train.jsonl: line 3: bytes that are not UTF-8"),
    ],
)  # fmt: skip
def test_bad_gsm8k_files_name_file_line_and_field(tmp_path, train, message):
    raw = tmp_path / "raw"
    _write(raw / "train.jsonl", train)
    _write(raw / "test.jsonl", GOOD_LINE)
    with pytest.raises(ConfigError, match=message):
        prepare_data.main("gsm8k", raw_path=str(raw), out_path=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


TABLES = {
    "db_id": "shop",
    "table_names_original": ["item"],
    "column_names_original": [[-1, "*"], [0, "id"], [0, "name"]],
    "column_types": ["text", "number", "text"],
}
QUESTION = {"db_id": "shop", "question": "How many items?", "evidence": "", "SQL": "SELECT count(*) FROM item"}


def _bird_raw(folder: Path, split: str, tables: dict, questions: list[dict]) -> Path:
    _write(folder / f"{split}_tables.json", json.dumps([tables]))
    _write(folder / f"{split}.json", json.dumps(questions))
    return folder


@pytest.mark.parametrize(
    ("tables", "questions", "message"),
    [
        (dict(TABLES, column_names_original=[[-1, "*"], [3, "id"]], column_types=["text", "number"]),
         [QUESTION], r"dev_tables.json: row 0 \(db_id 'shop'\): field 'column_names_original' item 1 is \[3, 'id'\]"),
        (dict(TABLES, column_types=["text"]), [QUESTION], r"row 0 \(db_id 'shop'\): field 'column_types' must list"),
        (dict(TABLES, table_names_original=None), [QUESTION], r"field 'table_names_original' is None, expected list"),
        (TABLES, [QUESTION, dict(QUESTION, SQL=None)], r"dev.json: row 1: field 'SQL' \(or Spider's 'query'\) is None"),
        (TABLES, [dict(QUESTION, evidence=3)], r"dev.json: row 0: field 'evidence' is 3, expected a string"),
        (TABLES, [], r"dev.json: no rows"),
    ],
)  # fmt: skip
def test_bad_bird_files_name_file_row_and_field(tmp_path, tables, questions, message):
    raw = _bird_raw(tmp_path / "raw", "dev", tables, questions)
    with pytest.raises(ConfigError, match=message):
        prepare_data.main("bird", raw_path=str(raw), out_path=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bird_prepares_from_train_files_alone(tmp_path):
    questions = [dict(QUESTION, question=f"q{i}") for i in range(10)]
    raw = _bird_raw(tmp_path / "raw", "train", TABLES, questions)
    out = prepare_data.main("bird", raw_path=str(raw), out_path=str(tmp_path / "out"))
    dd = load_from_disk(out)
    assert dd.num_rows == {"train": 8, "test": 2}
    assert sorted(list(dd["train"]["question"]) + list(dd["test"]["question"])) == sorted(
        raw_data.bird_question(raw_data.schema_text(TABLES), f"q{i}", "") for i in range(10)
    )


SAFE_ROW = {"instruction": "Do a bad thing", "input": "", "output": "I cannot help with that."}
GENERAL_ROW = {"instruction": "Add", "input": "1 and 2", "output": "3"}


def test_saferpaca_finds_files_by_name_only_and_refuses_two_candidates(tmp_path):
    raw = tmp_path / "raw"
    _write(raw / "training" / "safety_only_data_Instructions.json", json.dumps([SAFE_ROW] * 10))
    _write(raw / "general" / "alpaca_data_cleaned.json", json.dumps([GENERAL_ROW] * 10))
    # neither is a candidate by its name: a folder called alpaca, an evaluation list named I-Alpaca
    _write(raw / "alpaca_extras" / "notes.json", json.dumps([{"instruction": "x"}]))
    _write(raw / "evaluation" / "I-Alpaca.json", json.dumps({"instructions": ["x"]}))
    dd = load_from_disk(prepare_data.main("saferpaca", raw_path=str(raw), out_path=str(tmp_path / "out")))
    assert sorted(list(dd["train"]["category"]) + list(dd["test"]["category"])) == ["general"] * 10 + ["safety"] * 10
    _write(raw / "old" / "alpaca_2000.json", json.dumps([GENERAL_ROW]))
    with pytest.raises(ConfigError, match=r"exactly one file named \*alpaca\*.json .* found 2: "):
        prepare_data.main("saferpaca", raw_path=str(raw), out_path=str(tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()
