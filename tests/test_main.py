"""experiments.main on tiny offline models: splits, label files, resumption, DPO sampling, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk

from iterative_label_refinement.core.datasets import load_dataset, tokenize_dataset
from iterative_label_refinement.core.generation import generate_answers
from iterative_label_refinement.core.models import load_model, load_tokenizer, resolve_model_path
from iterative_label_refinement.core.run_config import label_set_path
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.core.train import TrainConfig, add_lora, collate, train_sft
from iterative_label_refinement.experiments import main as main_module

TINY = dict(ds_name="toy_arith", model_size="tiny-random", n_docs=48, n_test_docs=8, batch_size=8, epochs=1,
            lora_rank=4, minibatch_size_per_device=4)  # fmt: skip


def run(results: Path, **kwargs):
    return main_module.main(results_folder=str(results), **{**TINY, **kwargs})


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory):
    """A ground-truth run (the weak supervisor): trains on half A, labels half B."""
    results = tmp_path_factory.mktemp("results")
    out = run(results, save_model=True)
    return results, Path(out["save_path"])


def test_ground_truth_run_writes_label_set_for_other_half(weak_run):
    _, run_dir = weak_run
    labels = load_from_disk(str(run_dir / "weak_labels"))
    assert {"question", "gt_answer", "answer", "acc", "answer_ids"} <= set(labels.column_names)
    dd = load_dataset("toy_arith", seed=0, split_sizes={"train": 48, "test": 8})
    halves = dd["train"].train_test_split(test_size=0.5, seed=0)
    assert sorted(labels["question"]) == sorted(halves["test"]["question"])
    assert sorted(labels["gt_answer"]) == sorted(halves["test"]["answer"])
    assert all(isinstance(a, str) for a in labels["answer"]) and set(labels["acc"]) <= {0.0, 1.0}
    summary = json.loads((run_dir / "results_summary.json").read_text())
    assert 0 <= summary["accuracy"] <= 1 and summary["n_test"] == 8
    config = json.loads((run_dir / "experiment_config.json").read_text())
    assert config["model_size"] == "tiny-random" and config["weak_model"] is None
    assert config["model_loaded_from"] == resolve_model_path("tiny-random")  # the cache folder it was built in
    lines = (run_dir / "test_results.jsonl").read_text().splitlines()
    assert len(lines) == 8 and set(json.loads(lines[0])) >= {"question", "gt_answer", "answer", "acc"}
    assert not list(run_dir.glob("*.pkl"))


def test_rerun_of_a_finished_run_does_nothing(weak_run):
    results, run_dir = weak_run
    before = (run_dir / "adapter_model.safetensors").stat().st_mtime_ns
    out = run(results, save_model=True)
    assert out["skipped"] is True
    # With the results gone but the model kept, it evaluates again without retraining.
    (run_dir / "results_summary.json").unlink()
    out = run(results, save_model=True)
    assert "skipped" not in out and (run_dir / "results_summary.json").exists()
    assert (run_dir / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_a_run_looks_its_model_up_once(tmp_path, monkeypatch):
    """RunConfig resolves the model's entry once; training, evaluation, labelling and the records get it
    passed down (each lookup by name reads the models file, and a folder's weights, again)."""
    from iterative_label_refinement.core import models

    lookups = []
    real = models.user_models  # every get_model_config reads it once
    monkeypatch.setattr(models, "user_models", lambda: lookups.append(1) or real())
    out = run(tmp_path, save_model=True)
    assert "skipped" not in out and (Path(out["save_path"]) / "weak_labels").is_dir()
    assert len(lookups) == 1


def test_half_data_runs_train_on_complementary_halves(weak_run):
    results, weak_dir = weak_run
    labelled = []
    for half in (1, 2):
        out = run(results, weak_labels_path=str(weak_dir), method="ilr0.1", half_data=half)
        run_dir = Path(out["save_path"])
        assert f"hd={half}" in run_dir.name and "wlt=weak" in run_dir.name and "wms=tiny-random" in run_dir.name
        assert not (run_dir / "results_summary.json").exists()  # no test evaluation for half-data runs
        labelled.append(set(load_from_disk(str(run_dir / "weak_labels"))["question"]))
    weak_questions = set(load_from_disk(str(weak_dir / "weak_labels"))["question"])
    assert labelled[0].isdisjoint(labelled[1]) and labelled[0] | labelled[1] == weak_questions


def test_weak_labels_path_resolves_by_round(weak_run):
    results, weak_dir = weak_run
    assert label_set_path(weak_dir, "ilr0.1", 0) == (weak_dir, weak_dir / "weak_labels")
    assert label_set_path(weak_dir, "ilr0.1", 3) == (weak_dir, weak_dir / "ilr0.1_2_weak_labels")
    shutil.copytree(weak_dir / "weak_labels", weak_dir / "ilr0.1_0_weak_labels")
    out = run(results, weak_labels_path=str(weak_dir), method="ilr0.1", round_id=1, generate_weak_labels=False)
    config = json.loads((Path(out["save_path"]) / "experiment_config.json").read_text())
    assert config["weak_labels_path"] == str(weak_dir / "ilr0.1_0_weak_labels")
    assert config["weak_label_type"] == "ilr0.1" and config["weak_model"]["model_size"] == "tiny-random"


def test_dpo_round_zero_draws_six_samples(weak_run):
    results, weak_dir = weak_run
    out = run(results, weak_labels_path=str(weak_dir), method="dpo0.10.15", label_temp=0.7, force_eval=False)
    run_dir = Path(out["save_path"])
    assert "dd=1" in run_dir.name
    labels = load_from_disk(str(run_dir / "weak_labels"))
    assert all(len(a) == 6 and len(acc) == 6 for a, acc in zip(labels["answer"], labels["acc"]))
    assert (run_dir / "adapter_config.json").exists()  # DPO keeps its model for the next round


def test_print_save_path_matches_the_run(weak_run, capsys):
    results, weak_dir = weak_run
    printed = run(results, print_save_path=True)
    assert printed == str(weak_dir) and capsys.readouterr().out.strip().splitlines()[-1] == str(weak_dir)


def test_a_run_dir_made_with_other_weights_is_refused_not_reused(weak_run, tmp_path):
    """Run dirs are named by model name: one made by another recipe of tiny-random (another build id)
    must not be taken as done, resumed, or even named to the scripts' "done already" check."""
    from iterative_label_refinement.core.models import MODELS_DICT

    results, weak_dir = weak_run
    # The record names the recipe-named folder the weights were built in, the name the cache gives it.
    build = Path(resolve_model_path("tiny-random")).name
    assert build == f"tiny-random-{MODELS_DICT['tiny-random'].build_id}"
    assert json.loads((weak_dir / "experiment_config.json").read_text())["model_weights"] == build

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    run_dir = copy / weak_dir.relative_to(results)
    config_path = run_dir / "experiment_config.json"
    config = json.loads(config_path.read_text())
    old = "/cache/tiny/tiny-random-00000000"
    # Recorded either way: the field, or (runs from before it) only the tiny build folder loaded.
    records = [dict(config, model_weights="tiny-random-00000000"),
               {k: v for k, v in dict(config, model_loaded_from=old).items() if k != "model_weights"}]  # fmt: skip
    for record in records:
        config_path.write_text(json.dumps(record))
        before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
        for kwargs in (dict(save_model=True), dict(print_save_path=True)):
            with pytest.raises(
                ConfigError, match=f"made with the weights tiny-random-00000000, but the model now loads {build}"
            ):
                run(copy, **kwargs)
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    # A damaged record cannot say which weights made the run: refused too, in one line.
    for damaged in ('{"model_weights": "tiny-ran', "[1, 2]"):
        config_path.write_text(damaged)
        with pytest.raises(ConfigError, match=f"{config_path} is not a run's JSON record"):
            run(copy, print_save_path=True)
    # A hub model's run from before the field records only its hub id: nothing to compare, reused.
    config_path.write_text(json.dumps({k: v for k, v in dict(config, model_loaded_from="org/model").items()
                                       if k != "model_weights"}))  # fmt: skip
    assert run(copy, save_model=True)["skipped"] is True
    # --force_retrain redoes the run with the current weights and records them.
    config_path.write_text(json.dumps(records[0]))
    assert "skipped" not in run(copy, save_model=True, force_retrain=True)
    assert json.loads(config_path.read_text())["model_weights"] == build


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weak_labels_path="/nonexistent/run"), "not a run dir"),
        (dict(half_data=3), "half_data must be 0, 1 or 2"),
        (dict(optim="sgd"), "Unknown optimizer 'sgd'"),
        (dict(lr_schedule="wavy"), "Unknown lr_schedule 'wavy'"),
        (dict(method="dpo0.10.15", round_id=1, weak_labels_path="x"), "needs --dpo_path"),
        (dict(ds_name="nope"), "Unknown dataset 'nope'"),
        (dict(model_size="nope"), "Unknown model 'nope'"),
    ],
)
def test_bad_input_is_rejected_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path / "results", **kwargs)
    assert not (tmp_path / "results").exists()


def test_label_set_missing_columns(weak_run, tmp_path):
    _, weak_dir = weak_run
    bad_dir = tmp_path / "weak"
    bad_dir.mkdir()
    shutil.copy(weak_dir / "experiment_config.json", bad_dir)
    Dataset.from_list([{"question": "1 plus 2", "answer": "#### 3"}]).save_to_disk(str(bad_dir / "weak_labels"))
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['gt_answer'\]"):
        run(tmp_path / "results", weak_labels_path=str(bad_dir), method="ilr0.1")
    assert not (tmp_path / "results").exists()


def test_cli_exit_code_and_help():
    mod = "iterative_label_refinement.experiments.main"
    proc = subprocess.run([sys.executable, "-m", mod, "--half_data=5", "--results_folder=/tmp/x"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "--half_data must be one of 0, 1, 2, got 5" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True,
                          env={"PAGER": "cat", "PATH": "/usr/bin:/bin"})  # fmt: skip
    helptext = proc.stdout + proc.stderr
    import inspect

    for flag in inspect.signature(main_module.main).parameters:
        assert f"--{flag}" in helptext, flag


def test_minibatch_padding_is_masked():
    """A padded minibatch of 4 gives the same per-token loss as the 4 examples one at a time."""
    tok = load_tokenizer("tiny-random")
    model = load_model("tiny-random")
    rows = list(tokenize_dataset(load_dataset("toy_arith", split_sizes={"train": 4})["train"], tok))
    assert len({len(r["input_ids"]) for r in rows}) > 1  # lengths differ, so padding happens

    def token_loss_sum(batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="sum")

    with torch.no_grad():
        together = token_loss_sum(collate(rows, tok.pad_token_id))
        apart = sum(token_loss_sum(collate([r], tok.pad_token_id)) for r in rows)
    assert torch.allclose(together, apart, rtol=1e-5)


def test_minibatch_4_and_1_train_the_same_step(tmp_path):
    tok = load_tokenizer("tiny-random")
    ds = tokenize_dataset(load_dataset("toy_arith", split_sizes={"train": 8})["train"], tok)
    results = {}
    for minibatch in (1, 4):
        torch.manual_seed(0)
        model = add_lora(load_model("tiny-random"), 4)
        cfg = TrainConfig(output_dir=str(tmp_path / str(minibatch)), lr=1e-2, epochs=1, batch_size=8,
                          minibatch_size_per_device=minibatch, warmup_ratio=0)  # fmt: skip
        metrics = train_sft(model, tok, ds, cfg)
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        results[minibatch] = (metrics["train_loss"], weights)
    assert results[1][0] == pytest.approx(results[4][0], rel=1e-4)
    for name, w in results[1][1].items():
        assert torch.allclose(w, results[4][1][name], atol=1e-5), name


def test_batched_generation_equals_one_at_a_time():
    tok = load_tokenizer("tiny-random")
    model = load_model("tiny-random")
    questions = load_dataset("toy_arith", split_sizes={"test": 12})["test"]["question"]
    questions = [q + " plus 1" * (i % 3) for i, q in enumerate(questions)]  # varied lengths -> padding
    batched = generate_answers(model, tok, questions, max_new_tokens=12, batch_size=6)
    single = generate_answers(model, tok, questions, max_new_tokens=12, batch_size=1)
    assert batched.texts == single.texts and batched.token_ids == single.token_ids
    sampled = generate_answers(model, tok, questions[:3], max_new_tokens=8, temperature=1.0, num_samples=3, seed=1)
    again = generate_answers(model, tok, questions[:3], max_new_tokens=8, temperature=1.0, num_samples=3, seed=1)
    assert sampled.texts == again.texts and all(len(t) == 3 for t in sampled.texts)
