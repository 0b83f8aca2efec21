"""BIRD execution accuracy (a prediction scores 1 when its rows equal the gold query's) and ILR's BIRD agreement check, both on `core.sql_executor`.

A pair scores 1 when predicted and gold SQL return the same set of rows on the read-only database,
0 on a mismatch, an error or a timeout. Databases come from `<db_root_path>/<db>/<db>.sqlite`;
`$ILR_BIRD_DB_URLS` may name a JSON file mapping database names to SQLAlchemy URLs (e.g. a
PostgreSQL copy of a benchmark), which then take precedence.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.settings import ConfigError, get_logger, load_env
from iterative_label_refinement.core.sql_executor import DEFAULT_TIMEOUT, execute_pairs, resolve_database

logger = get_logger(__name__)

DIFFICULTY_ORDER = ("simple", "moderate", "challenging")


def load_db_urls() -> dict[str, str]:
    """The `{db name: SQLAlchemy URL}` mapping of the JSON file `$ILR_BIRD_DB_URLS`; empty when unset."""
    load_env()
    path = os.environ.get("ILR_BIRD_DB_URLS")
    if not path:
        return {}
    try:
        urls = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"ILR_BIRD_DB_URLS={path!r} is not a readable JSON file: {exc}") from exc
    if not isinstance(urls, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in urls.items()):
        raise ConfigError(f"ILR_BIRD_DB_URLS={path!r} must hold a JSON object mapping database names to URLs")
    return urls


def check_bird_databases(db_names: Iterable[str], db_root_path: str | Path | None) -> None:
    """ConfigError naming the first database that cannot be opened (before a run trains, then fails at scoring)."""
    urls = load_db_urls()
    for db_name in sorted(set(db_names)):
        resolve_database(db_name, db_root_path, urls)


def execute_bird_pairs(
    sqls_a: Sequence[str],
    sqls_b: Sequence[str],
    db_names: Sequence[str],
    db_root_path: str | Path | None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[dict[str, Any]]:
    """Per-pair records (`score`, `reason`, `seconds`) with the project's settings; logs the reasons."""
    records = execute_pairs(sqls_a, sqls_b, db_names, db_root_path, db_urls=load_db_urls(), timeout=timeout)
    kinds = Counter(record["reason"].split(":")[0] for record in records)
    logger.info("SQL execution of %d pairs: %s", len(records), dict(kinds))
    return records


def bird_eval_func(
    pred_sqls: Sequence[str],
    gold_sqls: Sequence[str],
    db_names: Sequence[str],
    db_root_path: str | Path | None,
    meta_time_out: float = DEFAULT_TIMEOUT,
) -> list[int]:
    """The reference signature: one 0/1 per (predicted, gold) pair, in input order. Never raises per pair."""
    return [
        record["score"] for record in execute_bird_pairs(pred_sqls, gold_sqls, db_names, db_root_path, meta_time_out)
    ]


def same_execution_result(
    sqls_a: Sequence[str],
    sqls_b: Sequence[str],
    db_names: Sequence[str],
    db_root_path: str | Path | None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[bool]:
    """ILR's BIRD agreement check: two answers agree when they execute to the same row set."""
    return [record["score"] == 1 for record in execute_bird_pairs(sqls_a, sqls_b, db_names, db_root_path, timeout)]


def accuracy_by_difficulty(
    scores: Sequence[float], rows: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, dict[str, float]]:
    """`{"all": {"accuracy", "count"}}`, plus one entry per difficulty when the rows have a `difficulty`.

    BIRD reports simple / moderate / challenging separately; those come first, any other values after.
    """
    report = {"all": _accuracy(scores)}
    if rows is None or not any("difficulty" in row for row in rows):
        return report
    if len(rows) != len(scores):
        raise ConfigError(f"got {len(scores)} scores for {len(rows)} rows")
    groups: dict[str, list[float]] = {}
    for score, row in zip(scores, rows):
        groups.setdefault(str(row.get("difficulty")), []).append(score)
    order = [d for d in DIFFICULTY_ORDER if d in groups] + sorted(set(groups) - set(DIFFICULTY_ORDER))
    report.update({difficulty: _accuracy(groups[difficulty]) for difficulty in order})
    return report


def _accuracy(scores: Sequence[float]) -> dict[str, float]:
    return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "count": len(scores)}
