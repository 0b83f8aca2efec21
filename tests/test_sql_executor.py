"""The read-only SQL executor and the BIRD metric: real Spider databases, hostile SQL, bad input."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from iterative_label_refinement.core.common import ConfigError
from iterative_label_refinement.core.sql_executor import QueryFailed, execute_pairs, rows_match, single_statement
from iterative_label_refinement.metrics.eval_bird import accuracy_by_difficulty, bird_eval_func, same_execution_result

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
    records = execute_pairs(preds, golds, dbs, root, workers=1)
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
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_sql_scores_zero_and_changes_nothing(db_root, sql):
    db = db_root / "shop" / "shop.sqlite"
    before, listing = _sha256(db), _folder_listing(db_root)
    [record] = execute_pairs([sql], ["SELECT count(*) FROM item"], ["shop"], db_root, workers=1)
    assert record["score"] == 0
    assert record["reason"].startswith("error: predicted SQL: ")
    assert _sha256(db) == before
    assert _folder_listing(db_root) == listing  # ATTACH / VACUUM INTO created no file
    # and the database still answers
    assert execute_pairs(["SELECT count(*) FROM item"], ["SELECT 1000"], ["shop"], db_root, workers=1)[0]["score"] == 1


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
    [record] = execute_pairs([forever], ["SELECT 1"], ["shop"], db_root, timeout=1.0, workers=1)
    assert time.monotonic() - start < 2.0
    assert record["score"] == 0 and record["reason"].startswith("timeout: predicted SQL")
    assert _sha256(db) == before


def test_huge_cross_join_is_capped(db_root):
    """10^12 rows: stopped by the row cap (or the deadline) without exhausting memory."""
    cross = "SELECT * FROM item a, item b, item c, item d"
    start = time.monotonic()
    [record] = execute_pairs([cross], ["SELECT 1"], ["shop"], db_root, timeout=3.0, max_rows=100_000, workers=1)
    assert time.monotonic() - start < 4.0
    assert record["score"] == 0
    assert record["reason"] == "error: predicted SQL: more than 100000 result rows (result-size cap)"


def test_gold_side_failures_are_reported_as_gold(db_root):
    [record] = execute_pairs(["SELECT 1"], ["SELECT nope FROM item"], ["shop"], db_root, workers=1)
    assert record == {"score": 0, "reason": "error: gold SQL: no such column: nope", "seconds": record["seconds"]}


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
    missing_root = execute_pairs([good], [good], ["shop"], tmp_path / "nowhere", workers=1)[0]
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
        workers=1,
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
