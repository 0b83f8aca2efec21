"""experiments.main refuses bad sizes and unusable BIRD databases before it writes its first file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import main as main_module
from iterative_label_refinement.experiments import prepare_data

TINY = dict(ds_name="toy_arith", model_size="tiny-random", n_docs=48, n_test_docs=8, batch_size=8, epochs=1,
            lora_rank=4, minibatch_size_per_device=4)  # fmt: skip


def run(results: Path, **kwargs):
    return main_module.main(results_folder=str(results), **{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_docs=0), "--n_docs must be a positive number, got 0"),
        (dict(n_test_docs=-5), "--n_test_docs must be a positive number, got -5"),
        (dict(epochs=0), "--epochs must be a positive number, got 0"),
        (dict(batch_size=0), "--batch_size must be a positive number, got 0"),
        (dict(eval_batch_size=-1), "--eval_batch_size must be a positive number, got -1"),
        (dict(max_len=-3), "--max_len must be a positive number, got -3"),
        (dict(batch_size=10), r"--batch_size=10 is not a multiple of minibatch_size_per_device x processes = 4 x 1"),
    ],
)
def test_bad_sizes_are_refused_before_any_file(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path / "results", **kwargs)
    assert not (tmp_path / "results").exists()


def test_batch_size_must_divide_over_every_process(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"--batch_size=8 is not a multiple of .* = 4 x 3 = 12"):
        run(tmp_path / "results")
    assert not (tmp_path / "results").exists()


@pytest.fixture
def bird_data(tmp_path, monkeypatch) -> Path:
    """A prepared BIRD-format dataset on database `shop`, and a database root holding `shop`."""
    raw = tmp_path / "raw"
    raw.mkdir()
    tables = {"db_id": "shop", "table_names_original": ["item"], "column_names_original": [[-1, "*"], [0, "id"]],
              "column_types": ["text", "number"]}  # fmt: skip
    questions = [{"db_id": "shop", "question": f"Item {i}?", "SQL": f"SELECT id FROM item WHERE id = {i}"}
                 for i in range(40)]  # fmt: skip
    (raw / "train_tables.json").write_text(json.dumps([tables]))
    (raw / "train.json").write_text(json.dumps(questions))
    monkeypatch.setenv("ILR_DATA_PATH", str(tmp_path / "data"))
    prepare_data.main("bird", raw_path=str(raw))
    root = tmp_path / "dbs"
    (root / "shop").mkdir(parents=True)
    sqlite3.connect(root / "shop" / "shop.sqlite").execute("CREATE TABLE item (id)").connection.close()
    monkeypatch.delenv("ILR_BIRD_DB_URLS", raising=False)
    return root


@pytest.mark.parametrize(
    ("bird_path", "message"),
    [
        (None, "set ILR_BIRD_PATH"),
        ("missing", "database root .*missing' is not a folder"),
        ("empty", "unknown database 'shop'"),
    ],
)
def test_bird_databases_are_checked_before_training(bird_data, tmp_path, monkeypatch, bird_path, message):
    if bird_path is None:
        monkeypatch.delenv("ILR_BIRD_PATH", raising=False)
    else:
        (tmp_path / "empty").mkdir()
        monkeypatch.setenv("ILR_BIRD_PATH", str(tmp_path / bird_path))
    with pytest.raises(ConfigError, match=message):
        run(tmp_path / "results", ds_name="bird", n_docs=20)
    assert not (tmp_path / "results").exists()
