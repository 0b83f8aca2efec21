"""A pipeline run's manifest: the settings it ran with, the code's commit and the library versions.

    (printf 'NAME=VALUE\\0' ...) | python -m iterative_label_refinement.experiments.manifest \\
        --results_folder=results --sweep_subfolder=default --script=scripts/sft_ilr.sh

scripts/lib.sh's `write_manifest` calls it once per pipeline run, with the pipeline's shell variables
on stdin (NUL-separated NAME=VALUE; they need not be exported). The settings kept are the
environment variables the pipeline reads: the names read as `${NAME:-...}` in the script and in
lib.sh beside it, so a setting added to a script is recorded without being listed again, and
nothing else from the environment (no tokens) reaches the file. Each run writes its own file,
`<results_folder>/<sweep_subfolder>/manifests/<pipeline>-<time>-<id>.json`, so earlier runs' are kept;
experiments.report prints them.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import uuid
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.files import write_json
from iterative_label_refinement.core.settings import ConfigError, get_save_path

LIBRARIES = ("torch", "transformers", "peft", "datasets", "accelerate")
MANIFESTS = "manifests"
# Read with a default by lib.sh, but demo.sh's step numbering, not a setting of the results.
NOT_SETTINGS = ("PROGRESS_START", "PROGRESS_DONE", "PROGRESS_TOTAL")


def declared_settings(*scripts: Path) -> list[str]:
    """The environment variables these bash scripts read: every `${NAME:-default}` (or `${NAME-...}`)."""
    names: set[str] = set()
    for script in scripts:
        names.update(re.findall(r"\$\{([A-Za-z_]\w*):?-", script.read_text()))
    return sorted(names - set(NOT_SETTINGS))


def parse_variables(dump: bytes) -> dict[str, str]:
    """NUL-separated NAME=VALUE entries (bash: `printf '%s=%s\\0' "$name" "${!name}"`)."""
    entries = (e.decode(errors="replace") for e in dump.split(b"\0") if e)
    return dict(e.split("=", 1) for e in entries if "=" in e)


def git_state(folder: Path) -> dict[str, Any]:
    """The commit checked out at `folder` and whether tracked files differ from it (untracked files,
    such as results folders, do not count); None for both outside a git checkout."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide training and generation (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(pipeline: str, script: Path, settings: dict[str, str | None]) -> dict[str, Any]:
    return {
        "pipeline": pipeline,
        "script": str(script.resolve()),
        "recorded": datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_state(script.resolve().parent),
        "python": platform.python_version(),
        "versions": library_versions(),
        "settings": settings,
    }


def manifests_dir(results_folder: str | None, sweep_subfolder: str) -> Path:
    return get_save_path(results_folder) / sweep_subfolder / MANIFESTS


def write_manifest(manifest: dict[str, Any], folder: Path) -> Path:
    """One new file per pipeline run (never overwriting another's), written atomically."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    path = folder / f"{manifest['pipeline']}-{stamp}-{uuid.uuid4().hex[:8]}.json"
    write_json(path, manifest)
    return path


def main(script: str, results_folder: str | None = None, sweep_subfolder: str = "default") -> str:
    """Write the manifest of the pipeline `script` (its shell variables on stdin); print its path."""
    path = Path(script)
    if not path.is_file():
        raise ConfigError(f"--script={script} is not a file: pass the pipeline script ($0)")
    variables = parse_variables(sys.stdin.buffer.read())
    names = declared_settings(path, path.parent / "lib.sh")
    settings = {name: variables.get(name) for name in names}  # None: unset, unlike an empty value
    folder = manifests_dir(results_folder, sweep_subfolder)
    return str(write_manifest(build_manifest(path.stem, path, settings), folder))


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
