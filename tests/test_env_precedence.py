"""One rule for settings, in bash and in Python: the environment wins over `.env`.

The scripts read `$ILR_ROOT/.env` (the folder above scripts/), so the bash tests run a copy of
scripts/lib.sh under a temporary root with its own .env: the repository's .env is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Comments, blank lines, an `export`, a quoted value holding spaces, `=` and quotes.
DOTENV = """# settings of this checkout
ILR_SAVE_PATH=/dotenv/results

ILR_DATA_PATH=dotenv-data
ILR_CACHE_PATH="/dotenv cache/a=b 'q'"
export ILR_LOG_LEVEL=WARNING
"""
# What the environment gives: values with spaces, `=`, both quotes and a `$`; an empty value is set too.
ENV_SAVE_PATH = "/env results/x=y \"dq\" 'sq' $HOME"
NAMES = ("ILR_SAVE_PATH", "ILR_DATA_PATH", "ILR_CACHE_PATH", "ILR_LOG_LEVEL")


def probe_lib(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """The settings a pipeline sees after sourcing lib.sh (and a child process of it, the CLIs)."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "lib.sh", root / "scripts" / "lib.sh")
    (root / ".env").write_text(DOTENV)
    names = " ".join(NAMES)
    (root / "scripts" / "probe.sh").write_text(
        '. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"\n'
        f'for v in {names}; do printf "%s=%s\\n" "$v" "${{!v-UNSET}}"; done\n'
        'printf "RESULTS_FOLDER=%s\\n" "$RESULTS_FOLDER"\n'
        # the Python the scripts run inherits the same values
        f'{sys.executable} -c \'import os; print("child=" + os.environ.get("ILR_SAVE_PATH", "UNSET"))\'\n'
    )
    base = {k: v for k, v in os.environ.items() if k not in NAMES and k != "RESULTS_FOLDER"}
    proc = subprocess.run(["bash", str(root / "scripts" / "probe.sh")], capture_output=True, text=True,
                          env={**base, **env}, cwd=tmp_path, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines())


def test_the_environment_wins_over_dotenv_in_the_scripts(tmp_path):
    """Before: lib.sh sourced .env over the environment, so `ILR_SAVE_PATH=/x bash scripts/...`
    wrote into .env's folder (and an empty setting took .env's value)."""
    seen = probe_lib(tmp_path, {"ILR_SAVE_PATH": ENV_SAVE_PATH, "ILR_DATA_PATH": ""})
    assert seen == {
        "ILR_SAVE_PATH": ENV_SAVE_PATH,  # the environment's, byte for byte
        "ILR_DATA_PATH": "",  # set, though empty: .env does not fill it
        "ILR_CACHE_PATH": "/dotenv cache/a=b 'q'",  # unset in the environment: .env's, unquoted by bash
        "ILR_LOG_LEVEL": "WARNING",
        "RESULTS_FOLDER": ENV_SAVE_PATH,  # where every run of the pipeline goes
        "child": ENV_SAVE_PATH,
    }


def test_dotenv_fills_what_the_environment_leaves_unset_in_the_scripts(tmp_path):
    seen = probe_lib(tmp_path, {})
    assert seen["ILR_SAVE_PATH"] == seen["RESULTS_FOLDER"] == seen["child"] == "/dotenv/results"
    assert (seen["ILR_DATA_PATH"], seen["ILR_CACHE_PATH"]) == ("dotenv-data", "/dotenv cache/a=b 'q'")


def run_main_query(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """experiments.main --print_save_path in a folder holding a .env (the CLIs read the working dir's)."""
    (tmp_path / ".env").write_text(DOTENV)
    base = {k: v for k, v in os.environ.items() if k not in NAMES}
    args = ["--ds_name=toy_arith", "--model_size=tiny-random", "--print_save_path"]
    return subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.main", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**base, "PYTHONPATH": str(REPO), **env})  # fmt: skip


def test_the_environment_wins_over_dotenv_in_the_clis(tmp_path):
    """The same rule on the Python side (it held before: core.settings.load_env does not override)."""
    run = run_main_query(tmp_path, {"ILR_SAVE_PATH": ENV_SAVE_PATH})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith(ENV_SAVE_PATH + "/default/")
    run = run_main_query(tmp_path, {})
    assert run.stdout.strip().splitlines()[-1].startswith("/dotenv/results/default/")
    # An empty value is set: .env does not fill it, and no results folder is named.
    run = run_main_query(tmp_path, {"ILR_SAVE_PATH": ""})
    assert run.returncode == 2 and "error: No results folder" in run.stderr
