"""Reading each task's public raw files into a `DatasetDict` (train, test) of question/answer rows.

Every reader validates as it reads: a malformed file fails with its path, row (and jsonl line) and
field. The task's registry entry (`core.datasets`) names its reader and its how-to hint;
`experiments.prepare_data` runs a reader and saves the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.settings import ConfigError, get_logger

if TYPE_CHECKING:
    from datasets import DatasetDict

logger = get_logger(__name__)

# Where each task's raw files come from, shown whenever they are missing or malformed.
GSM8K_HINT = (
    "Download train.jsonl and test.jsonl from github.com/openai/grade-school-math "
    "(grade_school_math/data) into one folder and pass it as --raw_path."
)
BIRD_HINT = (
    "Download BIRD (bird-bench.github.io): put train.json + train_tables.json and/or dev.json + "
    "dev_tables.json in one folder and pass it as --raw_path; set ILR_BIRD_PATH to the databases folder."
)
SAFERPACA_HINT = (
    "Download an Alpaca-format json (e.g. alpaca_data_cleaned.json) and "
    "safety_only_data_Instructions.json (github.com/vinid/safety-tuned-llamas) into one folder and pass "
    "it as --raw_path."
)


def _read_json_rows(path: Path, fields: dict[str, type | tuple[type, ...]]) -> list[dict[str, Any]]:
    """A json list or jsonl file of objects; every row has each of `fields`, of its type (not null).

    Errors name the file, the row (and the line of a jsonl file) and the field.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: bytes that are not UTF-8 ({e.reason} at byte {e.start})") from e
    lines: list[int] = []  # the line of each row (jsonl only)
    if path.suffix == ".jsonl":
        rows = []
        for number, line_text in enumerate(text.splitlines(), start=1):
            if line_text.strip():
                try:
                    rows.append(json.loads(line_text))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}: line {number}: not valid JSON ({e.msg}, column {e.colno})") from e
                lines.append(number)
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from e
    if isinstance(rows, dict) and "instructions" in rows:
        raise ConfigError(f"{path}: an evaluation instruction list, not training rows with {list(fields)}")
    if not isinstance(rows, list):
        raise ConfigError(f"{path}: expected a list of objects with fields {list(fields)}")
    if not rows:
        raise ConfigError(f"{path}: no rows (an empty file or list); expected objects with fields {list(fields)}")
    for i, row in enumerate(rows):
        where = f"row {i}" + (f" (line {lines[i]})" if lines else "")
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: {where} is a {type(row).__name__}, not an object with fields {list(fields)}")
        missing = [f for f in fields if f not in row]
        if missing:  # "row N is missing field(s) [...]", the line of a jsonl file at the end
            line = f" (line {lines[i]})" if lines else ""
            raise ConfigError(f"{path}: row {i} is missing field(s) {missing} (required: {list(fields)}){line}")
        for field, kind in fields.items():
            if not isinstance(row[field], kind) or isinstance(row[field], bool):
                names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
                raise ConfigError(f"{path}: {where}: field {field!r} is {row[field]!r}, expected {names}")
    return rows


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _split(rows: list[dict[str, Any]], test_fraction: float, seed: int) -> DatasetDict:
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(rows).train_test_split(test_size=test_fraction, seed=seed)
    return DatasetDict({"train": ds["train"], "test": ds["test"]})


# ---------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------


def prepare_gsm8k(raw: Path) -> DatasetDict:
    from datasets import Dataset, DatasetDict

    out = {}
    for split in ("train", "test"):
        path = raw / f"{split}.jsonl" if raw.is_dir() else None
        if path is None or not path.is_file():
            raise ConfigError(f"GSM8K: missing {raw / f'{split}.jsonl'}. {GSM8K_HINT}")
        rows = _read_json_rows(path, {"question": str, "answer": str})
        out[split] = Dataset.from_list([{"question": r["question"], "answer": r["answer"]} for r in rows])
    return DatasetDict(out)


# ---------------------------------------------------------------------------------------------
# BIRD
# ---------------------------------------------------------------------------------------------


def schema_text(db: dict[str, Any]) -> str:
    """`CREATE TABLE` lines from a Spider/BIRD tables.json entry (original names, quoted)."""
    tables = db["table_names_original"]
    columns: list[list[str]] = [[] for _ in tables]
    for (table_idx, name), col_type in zip(db["column_names_original"], db["column_types"]):
        if table_idx >= 0:
            columns[table_idx].append(f"`{name}` {col_type}")
    return "\n".join(f"CREATE TABLE `{t}` (\n  " + ",\n  ".join(cols) + "\n);" for t, cols in zip(tables, columns))


def _check_table_metadata(path: Path, i: int, db: dict[str, Any]) -> None:
    """ConfigError naming the row and field of a malformed tables.json entry."""
    where = f"{path}: row {i} (db_id {db['db_id']!r})"
    tables, columns, types = db["table_names_original"], db["column_names_original"], db["column_types"]
    if not all(isinstance(t, str) for t in tables):
        raise ConfigError(f"{where}: field 'table_names_original' must be a list of names")
    for j, column in enumerate(columns):
        ok = isinstance(column, list) and len(column) == 2 and isinstance(column[1], str)
        if not ok or not isinstance(column[0], int) or not -1 <= column[0] < len(tables):
            raise ConfigError(
                f"{where}: field 'column_names_original' item {j} is {column!r}; expected [table index "
                f"-1..{len(tables) - 1}, name]"
            )
    if len(types) != len(columns) or not all(isinstance(t, str) for t in types):
        raise ConfigError(f"{where}: field 'column_types' must list one type name per column ({len(columns)})")


def bird_question(schema: str, question: str, evidence: str) -> str:
    """The text-to-SQL prompt: schema, question, and BIRD's external-knowledge evidence."""
    text = f"Database schema:\n{schema}\n\nQuestion: {question}"
    if evidence:
        text += f"\nEvidence: {evidence}"
    return text + "\nWrite one SQLite query that answers the question."


def _bird_rows(questions_path: Path, tables_path: Path) -> list[dict[str, Any]]:
    table_fields = {"db_id": str, "table_names_original": list, "column_names_original": list, "column_types": list}
    tables = _read_json_rows(tables_path, table_fields)
    for i, db in enumerate(tables):
        _check_table_metadata(tables_path, i, db)
    schemas = {db["db_id"]: schema_text(db) for db in tables}
    rows = []
    for i, r in enumerate(_read_json_rows(questions_path, {"db_id": str, "question": str})):
        sql = r.get("SQL", r.get("query"))
        if not isinstance(sql, str) or not sql.strip():
            raise ConfigError(f"{questions_path}: row {i}: field 'SQL' (or Spider's 'query') is {sql!r}, expected SQL")
        for field in ("evidence", "difficulty"):
            if not isinstance(r.get(field, ""), str):
                raise ConfigError(f"{questions_path}: row {i}: field {field!r} is {r[field]!r}, expected a string")
        if r["db_id"] not in schemas:
            raise ConfigError(f"{questions_path}: row {i} names db_id {r['db_id']!r}, absent from {tables_path}")
        schema = schemas[r["db_id"]]
        rows.append(
            {
                "question": bird_question(schema, r["question"], r.get("evidence", "")),
                "answer": sql,
                "db_name": r["db_id"],
                "db_schema": schema,
                "difficulty": r.get("difficulty", ""),
            }
        )
    return rows


def prepare_bird(raw: Path, test_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """train.json/train_tables.json -> train, dev.json/dev_tables.json -> test.

    With only one of the two (BIRD's train set is large and shipped separately), that one is split
    `test_fraction` for test, with a warning.
    """
    from datasets import Dataset, DatasetDict

    if not raw.is_dir():
        raise ConfigError(f"BIRD: --raw_path must be a folder, got {raw}. {BIRD_HINT}")
    found = {}
    for split in ("train", "dev"):
        q = _find(raw, (f"{split}.json",))
        t = _find(raw, (f"{split}_tables.json", "tables.json"))
        if q and t:
            found[split] = _bird_rows(q, t)
    if "train" in found and "dev" in found:
        return DatasetDict({"train": Dataset.from_list(found["train"]), "test": Dataset.from_list(found["dev"])})
    for split, rows in found.items():
        logger.warning("BIRD: only %s.json in %s; splitting it %.0f%% for test", split, raw, 100 * test_fraction)
        return _split(rows, test_fraction, seed)
    raise ConfigError(f"BIRD: found no dev.json/train.json with a tables file in {raw}. {BIRD_HINT}")


# ---------------------------------------------------------------------------------------------
# SaferPaca
# ---------------------------------------------------------------------------------------------


def _instruction_rows(path: Path, category: str) -> list[dict[str, Any]]:
    rows = _read_json_rows(path, {"instruction": str, "output": str})
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r.get("input", ""), str):
            raise ConfigError(f"{path}: row {i}: field 'input' is {r['input']!r}, expected a string")
        question = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append({"question": question, "answer": r["output"], "category": category})
    return out


def prepare_saferpaca(raw: Path, test_fraction: float = 0.1, seed: int = 0) -> DatasetDict:
    """General (Alpaca-format) instructions plus SaferPaca's safety rows, each with a `category`."""
    if not raw.is_dir():
        raise ConfigError(f"SaferPaca: --raw_path must be a folder, got {raw}. {SAFERPACA_HINT}")
    safety = _one_file(raw, "safety_only_data_Instructions.json")
    general = _one_file(raw, "*alpaca*.json")
    rows = _instruction_rows(general, "general") + _instruction_rows(safety, "safety")
    return _split(rows, test_fraction, seed)


def _one_file(raw: Path, pattern: str) -> Path:
    """The one file under `raw` whose name matches `pattern` (by file name only, case-sensitive)."""
    matches = sorted(p for p in raw.rglob(pattern) if p.is_file())
    if len(matches) != 1:
        found = f"found {len(matches)}: {[str(p) for p in matches]}" if matches else "found none"
        raise ConfigError(f"SaferPaca: need exactly one file named {pattern} under {raw}, {found}. {SAFERPACA_HINT}")
    return matches[0]
