"""`word_sums`: a throwaway GSM8K-like task, added as a researcher adds one (tests/test_new_task.py).

Its data is `tests/word_sums.jsonl` (word problems with a `#### <n>` final answer, 48 train and 12
test rows); its metric is its own and more lenient than GSM8K's: an answer is right when the final
answer appears among the numbers it writes anywhere. A shipped task would end with
`register_dataset(TASK)` and be named in `iterative_label_refinement.plugins.PLUGINS`; the test
registers it for its own duration only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from iterative_label_refinement.core.datasets import DatasetConfig

DATA = Path(__file__).with_name("word_sums.jsonl")


def load_split(split: str):
    from datasets import Dataset

    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    return Dataset.from_list([{"question": r["question"], "answer": r["answer"]} for r in rows if r["split"] == split])


def final_answer(text: str) -> str:
    return text.rsplit("####", 1)[-1].strip()


def answer_mentioned(predictions, references, rows=None) -> list[float]:
    return [float(final_answer(r) in re.findall(r"\d+", p)) for p, r in zip(predictions, references)]


def same_final_answer(current, proposals, rows=None) -> list[bool]:
    return [final_answer(a) == final_answer(b) for a, b in zip(current, proposals)]


TASK = DatasetConfig(name="word_sums", loader=load_split, max_len=48, metric=answer_mentioned,
                     agreement=same_final_answer)  # fmt: skip
