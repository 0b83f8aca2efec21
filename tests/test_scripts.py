"""Dry runs of the paper's round scripts: the right commands, in the right order, with the paper's values."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """A dry run of a script (env adds to or overrides the settings); it must succeed."""
    full_env = {**os.environ, "DRY_RUN": "1", "RESULTS_FOLDER": str(tmp_path), "PYTHON": sys.executable,
                "EVALUATOR_PATH": str(tmp_path / "evaluator"), **env}  # fmt: skip
    proc = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, env=full_env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ python -m ")]


def dry_run(script: str, tmp_path: Path, **env: str) -> list[list[str]]:
    """The `python -m ...` commands a script would run, as argument lists."""
    return commands(run_script(script, tmp_path, **env).stdout)


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
        # only the last round skips its samples: no dpo step reads them
        assert g.get("generate_weak_labels") == ("False" if r == 6 else None)
        prev = None  # the next dpo step reads this round's run dir, checked via ri= above


GEMMA, MISTRAL, LLAMA70 = "google/gemma-2b", "mistralai/Mistral-7B-v0.1", "meta-llama/Meta-Llama-3-70B"


def evaluator_setting(ds: str, model: str = GEMMA, gt_epochs: str = "2") -> dict:
    return {"pipeline": "evaluator", "ds": ds, "model": model, "gt_epochs": gt_epochs}


def training_setting(refiner: str, ds: str = "gsm8k", **overrides) -> dict:
    """The paper's GSM8K settings of a refiner (ilr, naive or dpo), with a variant's differences."""
    dpo = refiner == "dpo"
    base = {"pipeline": refiner, "ds": ds, "weak": GEMMA, "strong": MISTRAL, "epochs": "2", "weak_epochs": "2",
            "label_temp": "0.7" if dpo else "0.0", "method": "dpo0.10.15" if dpo else f"{refiner}0.15",
            "oracle": False, "correct": False}  # fmt: skip
    return {**base, **overrides}


SAFERPACA = {"ds": "saferpaca", "epochs": "4", "weak_epochs": "4", "label_temp": "1.0", "weak_label_temp": "1.0"}
GSM8K_70B = {"weak": MISTRAL, "strong": LLAMA70, "evaluator": MISTRAL}
BIRD = {"ds": "bird", "weak": GEMMA, "strong": LLAMA70}

# Every script the paper's README names (and the extra variants, named in the same style), with the
# settings that tell it apart.
PAPER_SCRIPTS = {
    "evaluator-training/train-evaluator-gsm8k.sh": evaluator_setting("gsm8k"),
    "evaluator-training/train-evaluator-gsm8k-7b.sh": evaluator_setting("gsm8k", MISTRAL),
    "evaluator-training/train-evaluator-bird.sh": evaluator_setting("bird"),
    "evaluator-training/train-evaluator-saferpaca.sh": evaluator_setting("saferpaca", gt_epochs="4"),
    "main-experiments/run-ilr-gsm8k.sh": training_setting("ilr", evaluator=GEMMA),
    "main-experiments/run-ilr-gsm8k-70b.sh": training_setting("ilr", **GSM8K_70B),
    "main-experiments/run-ilr-bird.sh": training_setting("ilr", **BIRD),
    "main-experiments/run-ilr-saferpaca.sh": training_setting("ilr", **SAFERPACA),
    "main-experiments/run-naive-gsm8k.sh": training_setting("naive"),
    "main-experiments/run-naive-bird.sh": training_setting("naive", **BIRD),
    "main-experiments/run-naive-saferpaca.sh": training_setting("naive", **SAFERPACA),
    "main-experiments/run-dpo-gsm8k.sh": training_setting("dpo", evaluator=GEMMA),
    "main-experiments/run-dpo-gsm8k-70b.sh": training_setting("dpo", **GSM8K_70B),
    "main-experiments/run-dpo-bird.sh": training_setting("dpo", **BIRD),
    "main-experiments/run-dpo-saferpaca.sh": training_setting("dpo", **SAFERPACA),
    "supervision-quality/run-orailr-gsm8k.sh": training_setting("ilr", oracle=True, method="orailr0.15"),
    "supervision-quality/run-cororailr-gsm8k.sh": training_setting(
        "ilr", oracle=True, correct=True, method="cororailr0.15"
    ),
    "supervision-quality/run-oradpo-gsm8k.sh": training_setting("dpo", oracle=True, method="oradpo0.10.15"),
    "supervision-quality/run-cororadpo-gsm8k.sh": training_setting(
        "dpo", oracle=True, correct=True, method="cororadpo0.10.15"
    ),
    "supervision-quality/run-orailr-bird.sh": training_setting("ilr", oracle=True, method="orailr0.15", **BIRD),
    "supervision-quality/run-oradpo-bird.sh": training_setting("dpo", oracle=True, method="oradpo0.10.15", **BIRD),
}
# The parallel flavours: the same settings as their sequential twin, the two half-data jobs at once.
PARALLEL_SCRIPTS = {
    "main-experiments/parallel/run-ilr-gsm8k.sh": "main-experiments/run-ilr-gsm8k.sh",
    "main-experiments/parallel/run-ilr-saferpaca.sh": "main-experiments/run-ilr-saferpaca.sh",
    "main-experiments/parallel/run-naive-gsm8k.sh": "main-experiments/run-naive-gsm8k.sh",
    "supervision-quality/parallel/run-orailr-gsm8k.sh": "supervision-quality/run-orailr-gsm8k.sh",
    "supervision-quality/parallel/run-cororailr-gsm8k.sh": "supervision-quality/run-cororailr-gsm8k.sh",
}


def check_setting(cmds: list[list[str]], e: dict) -> None:
    """The commands are those of the pipeline `e` names, with its settings."""
    mods = [module(c) for c in cmds]
    mains = [flags(c) for c in cmds if module(c) == "main"]
    assert all(m["ds_name"] == e["ds"] for m in mains)
    if e["pipeline"] == "evaluator":
        modes = ["1", "2"] if e["ds"] == "saferpaca" else [None]
        assert mods == ["main"] * len(modes) + ["generate_evaluator_data", "train_evaluator"]
        assert [m.get("mode") for m in mains] == modes
        for m in mains:
            assert (m["model_size"], m["epochs"], m["save_frequency"]) == (e["model"], e["gt_epochs"], "0.1")
            assert m["generate_weak_labels"] == "False" and "weak_labels_path" not in m
        data, evaluator = flags(cmds[-2]), flags(cmds[-1])
        assert data["ds_name"] == e["ds"] and data["model_size"] == evaluator["model_size"] == e["model"]
        return
    assert set(mods) == {"main", e["pipeline"]}, mods
    weak, strong = mains[0], mains[1:]
    assert "weak_labels_path" not in weak and (weak["model_size"], weak["epochs"]) == (e["weak"], e["weak_epochs"])
    assert weak.get("label_temp", "0.0") == e.get("weak_label_temp", "0.0")  # the weak labels' temperature
    for s in strong:
        assert (s["model_size"], s["weak_model_size"], s["epochs"]) == (e["strong"], e["weak"], e["epochs"])
        assert s["method"] == e["method"]
    if e["pipeline"] == "dpo":
        assert all(s["label_temp"] == e["label_temp"] and s["dpo_beta"] == "0.1" for s in strong)
    else:
        halves = [s for s in strong if "half_data" in s]
        assert sorted(s["half_data"] for s in halves) == ["1", "2"]
        assert all(s["label_temp"] == e["label_temp"] for s in halves)
    for f in (flags(c) for c in cmds if module(c) != "main"):
        assert f["ds_name"] == e["ds"]
        if e["pipeline"] == "dpo":
            assert (f["beta"], f["subsample"]) == ("0.1", "0.15")
        else:
            assert f["max_replace"] == "0.15"
        if e["pipeline"] == "naive":  # no feedback at all
            assert "use_oracle_feedback" not in f and "evaluator_path" not in f
        elif e["oracle"]:
            assert f["use_oracle_feedback"] == "True" and "evaluator_path" not in f
        else:
            assert "use_oracle_feedback" not in f and f["evaluator_path"]
            if "evaluator" in e:  # the evaluator trained on that base (its path names the model)
                assert e["evaluator"].split("/")[-1] in f["evaluator_path"]
        assert f.get("start_with_correct_labels") == ("True" if e["correct"] else None)


@pytest.mark.parametrize("script", sorted(PAPER_SCRIPTS))
def test_paper_script_runs_its_pipeline_with_the_papers_settings(tmp_path, script):
    expect = PAPER_SCRIPTS[script]
    # with an evaluator model to check, the evaluator's path comes from that model
    env = {"EVALUATOR_PATH": ""} if "evaluator" in expect else {}
    proc = run_script(script, tmp_path, ROUNDS="1", **env)
    cmds = commands(proc.stdout)
    check_setting(cmds, expect)
    check_progress(proc, len(cmds))  # in a pipeline every command is a train/refine step


def test_a_wrong_wrapper_fails_the_settings_check(tmp_path):
    """The check tells the variants apart: the ora wrapper's commands are not those of plain ILR."""
    cmds = dry_run("supervision-quality/run-orailr-gsm8k.sh", tmp_path, ROUNDS="1")
    with pytest.raises(AssertionError):
        check_setting(cmds, PAPER_SCRIPTS["main-experiments/run-ilr-gsm8k.sh"])


def test_paper_scripts_are_thin_executable_wrappers_in_the_paper_layout():
    scripts = REPO / "scripts"
    for name in [*PAPER_SCRIPTS, *PARALLEL_SCRIPTS]:
        path = scripts / name
        assert path.is_file() and os.access(path, os.X_OK), name
        mode = subprocess.run(["git", "ls-files", "-s", str(path)], capture_output=True, text=True, cwd=REPO)
        assert mode.stdout.startswith("100755 "), f"{name} is not committed executable: {mode.stdout!r}"
        text = path.read_text()
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert text.startswith("#!/usr/bin/env bash\n") and lines[-1].startswith("exec bash "), name
        assert len(lines) <= 12 and "ROUNDS" not in text, f"{name}: a wrapper only sets the paper's values"
        for line in lines[1:-1]:  # every setting can be overridden from the environment
            assert re.fullmatch(r"export (\w+)=\$\{\1:-[^}]+\}", line), f"{name}: {line}"
    # one place per setting: the per-dataset folders are gone
    assert not any((scripts / old).exists() for old in ("gsm8k", "bird", "saferpaca"))
    layout = {str(p.relative_to(scripts)) for p in scripts.rglob("*.sh") if p.parent != scripts}
    assert layout == set(PAPER_SCRIPTS) | set(PARALLEL_SCRIPTS)


# Stands in for python outside dry runs: asking a CLI where it writes, a task's fact, the project
# (experiments.query), the memory plan, or writing the pipeline's manifest goes to the real python; a half-data run logs itself and waits for its twin
# to start, so it fails unless the two run at once.
FAKE_PYTHON = """#!/usr/bin/env bash
line="+ python$(printf ' %q' "$@")"
for a in "$@"; do
  case "$a" in
    --print_save_path | --fact=* | *.experiments.query | *.experiments.manifest | *.experiments.plan) exec "$REAL_PYTHON" "$@" ;;
  esac
done
echo "$line" >> "$CALLS"
half=
for a in "$@"; do case "$a" in --half_data=*) half=${a#--half_data=} ;; esac; done
[ -n "$half" ] || exit 0
touch "$CALLS.started$half"
for _ in $(seq "$((WAIT_S * 10))"); do
  [ -e "$CALLS.started$((3 - half))" ] && exit 0
  sleep 0.1
done
echo "half $half waited $WAIT_S s for its twin" >&2
exit 1
"""


def run_with_fake_python(script: str, tmp_path: Path, wait_s: int) -> tuple[subprocess.CompletedProcess, Path]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PYTHON": str(fake), "REAL_PYTHON": sys.executable, "CALLS": str(calls),
           "WAIT_S": str(wait_s), "RESULTS_FOLDER": str(tmp_path / "results"), "ROUNDS": "1",
           "EVALUATOR_PATH": ""}  # fmt: skip
    env.pop("DRY_RUN", None)
    proc = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    return proc, calls


@pytest.mark.parametrize("script", sorted(PARALLEL_SCRIPTS))
def test_parallel_scripts_start_both_halves_at_once_with_their_twins_settings(tmp_path, script):
    proc, calls = run_with_fake_python(script, tmp_path, wait_s=120)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(calls.read_text())
    check_setting(cmds, PAPER_SCRIPTS[PARALLEL_SCRIPTS[script]])
    check_progress(proc, len(cmds))  # the half runs are numbered in background jobs


def test_sequential_halves_fail_the_at_once_check(tmp_path):
    proc, _ = run_with_fake_python("main-experiments/run-ilr-gsm8k.sh", tmp_path, wait_s=2)
    assert proc.returncode != 0 and "waited 2 s for its twin" in proc.stderr


PROGRESS = re.compile(
    r"\[\d\d:\d\d:\d\d\] step (\d+)/(\d+) \(\+(\d+) s(?:, ETA in (\d+) s)?\) (train|refine|done already): \S+"
)


def check_progress(proc: subprocess.CompletedProcess, steps: int) -> None:
    """One progress line per step, numbered 1..TOTAL where TOTAL is the number of steps run."""
    found = [PROGRESS.fullmatch(line) for line in proc.stderr.splitlines() if " step " in line]
    assert found and all(found), proc.stderr
    numbers = sorted(int(m[1]) for m in found)
    assert numbers == list(range(1, steps + 1)), numbers
    assert {int(m[2]) for m in found} == {steps}
    assert all(int(m[3]) >= 0 for m in found)


def test_progress_eta_is_the_mean_time_of_the_finished_steps_times_those_left():
    """Step 5 of 10, 4 steps finished in E s: ETA = E / 4 x 6 (integer seconds); the first step has none."""
    script = (f". {REPO}/scripts/lib.sh; PROGRESS_START=$(($(date +%s) - 100)); set_total 10; STEP=4;"
              " progress train: a; STEP=0; progress train: b")  # fmt: skip
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={**os.environ, "PROGRESS_TOTAL": ""}
    )
    lines = proc.stderr.splitlines()
    fifth, first = PROGRESS.fullmatch(lines[0]), PROGRESS.fullmatch(lines[1])
    assert fifth and first, proc.stderr
    elapsed = int(fifth[3])
    assert fifth.group(1, 2) == ("5", "10") and 100 <= elapsed <= 102 and int(fifth[4]) == elapsed * 6 // 4, lines[0]
    assert first[1] == "1" and first[4] is None, lines[1]


def test_demo_runs_every_seed_then_one_report(tmp_path):
    proc = run_script("demo.sh", tmp_path, DEMO="quick", SEEDS="0,3", EVALUATOR_PATH="")
    cmds = commands(proc.stdout)
    assert [module(c) for c in cmds[:2]] == ["build_models"] * 2 and module(cmds[-1]) == "report"
    steps = cmds[2:-1]
    check_progress(proc, len(steps))
    for seed in ("0", "3"):
        runs = [module(c) for c in steps if flags(c).get("seed") == seed]
        # evaluator, SFT+ILR, naive ILR and SFT+DPO (quick: one round each)
        for name, count in [("generate_evaluator_data", 1), ("train_evaluator", 1), ("ilr", 1), ("naive", 1),
                            ("dpo", 1)]:  # fmt: skip
            assert runs.count(name) == count, (seed, runs)
    assert {flags(c)["seed"] for c in steps} == {"0", "3"}
    assert flags(cmds[-1])["results_folder"] == str(tmp_path)


def test_demo_refuses_bad_seeds(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "SEEDS": "0,x"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "SEEDS" in proc.stderr and "0,x" in proc.stderr


def test_scripts_use_strict_mode_and_no_spelled_run_dirs():
    for path in (REPO / "scripts").rglob("*.sh"):
        text = path.read_text()
        if path.name != "lib.sh":
            assert "set -euo pipefail" in text, path
        assert not re.search(r"bs=\d+-", text), f"{path} spells a run-dir name"
        assert not re.search(r"SPEC|DESIGN|\.\./shared", text), f"{path} cites a document outside the repository"
        code = "\n".join(line.split("#")[0] for line in text.splitlines())
        # method names and label-set paths come from Python (experiments.query, the CLIs' --print_save_path)
        assert not re.search(r"(ilr|naive|dpo)\$|\}_weak_labels", code), path


def test_demo_with_another_evaluator_gets_its_own_results_folder(tmp_path):
    """Refined label sets are named by method only: a second evaluator must not reuse the first's."""
    cmds = dry_run("demo.sh", tmp_path, RESULTS_FOLDER="", DEMO="small", EVALUATOR_MODEL="tiny-llama-weak")
    evaluator_steps = [flags(c) for c in cmds if module(c) in ("generate_evaluator_data", "train_evaluator")]
    assert [f["model_size"] for f in evaluator_steps] == ["tiny-llama-weak"] * 2
    folders = {f["results_folder"] for f in map(flags, cmds) if "results_folder" in f}
    assert folders == {"demo_results/small-evaluator-tiny-llama-weak"}
    default = dry_run("demo.sh", tmp_path, RESULTS_FOLDER="", DEMO="small")
    evaluator_steps = [flags(c) for c in default if module(c) in ("generate_evaluator_data", "train_evaluator")]
    assert [f["model_size"] for f in evaluator_steps] == ["tiny-llama-strong"] * 2
    assert {f["results_folder"] for f in map(flags, default) if "results_folder" in f} == {"demo_results/small"}


def test_demo_refuses_a_results_folder_made_with_other_bases(tmp_path):
    """Run dirs are named by model name only: finished steps of other weights must not be reused."""
    from iterative_label_refinement.core.models import get_model_config

    env = {**os.environ, "DEMO": "quick", "PYTHON": sys.executable}
    other = tmp_path / "other"
    other.mkdir()
    (other / "bases.txt").write_text("tiny-random-00000000 tiny-random-00000000\n")
    unknown = tmp_path / "unknown"
    (unknown / "toy").mkdir(parents=True)
    now = f"tiny-random-{get_model_config('tiny-random').build_id}"
    for folder, expected in [(other, f"other tiny bases (tiny-random-00000000 tiny-random-00000000, now {now} {now})"),
                             (unknown, "without a record of their tiny bases")]:  # fmt: skip
        before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
        proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True,
                              env={**env, "RESULTS_FOLDER": str(folder)}, timeout=600)  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(f"{folder} holds results ") and expected in proc.stderr
        assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # nothing written
        assert "train:" not in proc.stdout


def test_a_pipeline_run_directly_refuses_a_run_dir_made_with_other_weights(tmp_path):
    """Not only demo.sh: a round script's "done already" check must not take a finished run of
    another recipe of the same tiny model as its own."""
    env = dict(DS_NAME="toy_arith", WEAK_MODEL="tiny-random", STRONG_MODEL="tiny-random", N_DOCS="48",
               N_TEST_DOCS="8", ROUNDS="1")  # fmt: skip
    first = dry_run("sft_ilr.sh", tmp_path, **env)[0]  # the weak supervisor's ground-truth run
    assert module(first) == "main"
    run_dir = Path(subprocess.run([sys.executable, "-m", *first[2:], "--print_save_path"], capture_output=True,
                                  text=True, check=True).stdout.splitlines()[-1])  # fmt: skip
    (run_dir / "weak_labels").mkdir(parents=True)  # its outputs all there: done, were it these weights
    (run_dir / "results_summary.json").write_text("{}")
    (run_dir / "experiment_config.json").write_text(json.dumps({"model_weights": "tiny-random-00000000"}))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    full_env = {**os.environ, "RESULTS_FOLDER": str(tmp_path), "PYTHON": sys.executable, **env}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "sft_ilr.sh")], capture_output=True, text=True,
                          env=full_env, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {run_dir} was made with the weights tiny-random-00000000, but"), line
    assert "done already" not in proc.stderr and "train:" not in proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_demo_refuses_a_model_it_cannot_build_offline(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "EVALUATOR_MODEL": "google/gemma-2b"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "google/gemma-2b" in proc.stderr and "tiny-llama-strong" in proc.stderr


def names(requirements: str) -> set[str]:
    """The package names a requirements file pins (not its -r includes or comments)."""
    lines = (REPO / requirements).read_text().splitlines()
    return {re.split(r"[=<>\[ ]", line)[0].lower().replace("_", "-") for line in lines if line[:1].isalpha()}


def test_install_files_hold_what_the_readme_steps_need():
    """`pip install -r requirements.txt`, `pip install -e .`, `cp .env.example .env` (then `make test`)."""
    runtime = names("requirements.txt")
    assert runtime and not runtime & {"pytest", "ruff"}
    dev = (REPO / "requirements-dev.txt").read_text().splitlines()
    tools = names("requirements-dev.txt")  # the tests' and linter's tools only, never a runtime package
    assert "-r requirements.txt" in dev and tools >= {"pytest", "ruff"} and not tools & runtime
    assert "pip install -q -r requirements-dev.txt" in (REPO / "Makefile").read_text()
    setup_py = (REPO / "setup.py").read_text()
    for name in runtime:  # setup.py asks for every runtime requirement
        assert re.search(rf'"{name.replace("-", "[-_]")}[>=<"]', setup_py, re.IGNORECASE), name
    # .env.example documents every ILR_* setting the code reads; the ones it sets have values
    env_example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^(?:# )?(ILR_\w+|PYTHON)=", env_example, re.MULTILINE))
    sources = [*(REPO / "iterative_label_refinement").rglob("*.py"), REPO / "tests" / "conftest.py"]
    read = {v for path in sources for v in re.findall(r"[\"'](ILR_[A-Z0-9_]+)[\"']", path.read_text())}
    assert read and read <= documented, read - documented
    assert all(value for value in re.findall(r"^ILR_\w+=(.*)$", env_example, re.MULTILINE))
    shell = subprocess.run(["bash", "-c", "set -a; . ./.env.example; echo $ILR_SAVE_PATH"], capture_output=True,
                           text=True, cwd=REPO)  # fmt: skip
    assert shell.returncode == 0 and shell.stdout.strip() == "results"


def test_license_and_citation():
    import yaml

    assert (REPO / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 The iterative_label_refinement")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    paper = cff["preferred-citation"]
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and paper["type"] == "conference-paper"
    assert (
        paper["title"] == "Iterative Label Refinement Matters More than Preference Optimization under Weak Supervision"
    )
    assert [a["family-names"] for a in paper["authors"]] == ["Ye", "Laidlaw", "Steinhardt"]
    assert paper["year"] == 2025 and "ICLR" in paper["conference"]["name"] and "2501.07886" in paper["url"]


@pytest.mark.parametrize(("script", "env", "message"), [
    ("sft_ilr.sh", {"REFINER": "bogus"}, "error: Unknown method kind 'bogus'. Valid: ['ilr', 'naive', 'dpo'"),
    ("sft_ilr.sh", {"REFINER": "dpo"}, "REFINER must not be dpo: SFT+DPO is scripts/sft_dpo.sh"),
    ("sft_dpo.sh", {"BETA": "-1"}, "error: --beta must be a finite number > 0, got -1"),
    ("sft_dpo.sh", {"DS_NAME": "gsm9k"}, "error: Unknown dataset 'gsm9k'. Valid: ['gsm8k', 'bird', 'saferpaca', 'toy_arith']"),
    ("sft_dpo.sh", {"EVALUATOR": "gpt"}, "EVALUATOR must be trained or judge, got 'gpt'"),
    ("sft_ilr.sh", {"EVALUATOR": "gpt"}, "EVALUATOR must be trained or judge, got 'gpt'"),
])  # fmt: skip
def test_a_pipeline_stops_at_the_first_refusal_with_its_line(tmp_path, script, env, message):
    full_env = {**os.environ, "DRY_RUN": "1", "RESULTS_FOLDER": str(tmp_path), "PYTHON": sys.executable,
                "DS_NAME": "toy_arith", **env}  # fmt: skip
    proc = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, env=full_env,
                          timeout=120)  # fmt: skip
    # the paper's kinds lead the list of valid kinds; a kind a researcher adds may follow them
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and (last == message or message.endswith("'dpo'") and last.startswith(message)), last
    assert not any(module(c) in ("ilr", "naive", "dpo", "refine") for c in commands(proc.stdout))


def test_full_demo_also_runs_both_methods_with_oracle_comparisons(tmp_path):
    proc = run_script("demo.sh", tmp_path, DEMO="full", EVALUATOR_PATH="")
    steps = commands(proc.stdout)[2:-1]
    check_progress(proc, len(steps))
    refinements = [(module(c), flags(c).get("use_oracle_feedback", "False")) for c in steps]
    # three rounds each: ILR, naive, DPO with the evaluator; ILR and DPO with the oracle
    for name, oracle, count in [("ilr", "False", 3), ("naive", "False", 3), ("dpo", "False", 3), ("ilr", "True", 3),
                                ("dpo", "True", 3)]:  # fmt: skip
        assert refinements.count((name, oracle)) == count, (name, oracle, refinements)
    methods = {flags(c).get("method") for c in steps if module(c) == "main"}
    assert {"ilr0.3", "naive0.3", "orailr0.3", "dpo0.50.15", "oradpo0.50.15"} <= methods


def test_demo_runs_only_the_pipelines_asked_and_refuses_others(tmp_path):
    proc = run_script("demo.sh", tmp_path, DEMO="quick", PIPELINES="dpo", EVALUATOR_PATH="")
    steps = commands(proc.stdout)[2:-1]
    check_progress(proc, len(steps))
    assert {module(c) for c in steps} == {"main", "generate_evaluator_data", "train_evaluator", "dpo"}
    env = {**os.environ, "DRY_RUN": "1", "PIPELINES": "ilr,orailrx"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True, env=env)
    # one line naming the value and the valid names: the paper's pipelines and the declared kinds
    line = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in line and line.startswith("error: PIPELINES must be"), line
    assert line.endswith("got 'ilr,orailrx'") and "['ilr', 'naive', 'dpo'" in line and "orailr,oradpo" in line
    assert not commands(proc.stdout)


def _temps(script: str, tmp_path: Path, **env: str) -> dict[str, set[str]]:
    """The --label_temp of each kind of main run a pipeline's dry run prints: weak run, halves, rounds."""
    temps: dict[str, set[str]] = {"weak": set(), "half": set(), "round": set()}
    for cmd in dry_run(script, tmp_path, ROUNDS="1", **env):
        if module(cmd) == "main":
            f = flags(cmd)
            kind = "weak" if "weak_labels_path" not in f else "half" if "half_data" in f else "round"
            temps[kind].add(f.get("label_temp", "unset"))
    return temps


@pytest.mark.parametrize("name", ["gsm8k", "bird", "saferpaca", "toy_arith"])
def test_the_pipelines_sample_at_the_temperatures_on_the_task_entry(name, tmp_path):
    """The scripts spell no temperature: each comes from the entry (the paper's values are pinned
    per script above), and the environment still wins."""
    from iterative_label_refinement.core.datasets import get_dataset_config

    entry = get_dataset_config(name)
    ilr = _temps("sft_ilr.sh", tmp_path / "ilr", DS_NAME=name)
    assert ilr["weak"] == {str(entry.weak_label_temp)} and ilr["half"] == {str(entry.proposal_temp)}
    dpo = _temps("sft_dpo.sh", tmp_path / "dpo", DS_NAME=name)
    assert dpo["weak"] == {str(entry.weak_label_temp)} and dpo["round"] == {str(entry.dpo_sample_temp)}
    if name == "gsm8k":
        ilr = _temps("sft_ilr.sh", tmp_path / "ilr2", DS_NAME=name, PROPOSAL_TEMP="0.3", WEAK_LABEL_TEMP="0.2")
        assert (ilr["weak"], ilr["half"]) == ({"0.2"}, {"0.3"})
