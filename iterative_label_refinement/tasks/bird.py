"""BIRD: text-to-SQL, scored by executing the predicted and the gold query on the row's database."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from iterative_label_refinement.core.datasets import DatasetConfig, prepared_loader, register_dataset
from iterative_label_refinement.core.raw_data import BIRD_HINT, prepare_bird
from iterative_label_refinement.core.settings import ConfigError, load_env
from iterative_label_refinement.metrics.eval_bird import bird_eval_func, check_bird_databases, same_execution_result

if TYPE_CHECKING:
    from datasets import Dataset


def bird_root() -> str | None:
    """$ILR_BIRD_PATH; may be unset only when $ILR_BIRD_DB_URLS names every database."""
    load_env()
    root = os.environ.get("ILR_BIRD_PATH")
    if not root and not os.environ.get("ILR_BIRD_DB_URLS"):
        raise ConfigError(
            "BIRD scoring executes SQL: set ILR_BIRD_PATH to the folder holding <db>/<db>.sqlite "
            "(or ILR_BIRD_DB_URLS to a JSON file of SQLAlchemy URLs)"
        )
    return root


def execution_metric(predictions, references, rows) -> list[float]:
    return bird_eval_func(list(predictions), list(references), [r["db_name"] for r in rows], bird_root(), 30.0)


def same_execution_agreement(current, proposals, rows) -> list[bool]:
    """Two queries agree when they return the same set of rows (the metric's own executor)."""
    return same_execution_result(list(current), list(proposals), [r["db_name"] for r in rows], bird_root())


def check_databases(splits: Sequence[Dataset]) -> None:
    """Scoring executes SQL on every database the rows name: each must open before training starts."""
    check_bird_databases([name for ds in splits for name in ds["db_name"]], bird_root())


register_dataset(
    DatasetConfig(
        name="bird",
        loader=prepared_loader("bird"),
        max_len=256,
        metric=execution_metric,
        agreement=same_execution_agreement,
        extra_columns=("db_name", "db_schema"),
        check_rows=check_databases,
        preparer=prepare_bird,
        prepare_hint=BIRD_HINT,
        judge_template="bird.txt",
    )
)
