"""How good were a refinement method's replacements? Counts, per round, the labels it changed that
went from wrong to right and from right to wrong (needs the `acc` column, i.e. a task with a metric).

    .venv/bin/python benchmarks/replacement_quality.py --weak_dir=<weak run dir> \
        --methods=ilr0.15,orailr0.15,naive0.15

The weak run dir holds `weak_labels` and every `<method>_<r>_weak_labels` (scripts/sft_ilr.sh).
"""

from __future__ import annotations

import fire

from iterative_label_refinement.core.label_sets import current_labels_path, first, load_label_set, refined_path


def replacement_counts(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]) -> dict[str, int]:
    """`before`/`after`: question -> (answer, acc). Counts the changed answers by what they did."""
    changed = [q for q in after if after[q][0] != before[q][0]]
    up = sum(after[q][1] > before[q][1] for q in changed)
    down = sum(after[q][1] < before[q][1] for q in changed)
    return {"changed": len(changed), "wrong_to_right": up, "right_to_wrong": down, "same": len(changed) - up - down}


def _rows(path) -> dict[str, tuple[str, float]]:
    ds = load_label_set(path, required=("question", "answer", "acc"))
    return {q: (first(a), first(acc)) for q, a, acc in zip(ds["question"], ds["answer"], ds["acc"])}


def main(weak_dir: str, methods: str = "ilr0.15,orailr0.15,naive0.15") -> None:
    for method in methods.split(",") if isinstance(methods, str) else methods:
        round_id = 0
        while refined_path(weak_dir, method, round_id).exists():
            before = _rows(current_labels_path(weak_dir, method, round_id))
            after = _rows(refined_path(weak_dir, method, round_id))
            print(method, f"round {round_id}", replacement_counts(before, after))
            round_id += 1


if __name__ == "__main__":
    fire.Fire(main)
