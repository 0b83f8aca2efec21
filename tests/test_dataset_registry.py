"""A new task is one registry entry (+ its loader and metric): every dataset fact the runs use is read
from the entry, so a throwaway task registered here runs through naming, loading, filters, the
pre-training input check and scoring without any other file knowing its name."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from datasets import Dataset

from iterative_label_refinement.core import datasets as datasets_module
from iterative_label_refinement.core.datasets import DatasetConfig, get_dataset_config, load_dataset, register_dataset
from iterative_label_refinement.core.run_data import filter_rows
from iterative_label_refinement.experiments import main as main_module


def _rows(split: str) -> Dataset:
    n = 12 if split == "train" else 4
    # every third answer lacks the marker; categories alternate between the two modes
    return Dataset.from_list([{"question": f"echo {i}", "answer": f"ANSWER: {i}" if i % 3 else f"{i}",
                               "category": "loud" if i % 2 else "quiet"} for i in range(n)])  # fmt: skip


def _exact(predictions, references, rows):
    return [float(p.strip() == r.strip()) for p, r in zip(predictions, references)]


@pytest.fixture
def echo_task(monkeypatch):
    """Register `toy_echo` for one test, leaving the registry as it was."""
    monkeypatch.setattr(datasets_module, "_REGISTRY", dict(datasets_module._REGISTRY))
    checked: list[list[str]] = []
    config = register_dataset(
        DatasetConfig(
            name="toy_echo",
            loader=_rows,
            max_len=40,
            metric=_exact,
            agreement=lambda a, b, rows: [x == y for x, y in zip(a, b)],
            extra_columns=("category",),
            answer_marker="ANSWER:",
            score_labels=False,
            modes={1: "loud", 2: "quiet"},
            subset_column="category",
            check_rows=lambda splits: checked.append([q for ds in splits for q in ds["question"]]),
        )  # fmt: skip
    )
    return config, checked


def test_a_registered_task_names_its_runs(echo_task, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        printed = main_module.main(ds_name="toy_echo", model_size="tiny-random", results_folder=str(tmp_path),
                                   saferpaca_mode=2, print_save_path=True)  # fmt: skip
    assert out.getvalue().strip().splitlines()[-1] == printed
    assert "-dn=toy_echo-" in Path(printed).name and "-ml=40-" in Path(printed).name and "-sm=2-" in printed
    assert not tmp_path.joinpath("default").exists()


def test_the_entry_drives_filters_defaults_and_scoring(echo_task, run_config):
    config, _ = echo_task
    assert get_dataset_config("toy_echo") is config
    train = load_dataset("toy_echo", split_sizes={"train": 12, "test": 4})["train"]
    kept = filter_rows(train, config, None, 0, None, preference=False)
    assert sorted(kept["answer"]) == sorted(f"ANSWER: {i}" for i in range(12) if i % 3)
    loud = filter_rows(train, config, None, 0, 1, preference=False)
    assert set(loud["category"]) == {"loud"} and len(loud) == sum(1 for i in range(12) if i % 3 and i % 2)
    with pytest.raises(Exception, match=r"saferpaca_mode must be 1 \(loud\) or 2 \(quiet\), got 3"):
        filter_rows(train, config, None, 0, 3, preference=False)
    assert config.metric(["ANSWER: 1", "ANSWER: 2"], ["ANSWER: 1", "ANSWER: 3"], [{}, {}]) == [1.0, 0.0]
    cfg = run_config(ds_name="toy_echo", model_size="tiny-random")
    assert cfg.dataset is config and cfg.max_len == 40 and cfg.compute_weak_label_acc is False


def test_a_run_checks_the_task_inputs_before_training(echo_task, tmp_path, monkeypatch):
    """main loads, filters and checks the rows of the new task, then writes its config (stopped before training)."""
    _, checked = echo_task

    class Stop(Exception):
        pass

    def stop(seed):
        raise Stop

    monkeypatch.setattr(main_module, "seed_everything", stop)
    with pytest.raises(Stop):
        main_module.main(ds_name="toy_echo", model_size="tiny-random", results_folder=str(tmp_path), n_docs=12,
                         n_test_docs=4, batch_size=8, minibatch_size_per_device=4)  # fmt: skip
    (test_questions, label_questions) = (checked[0][:4], checked[0][4:])
    assert sorted(test_questions) == [f"echo {i}" for i in range(4)] and len(label_questions) == 6
    assert len(list(tmp_path.rglob("experiment_config.json"))) == 1


def test_every_prepared_task_names_its_reader_hint_and_hub_on_its_entry():
    from iterative_label_refinement.core import raw_data
    from iterative_label_refinement.core.datasets import preparable_datasets

    assert {"gsm8k", "bird", "saferpaca"} <= set(preparable_datasets())  # the paper's; a researcher adds more
    readers = {"gsm8k": raw_data.prepare_gsm8k, "bird": raw_data.prepare_bird, "saferpaca": raw_data.prepare_saferpaca}
    for name, reader in readers.items():
        entry = get_dataset_config(name)
        assert entry.preparer is reader and "--raw_path" in entry.prepare_hint
    assert [get_dataset_config(n).hub_source for n in readers] == [("openai/gsm8k", "main"), None, None]
    assert get_dataset_config("toy_arith").preparer is None  # generated in code, nothing to prepare
