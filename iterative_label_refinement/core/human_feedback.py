"""Comparison feedback from people: export the comparisons a step asks, import their verdicts.

`--feedback=human --export_comparisons=<folder>` runs a step up to its question and writes every
comparison it would ask (ILR: a current label against its disagreeing proposal; DPO: two samples of
a prompt) to `<folder>/comparisons.jsonl` and `<folder>/comparisons.csv`, one row each with `id`,
`question`, `first`, `second` and empty `verdict` and `confidence`; it writes no label set. The id
is a digest of (question, first, second): the same comparison has the same id in every export.

People fill in `verdict` (`first`, `second` or `tie`) and optionally `confidence`, c in [0, 1]
(empty: 1). `--feedback=human --verdicts_path=<file>.jsonl|.csv` runs the same step on them, each
verdict standing where the evaluator's score would, as P(second is better):

    second: 1/2 + c/2,    first: 1/2 - c/2,    tie: 1/2.

A verdict file must answer exactly the comparisons the step asks: one that misses some, or holds
ids the step does not ask, is refused in one line naming how many.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.settings import ConfigError

VERDICTS = ("first", "second", "tie")
COLUMNS = ("id", "question", "first", "second", "verdict", "confidence")


def comparison_id(question: str, first: str, second: str) -> str:
    """A stable id of one comparison: the digest of its three texts (independent of order in the step)."""
    return hashlib.sha256(json.dumps([question, first, second]).encode()).hexdigest()[:16]


def verdict_score(verdict: str, confidence: float = 1.0) -> float:
    """P(second is better) of a verdict: second 1/2 + c/2, first 1/2 - c/2, tie 1/2."""
    return {"second": 0.5 + 0.5 * confidence, "first": 0.5 - 0.5 * confidence, "tie": 0.5}[verdict]


class ComparisonsAsked(Exception):
    """Raised by `ComparisonExport` where the step asks: the step stops there, with its comparisons."""

    def __init__(self, comparisons: list[dict[str, str]]):
        super().__init__(f"{len(comparisons)} comparisons asked")
        self.comparisons = comparisons


def _comparisons(questions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[dict[str, str]]:
    """One row per distinct comparison, in the step's order (a repeated comparison is asked once)."""
    rows = {}
    for q, a, b in zip(questions, firsts, seconds):
        rows.setdefault(comparison_id(q, a, b), {"id": comparison_id(q, a, b), "question": q, "first": a, "second": b})
    return list(rows.values())


class ComparisonExport:
    """The feedback of an exporting step: it records what is asked and stops the step."""

    def scores(self, questions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[float]:
        raise ComparisonsAsked(_comparisons(questions, firsts, seconds))


def write_comparisons(comparisons: list[dict[str, str]], folder: str | Path) -> Path:
    """`comparisons.jsonl` and `comparisons.csv` in `folder`, verdict and confidence left empty."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**c, "verdict": "", "confidence": ""} for c in comparisons]
    (folder / "comparisons.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(folder / "comparisons.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ConfigError(f"{path} line {n} is not JSON ({e})") from None
        return rows
    raise ConfigError(f"verdict file {path} must end in .jsonl or .csv")


def _confidence(value: Any, where: str) -> float:
    if value is None or value == "":
        return 1.0
    try:
        c = float(value)
    except (TypeError, ValueError):
        c = math.nan
    if isinstance(value, bool) or not 0 <= c <= 1:
        raise ConfigError(f"{where}: confidence {value!r} is not a number in [0, 1] (or empty for 1)")
    return c


def read_verdicts(path: str | Path) -> dict[str, float]:
    """comparison id -> P(second is better), from a verdict file (.jsonl or .csv)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"verdict file {path} does not exist; export the comparisons with --export_comparisons")
    scores: dict[str, float] = {}
    for n, row in enumerate(_read_rows(path), start=1):
        where = f"{path} row {n}"
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise ConfigError(f"{where} has no id")
        if row.get("verdict") not in VERDICTS:
            raise ConfigError(f"{where}: verdict {row.get('verdict')!r} is not one of {list(VERDICTS)}")
        score = verdict_score(row["verdict"], _confidence(row.get("confidence"), where))
        if scores.setdefault(row["id"], score) != score:
            raise ConfigError(f"{where}: id {row['id']} has two different verdicts")
    return scores


@dataclass(frozen=True)
class Verdicts:
    """The feedback of a step run on people's verdicts."""

    path: Path
    by_id: dict[str, float]

    @classmethod
    def load(cls, path: str | Path) -> Verdicts:
        return cls(Path(path), read_verdicts(path))

    def identity(self) -> dict[str, Any]:
        """What provenance records: the file's name and the digest of its contents."""
        return {"human_verdicts": {"name": self.path.name,
                                   "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]}}  # fmt: skip

    def scores(self, questions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[float]:
        asked = [comparison_id(q, a, b) for q, a, b in zip(questions, firsts, seconds)]
        missing = set(asked) - set(self.by_id)
        unknown = set(self.by_id) - set(asked)
        if missing or unknown:
            raise ConfigError(f"verdict file {self.path} misses {len(missing)} of the {len(set(asked))} comparisons "
                              f"this step asks and has {len(unknown)} unknown ids; export this step's comparisons "
                              "with --export_comparisons")  # fmt: skip
        return [self.by_id[i] for i in asked]
