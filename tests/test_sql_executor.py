"""The read-only SQL executor and the BIRD metric: real Spider databases, hostile SQL, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from iterative_label_refinement.core import sql_executor
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.core.sql_executor import QueryFailed, execute_pairs, rows_match, single_statement
from iterative_label_refinement.metrics.eval_bird import (
    accuracy_by_difficulty,
    bird_eval_func,
    check_bird_databases,
    same_execution_result,
)

# ---------------------------------------------------------------------------------------------
# Real data: Spider dev (same layout as BIRD)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def spider(shared_data) -> tuple[Path, list[dict]]:
    """The database root and the dev questions whose database is present."""
    root = shared_data / "spider" / "database"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    rows = json.loads((shared_data / "spider" / "dev.json").read_text())
    return root, [row for row in rows if (root / row["db_id"] / f"{row['db_id']}.sqlite").is_file()]


def test_spider_gold_against_itself_scores_one(spider):
    root, rows = spider
    assert len({row["db_id"] for row in rows}) == 19
    queries, dbs = [row["query"] for row in rows], [row["db_id"] for row in rows]
    records = execute_pairs(queries, queries, dbs, root, workers=2)
    assert [r for r in records if r["score"] != 1] == []
    assert {r["reason"] for r in records} == {"ok"}


def _plain_rows(root: Path, db: str, sql: str) -> set:
    conn = sqlite3.connect(f"file:{root / db / db}.sqlite?mode=ro", uri=True)
    try:
        return set(conn.execute(sql).fetchall())
    finally:
        conn.close()


def test_spider_gold_against_another_question(spider):
    """Each gold query against the next different gold query on the same database."""
    root, rows = spider
    preds, golds, dbs = [], [], []
    for i, row in enumerate(rows):
        other = next((o for o in rows[i + 1 :] if o["db_id"] == row["db_id"] and o["query"] != row["query"]), None)
        if other:
            preds.append(other["query"])
            golds.append(row["query"])
            dbs.append(row["db_id"])
    records = execute_pairs(preds, golds, dbs, root, in_process=True)
    expected = [int(_plain_rows(root, d, p) == _plain_rows(root, d, g)) for p, g, d in zip(preds, golds, dbs)]
    assert [r["score"] for r in records] == expected
    assert expected.count(0) > 0.8 * len(expected)  # most differ, and those all score 0
    assert {r["reason"] for r, e in zip(records, expected) if e == 0} == {"mismatch"}


# ---------------------------------------------------------------------------------------------
# Hostile SQL never changes a database
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def db_root(tmp_path) -> Path:
    """`<root>/shop/shop.sqlite` with a 1,000-row table, written here (no real data needed)."""
    path = tmp_path / "dbs" / "shop" / "shop.sqlite"
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.executemany("INSERT INTO item VALUES (?, ?, ?)", [(i, f"item{i}", i * 1.5) for i in range(1000)])
    conn.commit()
    conn.close()
    return tmp_path / "dbs"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder_listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


HOSTILE = [
    "DROP TABLE item",
    "DELETE FROM item",
    "UPDATE item SET price = 0",
    "INSERT INTO item VALUES (5000, 'x', 1.0)",
    "CREATE TABLE evil (x)",
    "ATTACH DATABASE 'evil.db' AS evil",
    "PRAGMA writable_schema=1",
    "PRAGMA query_only=0",
    "VACUUM",
    "VACUUM INTO 'copy.db'",
    "SELECT 1; DROP TABLE item",
    "SELECT count(*) FROM item; DELETE FROM item;",
    "UPDATE sqlite_master SET sql = ''",  # allowed by the authorizer for table-valued pragmas only
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_sql_scores_zero_and_changes_nothing(db_root, sql):
    db = db_root / "shop" / "shop.sqlite"
    before, listing = _sha256(db), _folder_listing(db_root)
    [record] = execute_pairs([sql], ["SELECT count(*) FROM item"], ["shop"], db_root, in_process=True)
    assert record["score"] == 0
    assert record["reason"].startswith("error: predicted SQL: ")
    assert _sha256(db) == before
    assert _folder_listing(db_root) == listing  # ATTACH / VACUUM INTO created no file
    # and the database still answers
    assert (
        execute_pairs(["SELECT count(*) FROM item"], ["SELECT 1000"], ["shop"], db_root, in_process=True)[0]["score"]
        == 1
    )


def test_hostile_batch_in_the_pool_keeps_order_and_files(db_root):
    db = db_root / "shop" / "shop.sqlite"
    before = _sha256(db)
    ok = "SELECT name FROM item WHERE id < 3"
    sqls = [ok] + HOSTILE + [ok]
    records = execute_pairs(sqls, [ok] * len(sqls), ["shop"] * len(sqls), db_root, workers=2)
    assert [r["score"] for r in records] == [1] + [0] * len(HOSTILE) + [1]
    assert _sha256(db) == before


def test_never_ending_query_stops_at_the_timeout(db_root):
    db = db_root / "shop" / "shop.sqlite"
    before = _sha256(db)
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
    start = time.monotonic()
    [record] = execute_pairs([forever], ["SELECT 1"], ["shop"], db_root, timeout=1.0, in_process=True)
    assert time.monotonic() - start < 2.0
    assert record["score"] == 0 and record["reason"].startswith("timeout: predicted SQL")
    assert _sha256(db) == before


def test_huge_cross_join_is_capped(db_root):
    """10^12 rows: stopped by the row cap (or the deadline) without exhausting memory."""
    cross = "SELECT * FROM item a, item b, item c, item d"
    start = time.monotonic()
    [record] = execute_pairs([cross], ["SELECT 1"], ["shop"], db_root, timeout=3.0, max_rows=100_000, in_process=True)
    assert time.monotonic() - start < 4.0
    assert record["score"] == 0
    assert record["reason"] == "error: predicted SQL: more than 100000 result rows (result-size cap)"


def test_gold_side_failures_are_reported_as_gold(db_root):
    [record] = execute_pairs(["SELECT 1"], ["SELECT nope FROM item"], ["shop"], db_root, in_process=True)
    assert record == {"score": 0, "reason": "error: gold SQL: no such column: nope", "seconds": record["seconds"]}


@pytest.mark.parametrize("in_process", [True, False])
def test_wal_database_is_read_without_any_file_appearing(tmp_path, in_process):
    """A WAL-mode database: unchanged, and no -wal/-shm file beside it (plain `mode=ro` creates both)."""
    db = tmp_path / "dbs" / "walled" / "walled.sqlite"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
    conn.commit()
    conn.close()  # the last connection checkpoints and removes its -wal and -shm files
    before, listing = _sha256(db), _folder_listing(tmp_path)
    assert listing == ["dbs", "dbs/walled", "dbs/walled/walled.sqlite"]
    records = execute_pairs(
        ["SELECT sum(x) FROM t", "DELETE FROM t"],
        [f"SELECT {sum(range(50))}", "SELECT 1"],
        ["walled"] * 2,
        tmp_path / "dbs",
        in_process=in_process,
    )
    assert [r["score"] for r in records] == [1, 0]
    assert _sha256(db) == before
    assert _folder_listing(tmp_path) == listing


def test_changes_left_in_a_wal_file_are_refused_not_ignored(tmp_path):
    db = tmp_path / "dbs" / "walled" / "walled.sqlite"
    db.parent.mkdir(parents=True)
    writer = sqlite3.connect(db)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("INSERT INTO t VALUES (1)")
    writer.commit()  # still open: the change lives in the -wal file only
    try:
        [record] = execute_pairs(["SELECT x FROM t"], ["SELECT 1"], ["walled"], tmp_path / "dbs", in_process=True)
    finally:
        writer.close()
    assert record["score"] == 0
    assert (
        "walled.sqlite-wal' holds changes" in record["reason"] or "walled.sqlite-wal holds changes" in record["reason"]
    )


def test_table_valued_pragmas_are_reads(db_root):
    columns = "SELECT name FROM pragma_table_info('item') ORDER BY cid"
    records = execute_pairs(
        [columns, "PRAGMA table_info(item)"],
        ["SELECT 'id' UNION SELECT 'name' UNION SELECT 'price'", columns],
        ["shop"] * 2,
        db_root,
        in_process=True,
    )
    assert records[0]["reason"] == "ok"
    assert records[1]["reason"] == "mismatch"  # six columns against one: executed, not refused


HUGE_SINGLE_CALLS = {
    # No progress handler runs inside one C call: this one takes about 25 s without a limit.
    "instr": "SELECT instr(printf('%.*c', 15000000, 'a'), printf('%.*c', 100000, 'a') || 'b')",
    "randomblob": "SELECT length(randomblob(2000000000))",
    "zeroblob": "SELECT hex(zeroblob(1000000000))",
}


@pytest.mark.parametrize("name", sorted(HUGE_SINGLE_CALLS))
def test_a_huge_single_sqlite_call_stops_within_timeout_plus_one_second(db_root, name):
    timeout = 1.0
    start = time.monotonic()
    [record, after] = execute_pairs(
        [HUGE_SINGLE_CALLS[name], "SELECT 1"], ["SELECT 1", "SELECT 1"], ["shop"] * 2, db_root, timeout=timeout,
        workers=2,
    )  # fmt: skip
    assert record["score"] == 0 and after["score"] == 1
    assert record["seconds"] < timeout + 1.0 + 0.2  # stopped within timeout + 1 s (0.2 s for the pipes)
    assert time.monotonic() - start < timeout + 5.0  # and the batch went on (a loose bound: no timing test)
    expected = {
        "instr": "timeout: ran past the time limit (1 s) inside one SQLite call; worker killed",
        "randomblob": "error: predicted SQL: string or blob too big",
        "zeroblob": "error: predicted SQL: string or blob too big",
    }[name]
    assert record["reason"] == expected


def test_a_result_large_in_bytes_under_the_row_cap_is_refused(db_root):
    big = "SELECT printf('%.*c', 1000, 'y') || id FROM item"  # 1,000 rows of about 1 KB
    [record] = execute_pairs([big], ["SELECT 1"], ["shop"], db_root, max_bytes=500_000, workers=2)
    assert record["reason"] == "error: predicted SQL: more than 500000 bytes of result values (result-size cap)"
    [fits] = execute_pairs([big], [big], ["shop"], db_root, max_bytes=2_000_000, workers=2)
    assert fits["reason"] == "ok"


def test_a_worker_killed_by_the_os_does_not_score_its_pairs_zero(db_root):
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 400000) SELECT count(*) FROM c"
    execute_pairs(["SELECT 1"], ["SELECT 1"], ["shop"], db_root, workers=2)  # start the pool
    victim = sql_executor._POOL.workers[0].proc.pid
    threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
    records = execute_pairs([slow] * 12, ["SELECT 400000"] * 12, ["shop"] * 12, db_root, workers=2)
    assert [r["reason"] for r in records] == ["ok"] * 12
    assert victim not in [w.proc.pid for w in sql_executor._POOL.workers]


SCRIPT = """
from iterative_label_refinement.metrics.eval_bird import bird_eval_func

gold = [f"SELECT name FROM item WHERE id < {n}" for n in range(1, 41)]
scores = bird_eval_func(gold, gold, ["shop"] * len(gold), ROOT)
print("SCORES", sum(scores), len(scores))
"""


@pytest.mark.parametrize("how", ["stdin", "file without a main guard"])
def test_scripts_without_a_main_guard_or_read_from_stdin_score_through_the_pool(db_root, tmp_path, how):
    script = SCRIPT.replace("ROOT", repr(str(db_root)))
    env = dict(os.environ, ILR_BIRD_DB_URLS="")
    if how == "stdin":
        run = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, env=env, timeout=120)
    else:
        path = tmp_path / "score.py"
        path.write_text(script)
        run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "SCORES 40 40"
    assert "'ok': 40" in run.stderr  # the metric's log line: every pair ran and matched


# ---------------------------------------------------------------------------------------------
# Bad input: 0 with a clear reason, never an exception out of the batch
# ---------------------------------------------------------------------------------------------


def test_bad_input_scores_zero_with_reasons(db_root, tmp_path):
    good = "SELECT id FROM item"
    records = execute_pairs(
        [good, good, good, good, "", "   -- only a comment\n", None, good],
        [good] * 8,
        ["unknown_db", "../dbs/shop", "shop/../shop", None, "shop", "shop", "shop", "shop"],
        db_root,
        workers=2,
    )
    reasons = [r["reason"] for r in records]
    assert [r["score"] for r in records] == [0] * 7 + [1]
    assert reasons[0].startswith("error: database: unknown database 'unknown_db'")
    assert "'../dbs/shop' is not a plain folder name" in reasons[1]
    assert "'shop/../shop' is not a plain folder name" in reasons[2]
    assert "None is not a plain folder name" in reasons[3]
    assert reasons[4] == reasons[5] == "error: predicted SQL: empty SQL"
    assert reasons[6] == "error: predicted SQL: SQL must be a string, got NoneType"
    missing_root = execute_pairs([good], [good], ["shop"], tmp_path / "nowhere", in_process=True)[0]
    assert missing_root["score"] == 0 and "database root" in missing_root["reason"]


def test_mismatched_lengths_are_a_config_error(db_root):
    with pytest.raises(ConfigError, match="same length"):
        execute_pairs(["SELECT 1"], [], ["shop"], db_root)


def test_per_database_urls(db_root, tmp_path):
    """A SQLAlchemy URL per database; SQLite URLs are as read-only as the folder layout."""
    db = db_root / "shop" / "shop.sqlite"
    before = _sha256(db)
    urls = {
        "elsewhere": f"sqlite:///{db}",
        "gone": f"sqlite:///{tmp_path / 'gone.sqlite'}",
        "mysqldb": "mysql://user@localhost/db",
    }
    records = execute_pairs(
        ["SELECT count(*) FROM item", "DELETE FROM item", "SELECT 1", "SELECT 1"],
        ["SELECT 1000", "SELECT 1", "SELECT 1", "SELECT 1"],
        ["elsewhere", "elsewhere", "gone", "mysqldb"],
        db_urls=urls,
        in_process=True,
    )
    assert [r["score"] for r in records] == [1, 0, 0, 0]
    assert "not authorized" in records[1]["reason"]
    assert records[2]["reason"] == "error: predicted SQL: unable to open database file"
    assert "unsupported database backend 'mysql'" in records[3]["reason"]
    assert _sha256(db) == before
    assert not (tmp_path / "gone.sqlite").exists()  # read-only mode never creates a file


def test_rows_match_ignores_order_and_duplicates():
    assert rows_match([(1, "a"), (2, "b"), (1, "a")], [(2, "b"), (1, "a")])
    assert not rows_match([(1,)], [(1,), (2,)])
    assert not rows_match([(1, 2)], [(2, 1)])  # column order matters


def test_single_statement():
    assert single_statement("  SELECT 1 ;  ") == "SELECT 1"
    assert single_statement("SELECT ';' AS x") == "SELECT ';' AS x"
    assert single_statement("SELECT 1; -- done") == "SELECT 1"
    with pytest.raises(QueryFailed, match="several statements"):
        single_statement("SELECT 1; SELECT 2")


# ---------------------------------------------------------------------------------------------
# The BIRD metric module
# ---------------------------------------------------------------------------------------------


def test_bird_eval_func_reference_signature(db_root, monkeypatch):
    monkeypatch.delenv("ILR_BIRD_DB_URLS", raising=False)
    scores = bird_eval_func(
        ["SELECT name FROM item WHERE id = 1", "SELECT name FROM item WHERE id = 2", "DROP TABLE item"],
        ["SELECT 'item1'", "SELECT 'item1'", "SELECT 1"],
        ["shop", "shop", "shop"],
        str(db_root),
        5.0,
    )
    assert scores == [1, 0, 0]
    assert same_execution_result(["SELECT 1"], ["SELECT 1.0"], ["shop"], db_root) == [True]  # SQLite: 1 == 1.0


def test_bird_db_urls_from_settings(db_root, tmp_path, monkeypatch):
    mapping = tmp_path / "urls.json"
    mapping.write_text(json.dumps({"copy": f"sqlite:///{db_root / 'shop' / 'shop.sqlite'}"}))
    monkeypatch.setenv("ILR_BIRD_DB_URLS", str(mapping))
    assert bird_eval_func(["SELECT count(*) FROM item"], ["SELECT 1000"], ["copy"], None) == [1]
    mapping.write_text("not json")
    with pytest.raises(ConfigError, match="ILR_BIRD_DB_URLS"):
        bird_eval_func(["SELECT 1"], ["SELECT 1"], ["copy"], None)


def test_accuracy_by_difficulty():
    rows = [{"difficulty": d} for d in ["challenging", "simple", "simple", "moderate", "extra"]]
    report = accuracy_by_difficulty([1, 1, 0, 0, 1], rows)
    assert list(report) == ["all", "simple", "moderate", "challenging", "extra"]
    assert report["all"] == {"accuracy": 0.6, "count": 5}
    assert report["simple"] == {"accuracy": 0.5, "count": 2}
    assert accuracy_by_difficulty([1, 0], [{"question": "q"}, {"question": "r"}]) == {
        "all": {"accuracy": 0.5, "count": 2}
    }


def test_check_bird_databases(db_root, monkeypatch):
    monkeypatch.delenv("ILR_BIRD_DB_URLS", raising=False)
    check_bird_databases(["shop", "shop"], db_root)
    with pytest.raises(ConfigError, match="unknown database 'cars'"):
        check_bird_databases(["shop", "cars"], db_root)
