"""`toy_arith`: the toy world's task (`toy.arithmetic`), registered beside its loader; scored as GSM8K is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from iterative_label_refinement.core.datasets import DatasetConfig, register_dataset
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.tasks.gsm8k import final_answer_metric, same_final_answer_agreement
from iterative_label_refinement.toy import arithmetic

if TYPE_CHECKING:
    from datasets import Dataset

_ROWS: dict[str, list[dict[str, str]]] = {}


def arith_rows() -> dict[str, list[dict[str, str]]]:
    """The task's rows, generated once per process: 4000 train and 1000 test problems of seed 1234."""
    if not _ROWS:
        _ROWS.update(arithmetic.make_task(n_train=4000, n_test=1000, seed=1234))
    return _ROWS


def load_split(split: str) -> Dataset:
    from datasets import Dataset

    rows = arith_rows()
    if split not in rows:
        raise ConfigError(f"toy_arith has splits {list(rows)}, not {split!r}")
    return Dataset.from_list(rows[split])


register_dataset(
    DatasetConfig(
        name="toy_arith",
        loader=load_split,
        max_len=96,
        metric=final_answer_metric,
        agreement=same_final_answer_agreement,
        judge_template="toy_arith.txt",
    )
)
