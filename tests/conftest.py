"""Shared fixtures: offline tiny models, a results folder, and the real data folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs one pytest-xdist worker per core: each computes on its share of the cores (torch's
# default, every core in every process, would oversubscribe them). Subprocesses inherit it.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

# The tasks and the toy world's models (after the settings above: libraries read them on import). Tests
# import core modules directly, below the entry points that load them.
from iterative_label_refinement.plugins import load_plugins  # noqa: E402

load_plugins()


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
def install_vllm(monkeypatch):
    """Put a stand-in `vllm` package where `core.generation` imports it (vLLM itself needs a GPU): the
    test's own `LLM` and `SamplingParams` classes, and a `LoRARequest` that keeps its arguments."""
    import sys
    import types

    class LoRARequest:
        def __init__(self, *args):
            self.args = args

    def install(llm: type, sampling_params: type) -> None:
        vllm = types.ModuleType("vllm")
        vllm.LLM, vllm.SamplingParams = llm, sampling_params
        request = types.ModuleType("vllm.lora.request")
        request.LoRARequest = LoRARequest
        monkeypatch.setitem(sys.modules, "vllm", vllm)
        monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
        monkeypatch.setitem(sys.modules, "vllm.lora.request", request)

    return install


@pytest.fixture
def results_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv("ILR_SAVE_PATH", str(folder))
    return folder


@pytest.fixture
def run_config():
    """Build a RunConfig from experiments.main's defaults, as the command line gives them, and `flags`."""
    import inspect

    from iterative_label_refinement.core.run_config import RunConfig
    from iterative_label_refinement.experiments import main as main_module

    params = inspect.signature(main_module.main).parameters
    defaults = {k: p.default for k, p in params.items() if k != "print_save_path"}
    return lambda **flags: RunConfig.from_flags(**{**defaults, **flags})
