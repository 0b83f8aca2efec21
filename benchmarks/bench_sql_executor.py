"""Benchmark: the SQL executor against a plain sequential sqlite3 loop, and its bounds on hostile SQL.

    .venv/bin/python benchmarks/bench_sql_executor.py [--data ../shared/data] [--repeats 3] [--workers N]

Three parts, each printed as a markdown table:
* Spider dev gold-vs-gold pairs (light queries, about 0.1 ms each);
* a CPU-bound set of this script's own: recursive-CTE queries of about 50-100 ms each on the
  Spider databases, with a different row count per pair;
* hostile queries under a 5 s budget: the wall time of each pair and the peak memory (RSS) of the
  pool's worker processes while it ran.
The plain loop is what the reference release did: per pair, connect, run both queries, fetch all
rows and compare sets (no read-only mode, no timeout, no cap). The executor's default is its
persistent worker pool; the first call of a process starts the pool, so it is timed separately.
Every method must give the same scores (asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from iterative_label_refinement.core import sql_executor
from iterative_label_refinement.core.sql_executor import default_workers, execute_pairs

REPO = Path(__file__).resolve().parents[1]

HOSTILE = {
    "instr on a 15 MB string (one long C call)": (
        "SELECT instr(printf('%.*c', 15000000, 'a'), printf('%.*c', 100000, 'a') || 'b')"
    ),
    "randomblob(2e9)": "SELECT length(randomblob(2000000000))",
    "printf width 1e9": "SELECT length(printf('%.*c', 1000000000, 'x'))",
    "group_concat to 1 GB": (
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 1000) "
        "SELECT length(group_concat(printf('%.*c', 1000000, 'x'))) FROM r"
    ),
    "3 GB result under the row cap (500k rows x 6 KB)": (
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 500000) "
        "SELECT x, printf('%.*c', 6000, 'y') FROM r"
    ),
    "never-ending recursive CTE": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
}


def load_pairs(data: Path) -> tuple[Path, list[str], list[str]]:
    """Spider dev gold queries whose database is present, with their database names."""
    root = data / "spider" / "database"
    rows = json.loads((data / "spider" / "dev.json").read_text())
    rows = [r for r in rows if (root / r["db_id"] / f"{r['db_id']}.sqlite").is_file()]
    return root, [r["query"] for r in rows], [r["db_id"] for r in rows]


def cpu_bound_pairs(dbs: list[str], n: int = 60) -> tuple[list[str], list[str]]:
    """Recursive-CTE queries of about 50-100 ms each (150k-300k rows), spread over the databases."""
    names = sorted(set(dbs))
    queries = [
        f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {150_000 + 2_500 * i}) "
        "SELECT count(*), sum(x % 7) FROM c"
        for i in range(n)
    ]
    return queries, [names[i % len(names)] for i in range(n)]


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


def throughput(title: str, root: Path, queries: list[str], dbs: list[str], workers: int, repeats: int) -> None:
    def executor(**kwargs) -> Callable[[], list[int]]:
        return lambda: [r["score"] for r in execute_pairs(queries, queries, dbs, root, **kwargs)]

    sql_executor._close_pool()
    methods: dict[str, Callable[[], list[int]]] = {
        "plain sqlite3 loop (sequential, connect per pair)": lambda: plain_loop(root, queries, queries, dbs),
        f"executor default: pool of {workers} workers (started)": executor(workers=workers),
        "executor, in_process=True": executor(in_process=True),
    }
    first_seconds, first_scores = timed(executor(workers=workers))  # starts the pool
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():  # interleaved, so background load hits every method alike
            seconds, scores = timed(fn)
            assert scores == first_scores, f"{name} disagrees with the executor's scores"
            times[name].append(seconds)
    baseline = statistics.median(times[next(iter(methods))])
    n = len(queries)
    print(f"\n### {title}: {n} pairs ({2 * n} queries), score sum {sum(first_scores)}/{n}, median of {repeats}\n")
    print("| method | seconds | queries/s | speed-up vs plain loop |")
    print("| --- | ---: | ---: | ---: |")
    rows = [(name, statistics.median(runs)) for name, runs in times.items()]
    rows.append((f"executor default, first call of the process (starts {workers} workers)", first_seconds))
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {2 * n / seconds:,.0f} | {baseline / seconds:.2f}x |")


def _sample_worker_rss(peak: list[int], stop: threading.Event) -> None:
    """The largest RSS of any pool worker, every 10 ms, into `peak[0]`."""
    while not stop.is_set():
        for worker in list(sql_executor._POOL.workers):
            try:
                peak[0] = max(peak[0], psutil.Process(worker.proc.pid).memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.01)


def hostile(root: Path, db: str, workers: int) -> None:
    timeout = 5.0
    execute_pairs(["SELECT 1"], ["SELECT 1"], [db], root, workers=workers)  # the pool is up
    print(f"\n### Hostile queries, {timeout:g} s per pair, pool of {workers} workers\n")
    print("| query | seconds | worker peak RSS (MB) | record |")
    print("| --- | ---: | ---: | --- |")
    for name, sql in HOSTILE.items():
        peak, stop = [0], threading.Event()
        sampler = threading.Thread(target=_sample_worker_rss, args=(peak, stop))
        sampler.start()
        start = time.perf_counter()
        [record] = execute_pairs([sql], ["SELECT 1"], [db], root, timeout=timeout, workers=workers)
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        print(f"| {name} | {seconds:.2f} | {peak[0] / 2**20:,.0f} | `{record['reason']}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("ILR_TEST_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")
    root, queries, dbs = load_pairs(args.data)
    throughput("Spider dev, gold vs gold", root, queries, dbs, args.workers, args.repeats)
    heavy, heavy_dbs = cpu_bound_pairs(dbs)
    throughput("CPU-bound set (recursive CTEs, 50-100 ms a query)", root, heavy, heavy_dbs, args.workers, args.repeats)
    hostile(root, dbs[0], args.workers)


if __name__ == "__main__":
    main()
