"""Per-target mutation scores from the last `mutmut run` (see `make mutants`).

    make mutants      # runs mutmut on TARGETS, then this script

A mutant is killed when the selected tests fail on it. The score counts killed mutants among all
mutants that are not listed in EQUIVALENT (mutants that cannot change any result; each with why).
Prints one line per target and every surviving mutant's diff; exits 1 when a target is below 95%.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = "iterative_label_refinement"
# target name -> the mutant-name patterns it covers (mutmut names a function's mutants x_<name>__mutmut_N).
TARGETS = {
    "core/refinement.py": [f"{PACKAGE}.core.refinement.*"],
    "core/refinement_step.py": [f"{PACKAGE}.core.refinement_step.*"],
    "core/label_sets.py": [f"{PACKAGE}.core.label_sets.*"],
    "dpo_loss (core/dpo.py, core/logps.py)": [
        f"{PACKAGE}.core.dpo.x_dpo_loss__*",
        f"{PACKAGE}.core.logps.x_sequence_logps__*",
        f"{PACKAGE}.core.logps.x_predicts_answer__*",
        f"{PACKAGE}.core.logps.x_labelled_logps__*",
        f"{PACKAGE}.core.dpo.x_averages_logps__*",
    ],  # fmt: skip
    "debiased_scores (core/evaluator.py)": [f"{PACKAGE}.core.evaluator.x_debiased_scores__*"],
    "metrics/eval_gsm8k.py": [f"{PACKAGE}.metrics.eval_gsm8k.*"],
}
# Mutants that no input can tell apart from the original, with the reason (see BENCHMARKS.md).
_NP_FLOAT = "np.asarray of the scores gives float64 with or without dtype=float; np.quantile returns a float either way"
_NP_REPLACE = "NumPy's choice tests `if replace:`, so replace=None draws without replacement as False does"
_NO_FEEDBACK = "only kinds that take feedback read it: naive's rows never do, None or not"
_LABEL_ACC = "ILR's oracle question reads only the proposal's acc (`oracle_score`); the evaluator reads no acc"
EQUIVALENT: dict[str, str] = {
    f"{PACKAGE}.core.refinement.x_ilr_threshold__mutmut_15": _NP_FLOAT,  # dtype=None
    f"{PACKAGE}.core.refinement.x_ilr_threshold__mutmut_17": _NP_FLOAT,  # dtype dropped
    f"{PACKAGE}.core.refinement.x_naive_choice__mutmut_30": _NP_REPLACE,  # replace=None
    f"{PACKAGE}.core.refinement_step.x_run_step__mutmut_47": _NO_FEEDBACK,  # feedback = ""
    f"{PACKAGE}.core.refinement_step.x_ilr_rows__mutmut_28": _LABEL_ACC,  # current_acc of first(None)
}
KILLED = {1, 3}
THRESHOLD = 0.95


def mutmut_args() -> list[str]:
    """The mutant patterns to pass to `mutmut run`."""
    return [p for patterns in TARGETS.values() for p in patterns]


def load_results(root: Path) -> dict[str, int | None]:
    results: dict[str, int | None] = {}
    for meta in (root / "mutants").rglob("*.py.meta"):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    results = load_results(root)
    failing = False
    for target, patterns in TARGETS.items():
        names = sorted(k for k in results if any(fnmatch.fnmatch(k, p) for p in patterns))
        counted = [n for n in names if n not in EQUIVALENT]
        unchecked = [n for n in counted if results[n] is None]
        killed = [n for n in counted if results[n] in KILLED]
        survivors = [n for n in counted if results[n] is not None and results[n] not in KILLED]
        score = len(killed) / max(1, len(counted) - len(unchecked))
        failing |= score < THRESHOLD or bool(unchecked)
        print(f"{target}: {len(killed)}/{len(counted) - len(unchecked)} killed ({100 * score:.1f}%), "
              f"{len(names) - len(counted)} equivalent, {len(unchecked)} not run")  # fmt: skip
        for name in survivors:
            diff = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "show", name], cwd=root,
                                  capture_output=True, text=True).stdout  # fmt: skip
            print(
                f"  survived ({results[name]}): {name}\n" + "\n".join("    " + line for line in diff.splitlines()[2:])
            )
    return 1 if failing else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--patterns"]:
        print(" ".join(mutmut_args()))
        sys.exit(0)
    sys.exit(main())
