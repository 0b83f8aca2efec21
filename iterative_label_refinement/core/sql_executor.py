"""Execution accuracy for text-to-SQL: run predicted and gold SQL read-only and compare row sets.

Model-written SQL is untrusted. The reference release ran it on writable connections with thread
timeouts that left the query running (SPEC §12), so one generated `DROP TABLE` changed the
benchmark for good. Here a SQLite database is opened with `mode=ro` and `query_only`, and an
authorizer refuses everything except reading (no writes, schema changes, `ATTACH` or setting
pragmas); a deadline is enforced inside SQLite by a progress handler, so a runaway query stops
itself; result sizes are capped; one statement per call. Batches run in a bounded process pool and
come back in input order, one record per pair with its reason: `ok`, `mismatch`, `error: ...` or
`timeout: ...`.

Databases are `<root>/<db>/<db>.sqlite` (BIRD's and Spider's layout) or, per database, any
SQLAlchemy URL: SQLite URLs get the same read-only connection, PostgreSQL runs each query in a
`READ ONLY` transaction with a server-side `statement_timeout`.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import re
import sqlite3
import time
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, pool
from sqlalchemy.engine import URL, CursorResult
from sqlalchemy.exc import DBAPIError

from iterative_label_refinement.core.common import ConfigError

DEFAULT_TIMEOUT = 30.0  # seconds per pair (predicted + gold), as in BIRD
DEFAULT_MAX_ROWS = 1_000_000  # rows fetched per query before it counts as an error
MAX_WORKERS = 32
_PROGRESS_STEPS = 10_000  # SQLite VM steps between deadline checks (well under a millisecond)
_FETCH_SIZE = 10_000

# Pragmas that only read the schema; every other pragma (they can set state) is refused.
_READ_ONLY_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
# Reading, calling functions, recursive CTEs and BEGIN/ROLLBACK; ATTACH (which VACUUM also uses),
# writes, schema changes and savepoints are refused.
_ALLOWED_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
        sqlite3.SQLITE_TRANSACTION,
    }
)
_CLOSERS = {"'": "'", '"': '"', "`": "`", "[": "]", "--": "\n", "/*": "*/"}  # quotes, names, comments
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?(\*/|$)", re.DOTALL)


class QueryFailed(Exception):
    """A query that produced no comparable result; `kind` is "error" or "timeout", `detail` says why."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def rows_match(pred_rows: Iterable[tuple], gold_rows: Iterable[tuple]) -> bool:
    """BIRD's rule: the sets of result rows are equal (order and duplicates ignored)."""
    return set(pred_rows) == set(gold_rows)


def _top_level_semicolons(sql: str) -> Iterator[int]:
    """Positions of the `;` outside quotes, bracketed names and comments (one linear scan)."""
    i = 0
    while i < len(sql):
        opener = sql[i : i + 2] if sql[i : i + 2] in ("--", "/*") else sql[i]
        if opener in _CLOSERS:  # a doubled quote ('it''s') simply reopens right after the close
            end = sql.find(_CLOSERS[opener], i + len(opener))
            i = len(sql) if end < 0 else end + len(_CLOSERS[opener])
            continue
        if opener == ";":
            yield i
        i += 1


def single_statement(sql: object) -> str:
    """The one statement in `sql`, without trailing semicolons; `QueryFailed` when empty or several."""
    if not isinstance(sql, str):
        raise QueryFailed("error", f"SQL must be a string, got {type(sql).__name__}")
    statement = sql.strip().rstrip(";").rstrip()
    if not _COMMENTS.sub("", statement).strip():
        raise QueryFailed("error", "empty SQL")
    end = next(_top_level_semicolons(statement), None)
    if end is None:
        return statement
    if _COMMENTS.sub("", statement[end + 1 :]).strip(" \t\r\n;"):
        raise QueryFailed("error", "several statements in one string; one statement per call")
    return statement[:end]


def resolve_database(db_name: object, db_root_path: str | Path | None, db_urls: Mapping[str, str] | None = None) -> str:
    """The SQLAlchemy URL of database `db_name`: its entry in `db_urls`, else `<root>/<db>/<db>.sqlite`.

    Raises ConfigError naming the bad value: a name that is not a plain folder name (`../x`), a
    missing root, an unknown database.
    """
    if db_urls and isinstance(db_name, str) and db_name in db_urls:
        return db_urls[db_name]
    if not isinstance(db_name, str) or db_name in {"", ".", ".."} or any(c in db_name for c in "/\\\0"):
        raise ConfigError(f"database name {db_name!r} is not a plain folder name under the database root")
    if db_root_path is None:
        raise ConfigError(f"no database root and no URL given for database {db_name!r}")
    root = Path(db_root_path)
    if not root.is_dir():
        raise ConfigError(f"database root {str(root)!r} is not a folder")
    path = root / db_name / f"{db_name}.sqlite"
    if not path.is_file():
        raise ConfigError(f"unknown database {db_name!r}: {str(path)!r} does not exist")
    return URL.create("sqlite", database=str(path.absolute())).render_as_string()


# ---------------------------------------------------------------------------------------------
# One query, read-only, with a deadline
# ---------------------------------------------------------------------------------------------


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_ONLY_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _connect_sqlite_read_only(uri: str) -> sqlite3.Connection:
    """`mode=ro`: the file is never opened for writing; `query_only` on top (the authorizer comes per query)."""
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


class _Deadline:
    """SQLite progress handler: a non-zero return interrupts the running statement."""

    def __init__(self, at: float):
        self.at = at
        self.hit = False

    def __call__(self) -> int:
        if time.monotonic() > self.at:
            self.hit = True
            return 1
        return 0


_ENGINES: dict[str, Engine] = {}  # per process: connections are reused across queries


def _engine(url: str) -> Engine:
    if url not in _ENGINES:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            uri = Path(parsed.database or "").absolute().as_uri() + "?mode=ro"
            creator = functools.partial(_connect_sqlite_read_only, uri)
            _ENGINES[url] = create_engine("sqlite://", creator=creator, poolclass=pool.QueuePool, pool_size=1)
        elif backend == "postgresql":
            _ENGINES[url] = create_engine(parsed, pool_size=1)
        else:
            raise QueryFailed("error", f"unsupported database backend {backend!r} (supported: sqlite, postgresql)")
    return _ENGINES[url]


def _freeze(row: Iterable[Any]) -> tuple:
    """A hashable row; unhashable values (e.g. PostgreSQL arrays) compare by their repr."""
    values = tuple(row)
    try:
        hash(values)
        return values
    except TypeError:
        return tuple(v if isinstance(v, Hashable) else repr(v) for v in values)


def fetch_rows(url: str, sql: str, deadline: float, max_rows: int = DEFAULT_MAX_ROWS) -> set[tuple]:
    """The distinct result rows of one statement; `QueryFailed` on any error or past `deadline`."""
    if time.monotonic() >= deadline:
        raise QueryFailed("timeout", "no time left before it started")
    engine = _engine(url)
    is_sqlite = engine.dialect.name == "sqlite"
    stop = _Deadline(deadline)
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            if is_sqlite:  # after SQLAlchemy's own set-up queries on a new connection
                raw.set_authorizer(_authorize)
                raw.set_progress_handler(stop, _PROGRESS_STEPS)
            else:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                milliseconds = max(1, int((deadline - time.monotonic()) * 1000))
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
                conn.execution_options(stream_results=True)
            try:
                return _read_rows(conn.exec_driver_sql(sql), max_rows)
            finally:
                if is_sqlite:
                    raw.set_progress_handler(None, 0)
                conn.rollback()
    except DBAPIError as exc:
        message = str(exc.orig)
        if stop.hit or "statement timeout" in message:
            raise QueryFailed("timeout", "ran past the time limit") from None
        if "not authorized" in message or "authorization denied" in message:
            message += " (read-only executor: writes, schema changes, ATTACH and setting pragmas are refused)"
        raise QueryFailed("error", message) from None


def _read_rows(result: CursorResult, max_rows: int) -> set[tuple]:
    if not result.returns_rows:
        raise QueryFailed("error", "the statement returns no rows")
    rows: set[tuple] = set()
    fetched = 0
    for chunk in result.partitions(_FETCH_SIZE):
        fetched += len(chunk)
        if fetched > max_rows:
            raise QueryFailed("error", f"more than {max_rows} result rows (result-size cap)")
        rows.update(_freeze(row) for row in chunk)
    return rows


def _execute_pair(url: str, pred_sql: object, gold_sql: object, timeout: float, max_rows: int) -> dict[str, Any]:
    """One pair under one deadline (BIRD's per-pair time budget); never raises."""
    start = time.monotonic()
    results = []
    for side, sql in (("predicted", pred_sql), ("gold", gold_sql)):
        try:
            results.append(fetch_rows(url, single_statement(sql), start + timeout, max_rows))
        except QueryFailed as failure:
            reason = f"{failure.kind}: {side} SQL: {failure.detail}"
            if failure.kind == "timeout":
                reason += f" ({timeout:g} s)"
            return _record(0, reason, start)
        except Exception as exc:  # an executor bug or driver oddity must not stop a batch
            return _record(0, f"error: {side} SQL: {type(exc).__name__}: {exc}", start)
    score = int(rows_match(*results))
    return _record(score, "ok" if score else "mismatch", start)


def _record(score: int, reason: str, start: float | None = None) -> dict[str, Any]:
    return {"score": score, "reason": reason, "seconds": 0.0 if start is None else time.monotonic() - start}


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------

_Job = tuple[int, str, object, object]  # (input index, database URL, predicted SQL, gold SQL)


def _run_jobs(jobs: Sequence[_Job], timeout: float, max_rows: int) -> list[tuple[int, dict[str, Any]]]:
    """Worker entry point (top-level so it pickles): run a chunk of pairs in order."""
    return [(index, _execute_pair(url, pred, gold, timeout, max_rows)) for index, url, pred, gold in jobs]


def default_workers() -> int:
    """The CPUs this process may use, capped at MAX_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver: workers fork from a clean server, never from a parent holding torch's threads."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # workers start with SQLAlchemy already imported
    return context


def _run_parallel(jobs: list[_Job], timeout: float, max_rows: int, workers: int) -> list[tuple[int, dict[str, Any]]]:
    """Chunks of pairs grouped by database (connections are reused) over a bounded process pool."""
    jobs = sorted(jobs, key=lambda job: job[1])
    size = math.ceil(len(jobs) / (workers * 4))
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    out: list[tuple[int, dict[str, Any]]] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context()) as executor:
        futures = {executor.submit(_run_jobs, chunk, timeout, max_rows): chunk for chunk in chunks}
        for future in as_completed(futures):
            try:
                out.extend(future.result())
            except Exception as exc:  # e.g. a worker killed by the OS: its pairs score 0
                out.extend((job[0], _record(0, f"error: worker process failed: {exc!r}")) for job in futures[future])
    return out


def execute_pairs(
    pred_sqls: Sequence[object],
    gold_sqls: Sequence[object],
    db_names: Sequence[object],
    db_root_path: str | Path | None = None,
    *,
    db_urls: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_rows: int = DEFAULT_MAX_ROWS,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Execute each (predicted, gold) pair on its database; one record per pair, in input order.

    A record is `{"score": 1 | 0, "reason": str, "seconds": float}`; score is 1 when the row sets
    are equal. Bad input (missing or unknown database, a name outside the root, empty SQL) scores 0
    with its reason; nothing raises out of the batch. `workers` processes (default: the CPU count)
    run the pairs; 1 runs them in this process.
    """
    if not len(pred_sqls) == len(gold_sqls) == len(db_names):
        raise ConfigError(
            f"pred_sqls, gold_sqls and db_names must have the same length, got "
            f"{len(pred_sqls)}, {len(gold_sqls)} and {len(db_names)}"
        )
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    records: list[dict[str, Any]] = [{}] * len(pred_sqls)
    jobs: list[_Job] = []
    for index, (pred, gold, db_name) in enumerate(zip(pred_sqls, gold_sqls, db_names)):
        try:
            jobs.append((index, resolve_database(db_name, db_root_path, db_urls), pred, gold))
        except ConfigError as exc:
            records[index] = _record(0, f"error: database: {exc}")
    if workers == 1 or len(jobs) <= 1:
        results = _run_jobs(jobs, timeout, max_rows)
    else:
        results = _run_parallel(jobs, timeout, max_rows, workers)
    for index, record in results:
        records[index] = record
    return records
