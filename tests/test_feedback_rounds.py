"""End to end on tiny models: SFT -> half models -> ilr round 0 -> round-1 SFT, and
SFT with 6 samples -> dpo round 0 -> DPO round 1 from the round-0 adapter; plus bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk
from safetensors.torch import load_file

from iterative_label_refinement.core.datasets import tokenize_dataset
from iterative_label_refinement.core.dpo import REFERENCE, load_dpo_policy, train_dpo
from iterative_label_refinement.core.layout import refined_path
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.refinement import dpo_pairs, preference_rows
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.core.train import TrainConfig, add_lora
from iterative_label_refinement.experiments import dpo, ilr, naive
from iterative_label_refinement.experiments import main as main_module

TINY = dict(ds_name="toy_arith", model_size="tiny-random", n_docs=48, n_test_docs=8, batch_size=8, epochs=1,
            lora_rank=4, minibatch_size_per_device=4)  # fmt: skip


def run(results: Path, **kwargs) -> Path:
    return Path(main_module.main(results_folder=str(results), **{**TINY, **kwargs})["save_path"])


@pytest.fixture(scope="module")
def ilr_world(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    weak = run(results)
    halves = [run(results, weak_labels_path=str(weak), method="ilr0.5", half_data=h) for h in (1, 2)]
    return results, weak, halves


def test_ilr_round_then_retrain_from_base(ilr_world):
    results, weak, (h1, h2) = ilr_world
    planned = ilr.main("toy_arith", str(weak), str(h1), str(h2), round_id=0, max_replace=0.5, use_oracle_feedback=True,
                       print_save_path=True)  # fmt: skip
    assert not Path(planned).exists()
    out = ilr.main("toy_arith", str(weak), str(h1), str(h2), round_id=0, max_replace=0.5, use_oracle_feedback=True)
    assert out == planned
    path = Path(out)
    assert path == refined_path(weak, "orailr0.5", 0) and path.name == "orailr0.5_0_weak_labels"
    refined = load_from_disk(out)
    current = load_from_disk(str(weak / "weak_labels"))
    assert sorted(refined["question"]) == sorted(current["question"])
    assert {"question", "answer", "gt_answer", "score", "acc"} <= set(refined.column_names)
    # oracle: a changed label is always a correct proposal; an agreeing row scores -1
    before = {r["question"]: r for r in current}
    for row in refined:
        if row["answer"] != before[row["question"]]["answer"]:
            assert row["acc"] == 1.0 and row["score"] == 1.0
    assert sum(refined["acc"]) >= sum(current["acc"])
    # rerunning the finished step does nothing
    mtime = (path / "state.json").stat().st_mtime_ns
    ilr.main("toy_arith", str(weak), str(h1), str(h2), round_id=0, max_replace=0.5, use_oracle_feedback=True)
    assert (path / "state.json").stat().st_mtime_ns == mtime
    # the round-1 model trains from the base on the refined labels
    r1 = run(results, weak_labels_path=str(weak), method="orailr0.5", round_id=1)
    assert "ri=1" in r1.name and "wlt=orailr0.5" in r1.name
    assert (r1 / "results_summary.json").exists()


def test_naive_round(ilr_world):
    _, weak, (h1, h2) = ilr_world
    planned = naive.main("toy_arith", str(weak), str(h1), str(h2), round_id=0, max_replace=0.5, print_save_path=True)
    assert not Path(planned).exists()
    out = naive.main("toy_arith", str(weak), str(h1), str(h2), round_id=0, max_replace=0.5, seed=1)
    assert out == planned
    refined, current = load_from_disk(out), load_from_disk(str(weak / "weak_labels"))
    assert Path(out).name == "naive0.5_0_weak_labels" and len(refined) == len(current) == 24


def test_refinement_bad_input(ilr_world, tmp_path):
    results, weak, (h1, h2) = ilr_world
    with pytest.raises(
        ConfigError, match=r"round mismatch: --round_id=1 but --model1_path=.* is round 0, --model2_path="
    ):
        ilr.main("toy_arith", str(weak), str(h1), str(h2), round_id=1, use_oracle_feedback=True)
    with pytest.raises(ConfigError, match="max_replace must be in"):
        ilr.main("toy_arith", str(weak), str(h1), str(h2), max_replace=1.5, use_oracle_feedback=True)
    with pytest.raises(ConfigError, match="subsample must be in"):
        dpo.main("toy_arith", str(weak), str(h1), subsample=0, use_oracle_feedback=True)
    with pytest.raises(ConfigError, match=f"No label set at {tmp_path}/weak_labels"):
        ilr.main("toy_arith", str(tmp_path), str(h1), str(h2), use_oracle_feedback=True)
    not_an_evaluator = tmp_path / "not-an-evaluator"
    not_an_evaluator.mkdir()
    with pytest.raises(ConfigError):
        ilr.main("toy_arith", str(weak), str(h1), str(h2), evaluator_path=str(not_an_evaluator))
    assert not list(weak.glob("ilr0.1_*")) and not list(tmp_path.glob("*_weak_labels"))


@pytest.mark.parametrize(
    "module, flags, name",
    [
        ("ilr", ["--model1_path=h1", "--model2_path=h2", "--max_replace=0.15", "--use_oracle_feedback=True",
                 "--start_with_correct_labels=True", "--round_id=2"], "cororailr0.15_2_weak_labels"),
        ("naive", ["--model1_path=h1", "--model2_path=h2", "--max_replace=0.15"], "naive0.15_0_weak_labels"),
        ("dpo", ["--strong_model_path=s", "--beta=0.1", "--subsample=0.15", "--round_id=1"],
         "dpo0.10.15_1_weak_labels"),
    ],
)  # fmt: skip
def test_refinement_cli_prints_its_save_path_without_reading_anything(module, flags, name, tmp_path):
    """A dry run (scripts name every step before any model exists): the planned label set is the last
    stdout line, exit 0, and nothing is read or written (the model paths do not exist)."""
    import subprocess
    import sys

    weak = tmp_path / "weak-run"
    command = [sys.executable, "-m", f"iterative_label_refinement.experiments.{module}", "--ds_name=toy_arith",
               f"--weak_model_path={weak}", *flags, "--print_save_path"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(weak / name)
    assert list(tmp_path.iterdir()) == []


def test_dpo_rounds_from_previous_adapter(tmp_path):
    results = tmp_path / "results"
    weak = run(results)
    r0 = run(results, weak_labels_path=str(weak), method="oradpo0.10.5", label_temp=1.0, force_eval=False)
    planned = dpo.main("toy_arith", str(weak), str(r0), round_id=0, subsample=0.5, use_oracle_feedback=True,
                       print_save_path=True)  # fmt: skip
    assert not Path(planned).exists()
    out = dpo.main("toy_arith", str(weak), str(r0), round_id=0, subsample=0.5, use_oracle_feedback=True)
    assert out == planned
    prefs = load_from_disk(out)
    assert Path(out).name == "oradpo0.10.5_0_weak_labels"
    assert len(prefs) == int(24 * 3 * 0.5)
    assert {"question", "chosen", "rejected", "gt_answer", "score", "acc"} <= set(prefs.column_names)
    # Round 1 trains on the preferences of a non-oracle method (a random tiny model has no correct
    # samples for the oracle filter to keep): the same pairing code with a length-preferring scorer.
    samples = load_from_disk(str(r0 / "weak_labels"))
    rows = list(samples)
    pairs = dpo_pairs(rows)
    scores = [0.9 if len(rows[r]["answer"][b]) < len(rows[r]["answer"][a]) else 0.1 for r, a, b in pairs]
    rows = preference_rows(rows, pairs, scores, (), 0.5)
    Dataset.from_list(rows).save_to_disk(str(refined_path(weak, "dpo0.10.5", 0)))
    reference_before = load_file(str(r0 / "adapter_model.safetensors"))
    r1 = run(results, weak_labels_path=str(weak), method="dpo0.10.5", round_id=1, dpo_path=str(r0),
             label_temp=1.0, force_eval=False)  # fmt: skip
    assert "ri=1" in r1.name and "o=rmsprop" in r1.name and "dd=1" in r1.name
    assert (r1 / "train_adapter" / "adapter_model.safetensors").exists()
    assert all(len(a) == 6 for a in load_from_disk(str(r1 / "weak_labels"))["answer"])
    reference_after = load_file(str(r0 / "adapter_model.safetensors"))
    assert all(torch.equal(reference_before[k], reference_after[k]) for k in reference_before)
    policy_after = load_file(str(r1 / "train_adapter" / "adapter_model.safetensors"))
    assert any(not torch.equal(reference_before[k], policy_after[k]) for k in reference_before)


def test_dpo_trainer_keeps_reference_frozen_and_margins_rise(tmp_path):
    tok = load_tokenizer("tiny-random")
    torch.manual_seed(0)
    sft = add_lora(load_model("tiny-random"), 4)
    sft.save_pretrained(str(tmp_path / "sft"))
    model = load_dpo_policy("tiny-random", str(tmp_path / "sft"))
    reference = {n: p.detach().clone() for n, p in model.named_parameters() if f".{REFERENCE}." in n}
    assert reference and not any(p.requires_grad for n, p in model.named_parameters() if f".{REFERENCE}." in n)
    rows = [{"question": f"{a} plus {b}", "chosen": f"#### {a + b}", "rejected": f"#### {a + b + 7}"}
            for a, b in [(10, 12), (31, 40), (25, 25), (60, 11), (18, 19), (44, 45), (70, 2), (13, 80)]]  # fmt: skip
    ds = tokenize_dataset(Dataset.from_list(rows), tok, preference=True)
    cfg = TrainConfig(output_dir=str(tmp_path / "dpo"), lr=1e-2, epochs=6, batch_size=4, minibatch_size_per_device=2,
                      optim="rmsprop", warmup_ratio=0)  # fmt: skip
    history = train_dpo(model, tok, ds, cfg, beta=0.1)
    margins = [h["rewards/margins"] for h in history if "rewards/margins" in h]
    assert len(margins) == 12 and sum(margins[-3:]) / 3 > sum(margins[:3]) / 3
    assert all(k in history[0] for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies"))
    for n, p in model.named_parameters():
        if n in reference:
            assert torch.equal(p, reference[n]), n
