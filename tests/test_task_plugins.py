"""Tasks and the toy world are plug-ins: core imports neither `toy` nor `metrics` (nor the tasks), a
lookup before they register says where they register, and a task's subset column and evaluator
modes are facts of its registry entry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from iterative_label_refinement.core import datasets as datasets_module
from iterative_label_refinement.core.datasets import DatasetConfig, dataset_names, get_dataset_config, register_dataset
from iterative_label_refinement.core.layout import get_config_foldername
from iterative_label_refinement.core.models import MODELS_DICT
from iterative_label_refinement.core.run_data import filter_rows
from iterative_label_refinement.core.settings import ConfigError

CORE = Path(__file__).resolve().parents[1] / "iterative_label_refinement" / "core"
UPPER_FLOORS = ("toy", "metrics", "tasks", "plugins", "experiments")

IMPORT_EACH = """
import importlib, sys
upper = tuple("iterative_label_refinement." + f for f in sys.argv[1].split(","))
for module in sys.argv[2:]:
    importlib.import_module("iterative_label_refinement.core." + module)
    found = sorted(m for m in sys.modules if m.startswith(upper))
    if found:
        sys.exit(f"core.{module} imports {found}")
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_no_core_module_imports_an_upper_floor():
    modules = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    assert {"datasets", "models", "run_data", "layout", "train_evaluator"} <= set(modules)
    proc = run_python(IMPORT_EACH, ",".join(UPPER_FLOORS), *modules)
    assert proc.returncode == 0, proc.stderr[-2000:]


# `plugins` is absent on purpose: core's entry points call `plugins.load_plugins()` lazily, by design.
NEVER_IN_CORE = tuple(f"iterative_label_refinement.{f}" for f in ("toy", "metrics", "tasks", "experiments"))
UPPER = tuple(f"{m}." for m in NEVER_IN_CORE)


def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports, at any depth (function bodies too); relative imports made absolute."""
    package = ["iterative_label_refinement", "core"]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) + 1 - node.level] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]  # `from pkg import metrics`
    return names


def test_no_core_source_imports_an_upper_floor_even_lazily():
    """The import check above runs module bodies only; an import inside a function is found here, by reading."""
    # the reader sees function bodies: datasets.py loads the plug-ins inside a function
    assert "iterative_label_refinement.plugins" in imported_modules(CORE / "datasets.py")
    found = {
        f"core/{path.name}": [m for m in imported_modules(path) if m in NEVER_IN_CORE or m.startswith(UPPER)]
        for path in sorted(CORE.glob("*.py"))
    }
    assert {name: mods for name, mods in found.items() if mods} == {}


def test_a_lookup_before_the_plugins_load_names_where_they_register():
    code = """
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.core.datasets import get_dataset_config
from iterative_label_refinement.core.models import get_model_config
for lookup, name in ((get_dataset_config, "toy_arith"), (get_model_config, "tiny-random")):
    try:
        lookup(name)
    except ConfigError as e:
        print(e)
    else:
        print("found", name)
"""
    proc = run_python(code)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert lines[0].startswith("Unknown dataset 'toy_arith': no task is registered yet.")
    assert lines[1].startswith("Unknown model 'tiny-random'.")
    assert all("iterative_label_refinement.plugins.load_plugins()" in line for line in lines)


def test_the_papers_tasks_and_the_toy_world_are_registered_by_the_plugins():
    """Loaded by the tests' conftest as by every entry point; the list is not pinned, only the paper's entries."""
    assert {"gsm8k", "bird", "saferpaca", "toy_arith"} <= set(dataset_names())
    assert {"tiny-random", "tiny-llama-weak", "tiny-llama-strong"} <= set(MODELS_DICT)
    saferpaca = get_dataset_config("saferpaca")  # the paper's values, pinned here
    assert saferpaca.modes == {1: "general", 2: "safety"} and saferpaca.subset_column == "category"
    assert saferpaca.evaluator_modes == (1, 2)
    assert all(not get_dataset_config(n).evaluator_modes for n in ("gsm8k", "bird", "toy_arith"))


ROWS = [{"question": f"q{i}", "answer": f"#### {i}", "topic": ("calm", "loud", "calm")[i % 3],
         "category": "loud"} for i in range(9)]  # fmt: skip


@pytest.fixture
def register(monkeypatch):
    """Register throwaway tasks for one test, leaving the registry as it was."""
    monkeypatch.setattr(datasets_module, "_REGISTRY", dict(datasets_module._REGISTRY))

    def add(**fields) -> DatasetConfig:
        base = dict(name="toy_topics", loader=lambda split: Dataset.from_list(ROWS), max_len=16,
                    metric=lambda p, r, rows: [float(a == b) for a, b in zip(p, r)],
                    agreement=lambda a, b, rows: [x == y for x, y in zip(a, b)])  # fmt: skip
        return register_dataset(DatasetConfig(**{**base, **fields}))

    return add


def test_a_mode_keeps_the_rows_of_its_subset_column(register):
    """The column is the entry's (`topic` here): rows are never selected on SaferPaca's `category`."""
    task = register(modes={1: "calm", 2: "loud"}, subset_column="topic")
    ds = Dataset.from_list(ROWS)
    for mode, value in task.modes.items():
        kept = filter_rows(ds, task, None, 0, mode, preference=False)
        assert kept["question"] == [r["question"] for r in ROWS if r["topic"] == value]
    assert len(filter_rows(ds, task, None, 0, None, preference=False)) == len(ROWS)  # no mode: every row
    with pytest.raises(ConfigError, match=r"saferpaca_mode must be 1 \(calm\) or 2 \(loud\), got 3"):
        filter_rows(ds, task, None, 0, 3, preference=False)


def test_an_entry_with_modes_names_their_column_and_its_evaluator_modes_are_among_them(register):
    with pytest.raises(ConfigError, match="has modes .* but no subset_column"):
        register(modes={1: "calm", 2: "loud"})
    with pytest.raises(ConfigError, match=r"evaluator_modes \[3\] are not among its modes"):
        register(modes={1: "calm", 2: "loud"}, subset_column="topic", evaluator_modes=(1, 3))


def test_the_evaluators_runs_come_from_the_entrys_evaluator_modes(register, tmp_path):
    from iterative_label_refinement.experiments.generate_evaluator_data import source_runs

    def run_dir(mode: int) -> Path:
        path = tmp_path / get_config_foldername(dict(ds_name="toy_topics", model_size="tiny-random", round_id=0,
                                                     saferpaca_mode=mode))  # fmt: skip
        path.mkdir(exist_ok=True)
        return path

    run = dict(ds_name="toy_topics", seed=0)
    one = register(modes={1: "calm", 2: "loud"}, subset_column="topic")  # modes, but one run gives the pairs
    assert source_runs(run_dir(1), run, one, None) == {"": (run_dir(1), run)}
    two = register(modes={1: "calm", 2: "loud"}, subset_column="topic", evaluator_modes=(2, 1))
    assert source_runs(run_dir(2), run, two, None) == {"loud": (run_dir(2), dict(run, saferpaca_mode=2)),
                                                        "calm": (run_dir(1), dict(run, saferpaca_mode=1))}  # fmt: skip
    with pytest.raises(ConfigError, match=r"needs a loud-only run \(sm=2 in its name\)"):
        source_runs(run_dir(1), run, two, None)
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert source_runs(run_dir(2), run, two, str(other))["calm"] == (other, dict(run, saferpaca_mode=1))
