"""Dry runs of the paper's round scripts: the right commands, in the right order, with the paper's values."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dry_run(script: str, tmp_path: Path, **env: str) -> list[list[str]]:
    """The `python -m ...` commands a script would run, as argument lists."""
    full_env = {**os.environ, "DRY_RUN": "1", "RESULTS_FOLDER": str(tmp_path), "PYTHON": sys.executable,
                "EVALUATOR_PATH": str(tmp_path / "evaluator"), **env}  # fmt: skip
    proc = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, env=full_env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ python -m ")]


def flags(cmd: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)


def module(cmd: list[str]) -> str:
    return cmd[2].rsplit(".", 1)[-1]


def test_gsm8k_ilr_rounds(tmp_path):
    cmds = dry_run("main-experiments/run-ilr-gsm8k.sh", tmp_path)
    weak, sft0, rest = cmds[0], cmds[1], cmds[2:]
    assert module(weak) == "main" and flags(weak)["model_size"] == "google/gemma-2b"
    assert "weak_labels_path" not in flags(weak)
    weak_dir = flags(sft0)["weak_labels_path"]
    assert flags(sft0)["round_id"] == "0" and flags(sft0)["model_size"] == "mistralai/Mistral-7B-v0.1"
    assert len(rest) == 6 * 4
    for r in range(6):
        h1, h2, refine, full = rest[4 * r : 4 * r + 4]
        for cmd, half in ((h1, "1"), (h2, "2")):
            f = flags(cmd)
            assert module(cmd) == "main" and f["half_data"] == half and f["round_id"] == str(r)
            assert f["weak_labels_path"] == weak_dir and f["method"] == "ilr0.15"
            assert f["model_size"] == "mistralai/Mistral-7B-v0.1"
        f = flags(refine)
        assert module(refine) == "ilr" and f["round_id"] == str(r) and f["max_replace"] == "0.15"
        assert f["weak_model_path"] == weak_dir and f["evaluator_path"] == str(tmp_path / "evaluator")
        assert "hd=1" in f["model1_path"] and f"ri={r}-" in f["model1_path"] and "hd=2" in f["model2_path"]
        f = flags(full)
        assert module(full) == "main" and f["round_id"] == str(r + 1) and "half_data" not in f
        assert f["weak_labels_path"] == weak_dir and f["method"] == "ilr0.15"  # -> ilr0.15_<r>_weak_labels


def test_gsm8k_dpo_rounds(tmp_path):
    cmds = dry_run("main-experiments/run-dpo-gsm8k.sh", tmp_path)
    sft0, rest = cmds[1], cmds[2:]
    assert flags(sft0)["method"] == "dpo0.10.15" and flags(sft0)["label_temp"] == "0.7"
    assert flags(sft0)["round_id"] == "0" and flags(sft0)["dpo_beta"] == "0.1"
    assert len(rest) == 12
    prev = None
    for r in range(1, 7):
        dpo, train = rest[2 * (r - 1)], rest[2 * (r - 1) + 1]
        f = flags(dpo)
        assert module(dpo) == "dpo" and f["round_id"] == str(r - 1)
        assert (f["subsample"], f["beta"]) == ("0.15", "0.1")
        assert f"ri={r - 1}-" in f["strong_model_path"]
        if prev:
            assert f["strong_model_path"] == prev
        g = flags(train)
        assert module(train) == "main" and g["round_id"] == str(r) and g["method"] == "dpo0.10.15"
        expected_adapter = f["strong_model_path"] + ("/train_adapter" if r >= 2 else "")
        assert g["dpo_path"] == expected_adapter and g["label_temp"] == "0.7"
        prev = None  # the next dpo step reads this round's run dir, checked via ri= above


@pytest.mark.parametrize(
    "script, expect",
    [
        ("supervision-quality/run-orailr-gsm8k.sh", {"method": "orailr0.15"}),
        ("supervision-quality/run-cororailr-gsm8k.sh", {"method": "corora" + "ilr0.15"}),
        ("main-experiments/run-naive-gsm8k.sh", {"method": "naive0.15"}),
        ("supervision-quality/run-oradpo-gsm8k.sh", {"method": "oradpo0.10.15"}),
        ("supervision-quality/run-cororadpo-gsm8k.sh", {"method": "corora" + "dpo0.10.15"}),
        ("main-experiments/run-ilr-saferpaca.sh", {"method": "ilr0.15", "label_temp": "1.0", "epochs": "4"}),
        ("main-experiments/run-dpo-saferpaca.sh", {"method": "dpo0.10.15", "label_temp": "1.0", "epochs": "4"}),
        ("main-experiments/run-ilr-bird.sh", {"model_size": "meta-llama/Meta-Llama-3-70B"}),
        (
            "main-experiments/run-ilr-gsm8k-70b.sh",
            {"model_size": "meta-llama/Meta-Llama-3-70B", "weak_model_size": "mistralai/Mistral-7B-v0.1"},
        ),
    ],
)
def test_settings(tmp_path, script, expect):
    cmds = dry_run(script, tmp_path, ROUNDS="1")
    strong = [flags(c) for c in cmds if module(c) == "main" and "half_data" in flags(c)]
    assert strong or "dpo" in script
    target = strong[0] if strong else flags([c for c in cmds if module(c) == "main"][-1])
    for key, value in expect.items():
        assert target[key] == value, (key, target)
    refiners = [c for c in cmds if module(c) in ("ilr", "naive", "dpo")]
    if "ora" in script:
        assert all(flags(c).get("use_oracle_feedback") == "True" for c in refiners)
    if "corora" in script:
        assert all(flags(c).get("start_with_correct_labels") == "True" for c in refiners)


def test_evaluator_scripts(tmp_path):
    cmds = dry_run("evaluator-training/train-evaluator-saferpaca.sh", tmp_path)
    gt = [flags(c) for c in cmds if module(c) == "main"]
    assert [g["saferpaca_mode"] for g in gt] == ["1", "2"] and all(g["epochs"] == "4" for g in gt)
    assert all(g["save_frequency"] == "0.1" and g["generate_weak_labels"] == "False" for g in gt)
    assert [module(c) for c in cmds[2:]] == ["generate_evaluator_data", "train_evaluator"]
    cmds = dry_run("evaluator-training/train-evaluator-gsm8k-7b.sh", tmp_path)
    assert flags(cmds[0])["model_size"] == "mistralai/Mistral-7B-v0.1"


def test_parallel_flavour_runs_both_halves(tmp_path):
    cmds = dry_run("main-experiments/parallel/run-ilr-gsm8k.sh", tmp_path, ROUNDS="1")
    assert sorted(flags(c).get("half_data") for c in cmds if module(c) == "main" and "half_data" in flags(c)) == [
        "1",
        "2",
    ]


def test_scripts_use_strict_mode_and_no_spelled_run_dirs():
    for path in (REPO / "scripts").rglob("*.sh"):
        text = path.read_text()
        if path.name != "lib.sh":
            assert "set -euo pipefail" in text, path
        assert not re.search(r"bs=\d+-", text), f"{path} spells a run-dir name"


def test_demo_with_another_evaluator_gets_its_own_results_folder(tmp_path):
    """Refined label sets are named by method only: a second evaluator must not reuse the first's."""
    cmds = dry_run("demo.sh", tmp_path, RESULTS_FOLDER="", DEMO="small", EVALUATOR_MODEL="tiny-llama-strong")
    evaluator_steps = [flags(c) for c in cmds if module(c) in ("generate_evaluator_data", "train_evaluator")]
    assert [f["model_size"] for f in evaluator_steps] == ["tiny-llama-strong"] * 2
    folders = {f["results_folder"] for f in map(flags, cmds) if "results_folder" in f}
    assert folders == {"demo_results/small-evaluator-tiny-llama-strong"}


def test_demo_refuses_a_model_it_cannot_build_offline(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "EVALUATOR_MODEL": "google/gemma-2b"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "google/gemma-2b" in proc.stderr and "tiny-llama-strong" in proc.stderr
