"""The GSM8K metric on every real gold answer, and on arbitrary strings."""

from __future__ import annotations

import json
import random
import string

from iterative_label_refinement.metrics.eval_gsm8k import extract_final_answer, gsm8k_eval_func


def test_examples():
    assert gsm8k_eval_func("3+4=7\n#### 7", "#### 7") == 1.0
    assert gsm8k_eval_func("#### 1,000", "#### 1000") == 1.0
    assert gsm8k_eval_func("#### 7 apples", "#### 7") == 1.0
    assert gsm8k_eval_func("#### 8", "#### 7") == 0.0
    assert gsm8k_eval_func("no answer", "#### 7") == 0.0
    assert gsm8k_eval_func("#### ", "#### ") == 0.0  # unparsable on both sides is not a match
    assert gsm8k_eval_func(None, "#### 7") == 0.0
    assert extract_final_answer("#### 2 #### 3") == "3"


def test_every_real_gold_answer(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 1319
    golds = [r["answer"] for r in rows]
    assert all(gsm8k_eval_func(g, g) == 1.0 for g in golds)
    shifted = golds[1:] + golds[:1]
    for a, b in zip(golds, shifted):
        differs = extract_final_answer(a) != extract_final_answer(b)
        assert gsm8k_eval_func(a, b) == (0.0 if differs else 1.0)
    assert sum(extract_final_answer(a) != extract_final_answer(b) for a, b in zip(golds, shifted)) > 1200


def test_never_raises_on_arbitrary_strings():
    rng = random.Random(0)
    alphabet = string.printable + "####\u00e9\u4e2d\x00"
    for _ in range(3000):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert gsm8k_eval_func(a, b) in (0.0, 1.0)
        assert gsm8k_eval_func(a, a) in (0.0, 1.0)
