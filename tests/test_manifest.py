"""Pipeline manifests: what scripts/lib.sh records of each pipeline run, and nothing in a dry run."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from test_scripts import REPO, run_script, run_with_fake_python

from iterative_label_refinement.experiments import manifest

LIBRARIES = ["torch", "transformers", "peft", "datasets", "accelerate"]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def write(tmp_path: Path, variables: dict[str, str]) -> Path:
    """Run the CLI as lib.sh does: the shell's variables, NUL-separated, on stdin."""
    dump = "".join(f"{k}={v}\0" for k, v in variables.items())
    cmd = [sys.executable, "-m", "iterative_label_refinement.experiments.manifest", f"--script={REPO}/scripts/sft_dpo.sh",
           f"--results_folder={tmp_path}", "--sweep_subfolder=sweep"]  # fmt: skip
    done = subprocess.run(cmd, input=dump.encode(), capture_output=True, check=True)
    return Path(done.stdout.decode().splitlines()[-1])


def test_the_cli_records_the_pipelines_settings_commit_and_versions(tmp_path):
    variables = {"BETA": "0.5", "DPO_FLAGS": "", "LABEL_TEMP": "0.7", "SEED": "3", "SWEEP": "sweep", "ROUNDS": "2",
                 "PATH": "/usr/bin", "ILR_JUDGE_API_KEY": "sk-secret", "PROGRESS_START": "17", "x": "a=b=c"}  # fmt: skip
    path = write(tmp_path, variables)
    assert path.parent == tmp_path / "sweep" / "manifests" and path.name.startswith("sft_dpo-")
    record = json.loads(path.read_text())
    assert record["pipeline"] == "sft_dpo" and record["script"] == str(REPO / "scripts" / "sft_dpo.sh")
    settings = record["settings"]
    # The script's own settings, lib.sh's, and those read after lib.sh (the task's temperatures).
    for name, value in [("BETA", "0.5"), ("DPO_FLAGS", ""), ("LABEL_TEMP", "0.7"), ("SEED", "3"), ("ROUNDS", "2")]:
        assert settings[name] == value, name
    for name in ("SUBSAMPLE", "WEAK_LABEL_TEMP", "EVALUATOR_PATH", "RESULTS_FOLDER", "NUM_BEAMS", "STRONG_FLAGS"):
        assert settings[name] is None, name  # read by the pipeline, unset here: not an empty value
    # Nothing the pipeline does not read: not the environment, not demo.sh's step numbering.
    assert not {"PATH", "ILR_JUDGE_API_KEY", "PROGRESS_START", "x"} & set(settings)
    assert "sk-secret" not in path.read_text()
    assert record["versions"] == {name: metadata.version(name) for name in LIBRARIES}
    assert record["git"] == {
        "commit": git("rev-parse", "HEAD").strip(),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip()),
    }
    again = write(tmp_path, variables)  # another pipeline run: its own file, the first one kept
    assert again != path and path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, again.name])


def test_outside_a_git_checkout_the_commit_is_unknown(tmp_path):
    assert manifest.git_state(tmp_path) == {"commit": None, "dirty": None}


# Each pipeline (the ILR one through a paper wrapper, whose halves run at once as the stand-in python needs),
# and a setting it resolves only after sourcing lib.sh: the task's temperatures.
PIPELINES = {
    "sft_dpo.sh": ("sft_dpo", "LABEL_TEMP", "0.7"),
    "evaluator.sh": ("evaluator", "TEMPERATURE", "0.6"),
    "main-experiments/parallel/run-ilr-gsm8k.sh": ("sft_ilr", "PROPOSAL_TEMP", "0.0"),
}


@pytest.mark.parametrize("script", sorted(PIPELINES))
def test_every_pipeline_records_its_run_and_a_dry_run_records_nothing(tmp_path, monkeypatch, script):
    """Through lib.sh: a real run (python stood in for, except queries and the manifest) writes one
    manifest with the settings the pipeline resolved; the same pipeline's dry run writes no file."""
    pipeline, name, value = PIPELINES[script]
    monkeypatch.setenv("ILR_JUDGE_API_KEY", "sk-secret")  # in the pipeline's environment, never in its record
    proc, _ = run_with_fake_python(script, tmp_path, wait_s=120)
    assert proc.returncode == 0, proc.stderr
    (path,) = (tmp_path / "results" / "default" / "manifests").iterdir()
    assert f"manifest: {path}" in proc.stderr
    record = json.loads(path.read_text())
    assert record["pipeline"] == pipeline and "sk-secret" not in path.read_text()
    settings = record["settings"]
    assert (settings[name], settings["DS_NAME"], settings["SEED"], settings["DRY_RUN"]) == (value, "gsm8k", "0", "0")
    dry = tmp_path / "dry"
    dry.mkdir()
    run_script(script, dry, ROUNDS="1")
    assert not list(dry.rglob("*"))
