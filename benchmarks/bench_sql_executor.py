"""Benchmark: the project's SQL executor vs a plain sequential sqlite3 loop on Spider dev gold-vs-gold pairs.

    .venv/bin/python benchmarks/bench_sql_executor.py [--data ../shared/data] [--repeats 3] [--workers N]

The plain loop is what the reference release did: per pair, connect, run both queries, fetch all
rows and compare sets (no read-only mode, no timeout, no row cap). The executor runs the same pairs
read-only, with deadlines and row caps, in-process (`workers=1`) and in its process pool; the first
pool call of a process also starts the pool's fork server, so it is timed separately. Every method
must give the same scores. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from iterative_label_refinement.core.sql_executor import default_workers, execute_pairs

REPO = Path(__file__).resolve().parents[1]


def load_pairs(data: Path) -> tuple[Path, list[str], list[str]]:
    """Spider dev gold queries whose database is present, with their database names."""
    root = data / "spider" / "database"
    rows = json.loads((data / "spider" / "dev.json").read_text())
    rows = [r for r in rows if (root / r["db_id"] / f"{r['db_id']}.sqlite").is_file()]
    return root, [r["query"] for r in rows], [r["db_id"] for r in rows]


def plain_loop(root: Path, preds: list[str], golds: list[str], dbs: list[str]) -> list[int]:
    scores = []
    for pred, gold, db in zip(preds, golds, dbs):
        conn = sqlite3.connect(root / db / f"{db}.sqlite")
        try:
            scores.append(int(set(conn.execute(pred).fetchall()) == set(conn.execute(gold).fetchall())))
        except sqlite3.Error:
            scores.append(0)
        finally:
            conn.close()
    return scores


def timed(fn: Callable[[], list[int]]) -> tuple[float, list[int]]:
    start = time.perf_counter()
    scores = fn()
    return time.perf_counter() - start, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("ILR_TEST_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()

    root, queries, dbs = load_pairs(args.data)

    def executor(workers: int) -> Callable[[], list[int]]:
        return lambda: [r["score"] for r in execute_pairs(queries, queries, dbs, root, workers=workers)]

    methods: dict[str, Callable[[], list[int]]] = {
        "plain sqlite3 loop (sequential, connect per pair)": lambda: plain_loop(root, queries, queries, dbs),
        "executor, workers=1 (in-process)": executor(1),
        f"executor, workers={args.workers} (process pool)": executor(args.workers),
    }
    first_pool_seconds, first_scores = timed(executor(args.workers))  # starts the fork server
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():  # interleaved, so background load hits every method alike
            seconds, scores = timed(fn)
            assert scores == first_scores, f"{name} disagrees with the executor's scores"
            times[name].append(seconds)

    n_pairs = len(queries)
    baseline = statistics.median(times[next(iter(methods))])
    print(f"Spider dev: {n_pairs} gold-vs-gold pairs ({2 * n_pairs} queries) on {len(set(dbs))} databases, ", end="")
    print(
        f"score sum {sum(first_scores)}/{n_pairs}; {os.cpu_count()} CPUs, Python {platform.python_version()}, ", end=""
    )
    print(f"SQLite {sqlite3.sqlite_version}; median of {args.repeats} runs.\n")
    print("| method | seconds | queries/s | speed-up vs plain loop |")
    print("| --- | ---: | ---: | ---: |")
    for name, runs in times.items():
        seconds = statistics.median(runs)
        print(f"| {name} | {seconds:.3f} | {2 * n_pairs / seconds:,.0f} | {baseline / seconds:.2f}x |")
    print(
        f"| executor, workers={args.workers}, first call (includes pool start-up) | {first_pool_seconds:.3f} | "
        f"{2 * n_pairs / first_pool_seconds:,.0f} | {baseline / first_pool_seconds:.2f}x |"
    )


if __name__ == "__main__":
    main()
