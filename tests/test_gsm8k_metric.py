"""The GSM8K metric and ILR's GSM8K agreement check against the reference's rule, written out here."""

from __future__ import annotations

import json
import random

import pytest

from iterative_label_refinement.core.datasets import get_dataset_config
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.metrics.eval_gsm8k import extract_final_answer, gsm8k_eval_func, same_final_answer


def reference_rule(prediction, gold) -> float:
    """The reference release's metric, transcribed: the second token from the last `####` on."""
    try:
        gold = gold[gold.rfind("####") :].split()[1]
        prediction = prediction[prediction.rfind("####") :].split()[1]
        return float(gold == prediction)
    except Exception:
        return 0.0


def lenient_rule(prediction, gold) -> float:
    """The normalising variant, by hand: first token after the last `####`, no `,` `$`, no final `.`."""

    def answer(text):
        if not isinstance(text, str) or "####" not in text:
            return None
        tail = text[text.rfind("####") + 4 :].split()
        return (tail[0].replace(",", "").replace("$", "").rstrip(".") or None) if tail else None

    a, b = answer(prediction), answer(gold)
    return float(a is not None and a == b)


CASES = [  # (prediction, gold, reference rule, lenient rule)
    ("3+4=7\n#### 7", "#### 7", 1.0, 1.0),
    ("#### 1,000", "#### 1000", 0.0, 1.0),  # the reference compares the raw token
    ("#### $5", "#### 5", 0.0, 1.0),
    ("#### 5.", "#### 5", 0.0, 1.0),
    ("####5", "#### 5", 0.0, 1.0),  # no space: the reference finds no second token
    ("####5 apples", "#### apples", 1.0, 0.0),  # ... or the wrong one
    ("#### 7 apples", "#### 7", 1.0, 1.0),
    ("#### 8", "#### 7", 0.0, 0.0),
    ("no answer", "#### 7", 0.0, 0.0),
    ("#### ", "#### ", 0.0, 0.0),  # unparsable on both sides is not a match
    (None, "#### 7", 0.0, 0.0),
    ("#### 2 #### 3", "#### 3", 1.0, 1.0),  # the last `####` counts
    ("#### 2 #### 3", "#### 2", 0.0, 0.0),
    ("####\n12", "#### 12", 1.0, 1.0),
]


@pytest.mark.parametrize("prediction, gold, exact, lenient", CASES)
def test_cases_by_both_rules(prediction, gold, exact, lenient):
    assert reference_rule(prediction, gold) == exact and lenient_rule(prediction, gold) == lenient
    assert gsm8k_eval_func(prediction, gold, normalize=False) == exact
    assert gsm8k_eval_func(prediction, gold, normalize=True) == lenient


def test_the_reference_rule_is_the_default_and_the_setting_switches_both_uses(monkeypatch):
    metric, agreement = get_dataset_config("gsm8k").metric, get_dataset_config("gsm8k").agreement
    preds, golds = [c[0] for c in CASES], [c[1] for c in CASES]
    monkeypatch.delenv("ILR_GSM8K_NORMALIZE_NUMBERS", raising=False)
    assert metric(preds, golds, None) == [c[2] for c in CASES]
    assert agreement(preds, golds, None) == [c[2] == 1.0 for c in CASES]
    monkeypatch.setenv("ILR_GSM8K_NORMALIZE_NUMBERS", "1")
    assert metric(preds, golds, None) == [c[3] for c in CASES]
    assert agreement(preds, golds, None) == [c[3] == 1.0 for c in CASES]
    monkeypatch.setenv("ILR_GSM8K_NORMALIZE_NUMBERS", "yes")
    with pytest.raises(ConfigError, match="ILR_GSM8K_NORMALIZE_NUMBERS='yes'"):
        metric(preds, golds, None)


def test_agreement_means_same_final_answer_not_same_text():
    assert same_final_answer("1+1=2\n#### 2", "0+2=2\n#### 2", normalize=False)
    assert not same_final_answer("1+1=2\n#### 2", "1+1=2\n#### 3", normalize=False)
    assert not same_final_answer("no answer", "no answer", normalize=False)


def test_every_real_gold_answer(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 1319
    golds = [r["answer"] for r in rows]
    shifted = golds[1:] + golds[:1]
    for normalize in (False, True):
        assert all(gsm8k_eval_func(g, g, normalize) == 1.0 for g in golds)
        for a, b in zip(golds, shifted):
            assert gsm8k_eval_func(a, b, normalize) == (reference_rule if not normalize else lenient_rule)(a, b)
    assert sum(extract_final_answer(a) != extract_final_answer(b) for a, b in zip(golds, shifted)) > 1200


def test_random_strings_agree_with_both_rules():
    rng = random.Random(0)
    pieces = ["####", " ", "\n", "1", "2", ",", "$", ".", "12", "1,2", "x", "X", "\u00e9", "\x00", "#"]
    for _ in range(5000):
        a = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        b = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        for x, y in ((a, b), (a, a)):
            assert gsm8k_eval_func(x, y, normalize=False) == reference_rule(x, y), (x, y)
            assert gsm8k_eval_func(x, y, normalize=True) == lenient_rule(x, y), (x, y)


def test_explicit_rule_wins_over_the_setting_and_an_empty_setting_is_the_default(monkeypatch):
    monkeypatch.setenv("ILR_GSM8K_NORMALIZE_NUMBERS", "1")
    assert gsm8k_eval_func("#### 1,000", "#### 1000") == 1.0  # unset argument: the setting
    assert gsm8k_eval_func("#### 1,000", "#### 1000", normalize=False) == 0.0
    assert not same_final_answer("#### 1,000", "#### 1000", normalize=False)
    monkeypatch.setenv("ILR_GSM8K_NORMALIZE_NUMBERS", "")
    assert gsm8k_eval_func("#### 1,000", "#### 1000") == 0.0
    assert same_final_answer("#### 1,000", "#### 1000", normalize=True)
    assert extract_final_answer("#### 1,000.") == "1,000."  # the default rule is the reference's
    assert extract_final_answer("#### 12X.", normalize=True) == "12X"  # only `,`, `$` and a final `.` go
