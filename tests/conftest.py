"""Shared fixtures: offline tiny models, a results folder, and the real data folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared_data_path() -> Path:
    return Path(os.environ.get("ILR_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The real data: $ILR_TEST_DATA, else the `shared/data` folder beside the repository; tests that need it skip when it is absent."""
    path = shared_data_path()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set ILR_TEST_DATA to use another)")
    return path


@pytest.fixture
def results_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv("ILR_SAVE_PATH", str(folder))
    return folder
