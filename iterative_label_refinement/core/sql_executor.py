"""Execution accuracy for text-to-SQL: run predicted and gold SQL read-only and compare row sets.

Model-written SQL is untrusted. The reference release ran it on writable connections with thread
timeouts that left the query running, so one generated `DROP TABLE` changed the
benchmark for good. The threats and the defence against each:

* Writing to a benchmark: SQLite databases are opened `mode=ro&immutable=1` (SQLite creates no
  journal, `-wal` or `-shm` file, even for a WAL-mode database or on read-only media) with
  `query_only`, and an authorizer refuses everything except reading: no writes, schema changes,
  `ATTACH` (which `VACUUM INTO` also uses) or setting pragmas. Reading pragmas and their
  table-valued forms (`pragma_table_info(...)`) are allowed. A database with a non-empty `-wal`
  file is refused, because `immutable` would silently ignore the changes held there.
* Several statements in one string: one statement per call.
* A query that never ends: a progress handler stops it past its deadline (between SQLite steps).
* Time or memory spent inside one SQLite call, where no progress handler runs (`instr` on long
  strings, huge `randomblob`/`printf`): strings and blobs are capped at `MAX_VALUE_BYTES`
  (`SQLITE_LIMIT_LENGTH`), and pool workers run under an address-space limit (`WORKER_MEMORY`
  over their start-up size) and are killed `KILL_GRACE` seconds past a pair's deadline.
* Huge results: at most `max_rows` rows and `max_bytes` bytes of values per query.
* A failing worker: its pairs go to a fresh worker; a pair that kills two workers scores 0 with
  that reason (a query that exhausts memory does this); a pool that cannot start raises.

Pairs run in a persistent pool of worker processes (`python -m` this module, fed over pipes, so no
script's `__main__` is ever re-imported, and a worker exits when its parent does), one pair at a
time, results in input order, one record per pair with its reason: `ok`, `mismatch`,
`error: ...` or `timeout: ...`. `in_process=True` runs trusted SQL in the caller's process, without
the kill and memory limits.

Databases are `<root>/<db>/<db>.sqlite` (BIRD's and Spider's layout) or, per database, any
SQLAlchemy URL: SQLite URLs get the same read-only connection, PostgreSQL runs each query in a
`READ ONLY` transaction with a server-side `statement_timeout`.
"""

from __future__ import annotations

import atexit
import collections
import functools
import os
import re
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.settings import ConfigError, get_logger

logger = get_logger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds per pair (predicted + gold), as in BIRD
DEFAULT_MAX_ROWS = 1_000_000  # rows fetched per query before it counts as an error
DEFAULT_MAX_BYTES = 256 * 2**20  # bytes of result values per query (strings and blobs by length, others 8)
MAX_VALUE_BYTES = 16 * 2**20  # the longest string or blob a query may build (SQLITE_LIMIT_LENGTH)
WORKER_MEMORY = 2 * 2**30  # address space a pool worker may add to its start-up size
KILL_GRACE = 1.0  # seconds past a pair's deadline before its worker is killed (stuck in one SQLite call)
WORKER_START_TIMEOUT = 60.0
MAX_WORKERS = 32
_PROGRESS_STEPS = 10_000  # SQLite VM steps between deadline checks (well under a millisecond)
_FETCH_SIZE = 10_000
_IN_FLIGHT = 2  # chunks queued per worker, so a worker never waits for the parent
_CHUNK_SECONDS = 0.01  # pairs per message: about this much work (IPC costs more than a light query)
_REPORT_EVERY = 0.005  # a worker reports finished pairs at least this often

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
# A table-valued pragma (`pragma_table_info('t')`) makes SQLite authorize UPDATE on the schema
# table's columns while it reads the schema; the connection is read-only and `writable_schema`
# is refused, so allowing exactly that cannot write (tests check `UPDATE sqlite_master` still fails).
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema"})
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
    if ";" not in statement:  # the common case, without the character scan
        return statement
    end = next(_top_level_semicolons(statement), None)
    if end is None:
        return statement
    if _COMMENTS.sub("", statement[end + 1 :]).strip(" \t\r\n;"):
        raise QueryFailed("error", "several statements in one string; one statement per call")
    return statement[:end]


def _sqlite_url(path: Path) -> str:
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path.absolute())).render_as_string()


def resolve_database(db_name: object, db_root_path: str | Path | None, db_urls: Mapping[str, str] | None = None) -> str:
    """The SQLAlchemy URL of database `db_name`: its entry in `db_urls`, else `<root>/<db>/<db>.sqlite`.

    Raises ConfigError naming the bad value: a name that is not a plain folder name (`../x`), a
    missing root, an unknown database, a database with changes still in its `-wal` file.
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
    return _sqlite_url(path)


# ---------------------------------------------------------------------------------------------
# One query, read-only, with a deadline
# ---------------------------------------------------------------------------------------------


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_ONLY_PRAGMAS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_UPDATE and (arg1 or "").lower() in _SCHEMA_TABLES:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


class _Deadline:
    """SQLite progress handler: a non-zero return interrupts the running statement."""

    def __init__(self) -> None:
        self.at = 0.0
        self.hit = False

    def __call__(self) -> int:
        if time.monotonic() > self.at:
            self.hit = True
            return 1
        return 0


class _SqliteDatabase:
    """One read-only connection, reused for every query on this database in this process."""

    def __init__(self, path: str):
        wal = Path(path + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            raise QueryFailed("error", f"{wal} holds changes not in the database file: checkpoint it first")
        # immutable: SQLite takes no locks and creates no file beside the database (no -wal/-shm)
        uri = Path(path).absolute().as_uri() + "?mode=ro&immutable=1"
        try:
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise QueryFailed("error", str(exc)) from None
        self.conn.execute("PRAGMA query_only = ON")
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        self.conn.set_authorizer(_authorize)
        self.deadline = _Deadline()
        self.conn.set_progress_handler(self.deadline, _PROGRESS_STEPS)

    def rows(self, sql: str, deadline: float, max_rows: int, max_bytes: int) -> set[tuple]:
        self.deadline.at, self.deadline.hit = deadline, False
        try:
            cursor = self.conn.execute(sql)
            if cursor.description is None:
                raise QueryFailed("error", "the statement returns no rows")
            return _read_rows(iter(functools.partial(cursor.fetchmany, _FETCH_SIZE), []), max_rows, max_bytes)
        except sqlite3.Error as exc:
            if self.deadline.hit:
                raise QueryFailed("timeout", "ran past the time limit") from None
            message = str(exc)
            if "not authorized" in message:
                message += " (read-only executor: writes, schema changes, ATTACH and setting pragmas are refused)"
            raise QueryFailed("error", message) from None
        finally:
            if self.conn.in_transaction:  # a `BEGIN` must not carry over to the next query
                self.conn.rollback()


class _PostgresDatabase:
    """SQLAlchemy, each query in a READ ONLY transaction with a server-side statement timeout."""

    def __init__(self, url: Any):
        from sqlalchemy import create_engine

        self.engine = create_engine(url, pool_size=1)

    def rows(self, sql: str, deadline: float, max_rows: int, max_bytes: int) -> set[tuple]:
        from sqlalchemy.exc import DBAPIError

        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                milliseconds = max(1, int((deadline - time.monotonic()) * 1000))
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
                result = conn.execution_options(stream_results=True).exec_driver_sql(sql)
                try:
                    if not result.returns_rows:
                        raise QueryFailed("error", "the statement returns no rows")
                    return _read_rows(result.partitions(_FETCH_SIZE), max_rows, max_bytes)
                finally:
                    conn.rollback()
        except DBAPIError as exc:
            message = str(exc.orig)
            if "statement timeout" in message:
                raise QueryFailed("timeout", "ran past the time limit") from None
            raise QueryFailed("error", message) from None


_DATABASES: dict[str, _SqliteDatabase | _PostgresDatabase] = {}  # per process, by URL


def _database(url: str) -> _SqliteDatabase | _PostgresDatabase:
    if url not in _DATABASES:
        from sqlalchemy import make_url

        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            _DATABASES[url] = _SqliteDatabase(parsed.database or "")
        elif backend == "postgresql":
            _DATABASES[url] = _PostgresDatabase(parsed)
        else:
            raise QueryFailed("error", f"unsupported database backend {backend!r} (supported: sqlite, postgresql)")
    return _DATABASES[url]


def _freeze(row: Iterable[Any]) -> tuple:
    """A hashable row; unhashable values (e.g. PostgreSQL arrays) compare by their repr."""
    values = tuple(row)
    try:
        hash(values)
        return values
    except TypeError:
        return tuple(v if isinstance(v, Hashable) else repr(v) for v in values)


def _read_rows(chunks: Iterable[Sequence[Any]], max_rows: int, max_bytes: int) -> set[tuple]:
    rows: set[tuple] = set()
    fetched = size = 0
    for chunk in chunks:
        fetched += len(chunk)
        if fetched > max_rows:
            raise QueryFailed("error", f"more than {max_rows} result rows (result-size cap)")
        size += sum(len(v) if isinstance(v, (str, bytes)) else 8 for row in chunk for v in row)
        if size > max_bytes:
            raise QueryFailed("error", f"more than {max_bytes} bytes of result values (result-size cap)")
        rows.update(_freeze(row) for row in chunk)
    return rows


def fetch_rows(
    url: str, sql: str, deadline: float, max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES
) -> set[tuple]:
    """The distinct result rows of one statement; `QueryFailed` on any error or past `deadline`."""
    if time.monotonic() >= deadline:
        raise QueryFailed("timeout", "no time left before it started")
    return _database(url).rows(sql, deadline, max_rows, max_bytes)


def _execute_pair(
    url: str, pred_sql: object, gold_sql: object, timeout: float, max_rows: int, max_bytes: int
) -> dict[str, Any]:
    """One pair under one deadline (BIRD's per-pair time budget); never raises."""
    start = time.monotonic()
    results = []
    for side, sql in (("predicted", pred_sql), ("gold", gold_sql)):
        try:
            results.append(fetch_rows(url, single_statement(sql), start + timeout, max_rows, max_bytes))
        except QueryFailed as failure:
            reason = f"{failure.kind}: {side} SQL: {failure.detail}"
            if failure.kind == "timeout":
                reason += f" ({timeout:g} s)"
            return _record(0, reason, start)
        except MemoryError:
            return _record(0, f"error: {side} SQL: out of memory (worker memory limit)", start)
        except Exception as exc:  # an executor bug or driver oddity must not stop a batch
            return _record(0, f"error: {side} SQL: {type(exc).__name__}: {exc}", start)
    score = int(rows_match(*results))
    return _record(score, "ok" if score else "mismatch", start)


def _record(score: int, reason: str, start: float | None = None) -> dict[str, Any]:
    return {"score": score, "reason": reason, "seconds": 0.0 if start is None else time.monotonic() - start}


# ---------------------------------------------------------------------------------------------
# The worker pool
# ---------------------------------------------------------------------------------------------

_Job = tuple[int, str, object, object]  # (input index, database URL, predicted SQL, gold SQL)


def default_workers() -> int:
    """The CPUs this process may use, capped at MAX_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def _worker_main() -> None:
    """A pool worker: chunks of pairs in on stdin, records out on the original stdout; exits at end of input."""
    out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # a stray print must not corrupt the record stream
    size = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + WORKER_MEMORY, size + WORKER_MEMORY))
    jobs = Connection(0, writable=False)
    out.send("ready")
    while True:
        try:
            chunk, settings = jobs.recv()
        except EOFError:
            return
        done: list[dict[str, Any]] = []
        sent = time.monotonic()
        for _, url, pred, gold in chunk:
            done.append(_execute_pair(url, pred, gold, *settings))
            if time.monotonic() - sent > _REPORT_EVERY:  # the parent times each pair from these reports
                out.send(done)
                done, sent = [], time.monotonic()
        if done:
            out.send(done)


class _Worker:
    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __spec__.name if __spec__ else "iterative_label_refinement.core.sql_executor"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.jobs = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self.results = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.in_flight: collections.deque[_Job] = collections.deque()
        self.busy_since = 0.0  # when the pair at the head of `in_flight` started (at the latest)
        self.chunks: collections.deque[int] = collections.deque()  # unfinished pairs of each chunk sent

    def send(self, chunk: list[_Job], settings: tuple) -> None:
        if not self.in_flight:
            self.busy_since = time.monotonic()
        self.in_flight.extend(chunk)
        self.chunks.append(len(chunk))
        try:
            self.jobs.send((chunk, settings))
        except OSError:  # the worker died; `run` sees the end of its results and handles the pair
            pass

    def finished(self) -> _Job:
        """Forget the pair at the head (done, or its worker is gone) and return it."""
        self.chunks[0] -= 1
        if not self.chunks[0]:
            self.chunks.popleft()
        return self.in_flight.popleft()

    def stop(self) -> int:
        self.proc.kill()
        for conn in (self.jobs, self.results):
            conn.close()
        return self.proc.wait()


class _Pool:
    """Persistent worker processes; `run` hands out pairs and watches the deadlines."""

    def __init__(self, size: int):
        self.size = size
        self.workers = [_Worker() for _ in range(size)]
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        for worker in self.workers:
            self._wait_ready(worker, deadline)

    def _wait_ready(self, worker: _Worker, deadline: float) -> None:
        try:
            if worker.results.poll(max(0.0, deadline - time.monotonic())) and worker.results.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        status = worker.stop()
        raise RuntimeError(
            f"SQL executor: a worker process ({sys.executable} -m {__name__}) did not start (exit status "
            f"{status}); see its error output above"
        )

    def _replace(self, worker: _Worker) -> int:
        """A fresh worker in its place; not waited for (its first message is "ready"), so no pair waits."""
        status = worker.stop()
        self.workers[self.workers.index(worker)] = _Worker()
        return status

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()

    def run(self, jobs: Sequence[_Job], timeout: float, max_rows: int, max_bytes: int) -> list[tuple[int, dict]]:
        settings = (timeout, max_rows, max_bytes)
        todo = collections.deque(jobs)
        deaths: collections.Counter[int] = collections.Counter()
        out: list[tuple[int, dict]] = []
        seconds, finished = 0.0, 0  # for the chunk size
        while todo or any(w.in_flight for w in self.workers):
            per_pair = seconds / finished if finished else _CHUNK_SECONDS  # one pair a chunk until timed
            chunk_size = max(1, min(256, int(_CHUNK_SECONDS / max(per_pair, 1e-6))))
            for worker in self.workers:
                while todo and len(worker.chunks) < _IN_FLIGHT:
                    worker.send([todo.popleft() for _ in range(min(chunk_size, len(todo)))], settings)
            busy = [w for w in self.workers if w.in_flight]
            next_kill = min(w.busy_since + timeout + KILL_GRACE for w in busy)
            ready = wait([w.results for w in busy], timeout=max(0.0, next_kill - time.monotonic()))
            for worker in busy:
                if worker.results in ready:
                    try:
                        records = worker.results.recv()
                    except (EOFError, OSError):  # the worker died (killed by the OS, out of memory)
                        job = worker.finished()
                        todo.extendleft(reversed(worker.in_flight))
                        status = self._replace(worker)
                        deaths[job[0]] += 1
                        if deaths[job[0]] < 2:
                            logger.warning("SQL worker died (exit status %s); retrying its pair", status)
                            todo.appendleft(job)
                        else:
                            reason = f"error: the worker process died twice running this pair (exit status {status})"
                            out.append((job[0], _record(0, reason)))
                        continue
                    if records == "ready":  # a replacement worker has started: its first pair starts now
                        worker.busy_since = time.monotonic()
                        continue
                    for record in records:
                        out.append((worker.finished()[0], record))
                        seconds, finished = seconds + record["seconds"], finished + 1
                    worker.busy_since = time.monotonic()
                elif time.monotonic() > worker.busy_since + timeout + KILL_GRACE:  # stuck inside one SQLite call
                    job, started = worker.finished(), worker.busy_since
                    todo.extendleft(reversed(worker.in_flight))
                    self._replace(worker)
                    reason = f"timeout: ran past the time limit ({timeout:g} s) inside one SQLite call; worker killed"
                    out.append((job[0], _record(0, reason, started)))
        return out


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _close_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.close()
        _POOL = None


atexit.register(_close_pool)


def _run_in_pool(jobs: list[_Job], timeout: float, max_rows: int, max_bytes: int, workers: int) -> list:
    """The shared pool of `workers` processes (started on first use, restarted when the size changes)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL.size != workers:
            _close_pool()
        if _POOL is None:
            _POOL = _Pool(workers)
        try:
            return _POOL.run(jobs, timeout, max_rows, max_bytes)
        except BaseException:  # e.g. KeyboardInterrupt: workers may hold stale pairs
            _close_pool()
            raise


def execute_pairs(
    pred_sqls: Sequence[object],
    gold_sqls: Sequence[object],
    db_names: Sequence[object],
    db_root_path: str | Path | None = None,
    *,
    db_urls: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int | None = None,
    in_process: bool = False,
) -> list[dict[str, Any]]:
    """Execute each (predicted, gold) pair on its database; one record per pair, in input order.

    A record is `{"score": 1 | 0, "reason": str, "seconds": float}`; score is 1 when the row sets
    are equal. Bad input (missing or unknown database, a name outside the root, empty SQL) scores 0
    with its reason. `workers` pool processes (default: the CPU count) run the pairs;
    `in_process=True` runs them in this process (trusted SQL: no kill or memory limit).
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
    urls: dict[object, str | ConfigError] = {}  # resolved once per database name
    for index, (pred, gold, db_name) in enumerate(zip(pred_sqls, gold_sqls, db_names)):
        key = db_name if isinstance(db_name, Hashable) else repr(db_name)
        if key not in urls:
            try:
                urls[key] = resolve_database(db_name, db_root_path, db_urls)
            except ConfigError as exc:
                urls[key] = exc
        if isinstance(urls[key], ConfigError):
            records[index] = _record(0, f"error: database: {urls[key]}")
        else:
            jobs.append((index, urls[key], pred, gold))
    if in_process:
        results = [(i, _execute_pair(url, p, g, timeout, max_rows, max_bytes)) for i, url, p, g in jobs]
    elif jobs:
        results = _run_in_pool(jobs, timeout, max_rows, max_bytes, workers)
    else:
        results = []
    for index, record in results:
        records[index] = record
    return records


if __name__ == "__main__":
    _worker_main()
