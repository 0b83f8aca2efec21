"""A kind of method declared in a test runs through scripts/sft_ilr.sh, unedited.

The kind, `longer`, takes no comparisons: a label is replaced by its cross-fitted proposal when the
proposal's text is longer. It is declared in a module this test writes, which every Python process
of the pipeline imports at start-up (`sitecustomize` on PYTHONPATH), so the scripts, the query CLI,
the runs and the refinement step all know it, as they would a kind declared in the package.
The pipeline runs at the demo's quick size (random tiny models, one round).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from datasets import load_from_disk

from iterative_label_refinement.core.label_sets import first

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
from iterative_label_refinement.core.methods import MethodKind, register_kind
from iterative_label_refinement.core.refinement import match_proposals, refined_rows
from iterative_label_refinement.core.label_sets import first


def longer_rows(step):
    """Each label whose proposal is longer text is replaced by it; no feedback is asked."""
    labels = step.labels
    proposals = match_proposals(list(labels["question"]), step.candidates)
    replace = [len(first(p["answer"])) > len(first(a)) for p, a in zip(proposals, labels["answer"])]
    return refined_rows(labels, proposals, replace, [-1.0] * len(labels))


register_kind(MethodKind("longer", longer_rows, takes_feedback=False))
'''

QUICK = dict(DS_NAME="toy_arith", WEAK_MODEL="tiny-random", STRONG_MODEL="tiny-random", N_DOCS="64",
             N_TEST_DOCS="16", ROUNDS="1", EPOCHS="1", WEAK_EPOCHS="1", LORA_RANK="4", BATCH_SIZE="8", NUM_BEAMS="1",
             MAX_REPLACE="0.5")  # fmt: skip


def test_a_kind_declared_in_a_test_runs_through_sft_ilr(tmp_path):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text(PLUGIN)
    results = tmp_path / "results"
    env = {**os.environ, **QUICK, "REFINER": "longer", "RESULTS_FOLDER": str(results), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run(["bash", str(REPO / "scripts" / "sft_ilr.sh")], capture_output=True, text=True, env=env,
                          timeout=1500)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "method longer0.5" in proc.stderr
    assert "--evaluator_path" not in proc.stdout  # no feedback: the step gets no evaluator
    (refined,) = results.rglob("longer0.5_0_weak_labels")
    weak = refined.parent
    labels = {r["question"]: first(r["answer"]) for r in load_from_disk(str(weak / "weak_labels"))}
    halves = [p.parent for p in results.rglob("*-hd=[12]-*/weak_labels") if "wlt=weak" in p.parent.name]
    assert len(halves) == 2
    proposals = {r["question"]: first(r["answer"]) for h in halves for r in load_from_disk(str(h / "weak_labels"))}
    rows = list(load_from_disk(str(refined)))
    assert {r["question"] for r in rows} == set(labels) == set(proposals)
    replaced = 0
    for row in rows:  # the test kind's rule, checked against the labels and proposals the runs wrote
        q = row["question"]
        expected = proposals[q] if len(proposals[q]) > len(labels[q]) else labels[q]
        assert row["answer"] == expected, q
        replaced += expected != labels[q]
    assert 0 < replaced < len(rows)
    # round 1's model trained on them, under the kind's name
    assert list(results.rglob("*-ri=1-*wlt=longer0.5*/results_summary.json"))
