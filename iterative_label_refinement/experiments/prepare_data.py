"""Build `$ILR_DATA_PATH/<ds_name>` (a DatasetDict with train/test, SPEC §3) from public raw files.

    python -m iterative_label_refinement.experiments.prepare_data --ds_name=gsm8k --raw_path=../shared/data/gsm8k

Without `--raw_path` it tries the Hugging Face hub (only where the internet is reachable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from iterative_label_refinement.core.common import ConfigError, get_data_path, get_logger, save_to_disk_atomic

logger = get_logger(__name__)

HUB_SOURCES = {"gsm8k": ("openai/gsm8k", "main")}
HOW_TO = {
    "gsm8k": "Download train.jsonl and test.jsonl from github.com/openai/grade-school-math "
    "(grade_school_math/data) into one folder and pass it as --raw_path.",
    "bird": "Download BIRD (bird-bench.github.io): put train.json + train_tables.json and/or dev.json + "
    "dev_tables.json in one folder and pass it as --raw_path; set ILR_BIRD_PATH to the databases folder.",
    "saferpaca": "Download an Alpaca-format json (e.g. alpaca_data_cleaned.json) and "
    "safety_only_data_Instructions.json (github.com/vinid/safety-tuned-llamas) into one folder and pass "
    "it as --raw_path.",
}


def _read_json_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """A json list or jsonl file; every row must have `required` fields."""
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if isinstance(rows, dict) and "instructions" in rows:
        raise ConfigError(f"{path}: an evaluation instruction list, not training rows with {required}")
    if not isinstance(rows, list):
        raise ConfigError(f"{path}: expected a list of objects with fields {required}")
    for i, row in enumerate(rows):
        missing = [f for f in required if not isinstance(row, dict) or f not in row]
        if missing:
            raise ConfigError(f"{path}: row {i} is missing field(s) {missing} (required: {list(required)})")
    return rows


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _split(rows: list[dict[str, Any]], test_fraction: float, seed: int) -> DatasetDict:
    ds = Dataset.from_list(rows).train_test_split(test_size=test_fraction, seed=seed)
    return DatasetDict({"train": ds["train"], "test": ds["test"]})


# ---------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------


def prepare_gsm8k(raw: Path) -> DatasetDict:
    out = {}
    for split in ("train", "test"):
        path = raw / f"{split}.jsonl" if raw.is_dir() else None
        if path is None or not path.is_file():
            raise ConfigError(f"GSM8K: missing {raw / f'{split}.jsonl'}. {HOW_TO['gsm8k']}")
        rows = _read_json_rows(path, ("question", "answer"))
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


def bird_question(schema: str, question: str, evidence: str) -> str:
    """The text-to-SQL prompt: schema, question, and BIRD's external-knowledge evidence."""
    text = f"Database schema:\n{schema}\n\nQuestion: {question}"
    if evidence:
        text += f"\nEvidence: {evidence}"
    return text + "\nWrite one SQLite query that answers the question."


def _bird_rows(questions_path: Path, tables_path: Path) -> list[dict[str, Any]]:
    tables = _read_json_rows(tables_path, ("db_id", "table_names_original", "column_names_original", "column_types"))
    schemas = {db["db_id"]: schema_text(db) for db in tables}
    rows = []
    for i, r in enumerate(_read_json_rows(questions_path, ("db_id", "question"))):
        sql = r.get("SQL", r.get("query"))
        if sql is None:
            raise ConfigError(f"{questions_path}: row {i} is missing field 'SQL' (or Spider's 'query')")
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

    With only the dev files (BIRD's train set is large and shipped separately), dev is split
    `test_fraction` for test, with a warning.
    """
    if not raw.is_dir():
        raise ConfigError(f"BIRD: --raw_path must be a folder, got {raw}. {HOW_TO['bird']}")
    found = {}
    for split in ("train", "dev"):
        q = _find(raw, (f"{split}.json",))
        t = _find(raw, (f"{split}_tables.json", "tables.json"))
        if q and t:
            found[split] = _bird_rows(q, t)
    if "train" in found and "dev" in found:
        return DatasetDict({"train": Dataset.from_list(found["train"]), "test": Dataset.from_list(found["dev"])})
    if "dev" in found:
        logger.warning("BIRD: no train.json in %s; splitting dev %.0f%% for test", raw, 100 * test_fraction)
        return _split(found["dev"], test_fraction, seed)
    raise ConfigError(f"BIRD: found no dev.json/train.json with a tables file in {raw}. {HOW_TO['bird']}")


# ---------------------------------------------------------------------------------------------
# SaferPaca
# ---------------------------------------------------------------------------------------------


def _instruction_rows(path: Path, category: str) -> list[dict[str, Any]]:
    rows = _read_json_rows(path, ("instruction", "output"))
    out = []
    for r in rows:
        question = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append({"question": question, "answer": r["output"], "category": category})
    return out


def prepare_saferpaca(raw: Path, test_fraction: float = 0.1, seed: int = 0) -> DatasetDict:
    """General (Alpaca-format) instructions plus SaferPaca's safety rows, each with a `category`."""
    if not raw.is_dir():
        raise ConfigError(f"SaferPaca: --raw_path must be a folder, got {raw}. {HOW_TO['saferpaca']}")
    safety = sorted(raw.rglob("safety_only_data_Instructions.json"))
    general = sorted(p for p in raw.rglob("*alpaca*.json") if "evaluation" not in p.parts)
    if not safety or not general:
        raise ConfigError(
            f"SaferPaca: need safety_only_data_Instructions.json and an *alpaca*.json under {raw}. {HOW_TO['saferpaca']}"
        )
    rows = _instruction_rows(general[0], "general") + _instruction_rows(safety[0], "safety")
    return _split(rows, test_fraction, seed)


PREPARERS = {"gsm8k": prepare_gsm8k, "bird": prepare_bird, "saferpaca": prepare_saferpaca}


def _from_hub(ds_name: str) -> DatasetDict:
    if ds_name not in HUB_SOURCES:
        raise ConfigError(f"{ds_name}: no hub source; pass --raw_path. {HOW_TO[ds_name]}")
    import datasets

    repo, config = HUB_SOURCES[ds_name]
    try:
        dd = datasets.load_dataset(repo, config)
    except Exception as e:  # offline, or the hub refused
        raise ConfigError(f"Could not download {repo} from the hub ({type(e).__name__}). {HOW_TO[ds_name]}") from e
    return DatasetDict({s: dd[s].select_columns(["question", "answer"]) for s in ("train", "test")})


def main(ds_name: str, raw_path: str | None = None, out_path: str | None = None, force: bool = False) -> str:
    """Prepare `ds_name` from `raw_path` into `out_path` (default `$ILR_DATA_PATH/<ds_name>`)."""
    if ds_name not in PREPARERS:
        raise ConfigError(f"Unknown dataset {ds_name!r} for preparation. Valid: {sorted(PREPARERS)}")
    out = Path(out_path) if out_path else get_data_path() / ds_name
    if (out / "dataset_dict.json").exists() and not force:
        logger.info("%s already exists; pass --force to rebuild", out)
        return str(out)
    dd = PREPARERS[ds_name](Path(raw_path)) if raw_path else _from_hub(ds_name)
    save_to_disk_atomic(dd, out)
    logger.info("Wrote %s: %s", out, {k: len(v) for k, v in dd.items()})
    return str(out)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
