"""The evaluator's training pairs, as pure functions of plain data.

From the answers of a ground-truth run's checkpoints: which (better, worse) pairs a question gives
(`build_pairs`), how sources are balanced (SaferPaca's general and safety runs), how pairs are split
by question, and the two prompt rows (`<reject>`, `<accept>`) each pair becomes.
`experiments.generate_evaluator_data` generates the answers and saves the data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from iterative_label_refinement.core.prompts import ACCEPT, REJECT, format_evaluator_prompt

TEST_FRACTION = 0.1


def is_correct(acc: float | None) -> bool:
    """Unscored answers (`do_eval=False`) count as wrong: gold is then preferred to every answer."""
    return acc is not None and acc >= 0.5


def _weighted_choice(rng: random.Random, samples: list[tuple[str, int]], n_checkpoints: int) -> str:
    """Earlier checkpoints are favoured: checkpoint i of n has weight 2^(n-1-i)."""
    weights = [2.0 ** (n_checkpoints - 1 - i) for _, i in samples]
    return rng.choices([a for a, _ in samples], weights=weights)[0]


def build_pairs(questions: Sequence[str], gold: Sequence[str], answers: Sequence[Sequence[str]],
                accs: Sequence[Sequence[float | None]], seed: int = 0) -> list[dict[str, str]]:  # fmt: skip
    """(better, worse) pairs per question: a later checkpoint's answer is taken as better than an
    earlier one's when it scores higher.

    answers[c][q], accs[c][q]: the answer of checkpoint c (ascending) to question q, and its score.
    With a correct answer: (gold, a correct answer) and, if there is a wrong answer too, (gold or a
    correct answer, a wrong answer); else (gold, a wrong answer). A pair whose two answers are the
    same text is dropped: its two rows would be one prompt labelled both accept and reject.
    """
    rng = random.Random(seed)
    n_ckpt = len(answers)
    pairs = []
    for q, question in enumerate(questions):
        samples = [(answers[c][q], c, is_correct(accs[c][q])) for c in range(n_ckpt)]
        correct = [(a, c) for a, c, ok in samples if ok]
        wrong = [(a, c) for a, c, ok in samples if not ok]
        candidates = []
        if correct:
            candidates.append((gold[q], _weighted_choice(rng, correct, n_ckpt), "gold_vs_correct"))
            if wrong:
                better = gold[q] if rng.random() < 0.5 else _weighted_choice(rng, correct, n_ckpt)
                candidates.append((better, _weighted_choice(rng, wrong, n_ckpt), "correct_vs_wrong"))
        elif wrong:
            candidates.append((gold[q], _weighted_choice(rng, wrong, n_ckpt), "gold_vs_wrong"))
        for better, worse, kind in candidates:
            if better.strip() != worse.strip():
                pairs.append({"question": question, "better": better, "worse": worse, "kind": kind})
    return pairs


def balance(pairs_by_source: dict[str, list[dict[str, str]]], seed: int = 0) -> list[dict[str, str]]:
    """As many pairs from every source (SaferPaca: general and safety), sampled down to the smallest."""
    rng = random.Random(seed)
    n = min(len(p) for p in pairs_by_source.values())
    out = []
    for source, pairs in pairs_by_source.items():
        out += [dict(p, source=source) for p in rng.sample(pairs, n)]
    return out


def split_by_question(pairs: list[dict[str, str]], test_fraction: float = TEST_FRACTION,
                      seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:  # fmt: skip
    """Train and held-out pairs; all pairs of one question fall on the same side (no leakage)."""
    questions = sorted({p["question"] for p in pairs})
    random.Random(seed).shuffle(questions)
    n_test = round(test_fraction * len(questions))
    test_questions = set(questions[:n_test])
    train = [p for p in pairs if p["question"] not in test_questions]
    return train, [p for p in pairs if p["question"] in test_questions]


def pairs_to_rows(pairs: list[dict[str, str]], start_id: int = 0) -> list[dict[str, Any]]:
    """Two rows per pair: (A=better, B=worse) -> `<reject>`, (A=worse, B=better) -> `<accept>`."""
    rows = []
    for i, p in enumerate(pairs, start=start_id):
        extra = {k: v for k, v in p.items() if k not in ("question", "better", "worse", "kind")}
        for a, b, label in ((p["better"], p["worse"], REJECT), (p["worse"], p["better"], ACCEPT)):
            rows.append({"prompt": format_evaluator_prompt(p["question"], a, b), "label": label,
                         "question": p["question"], "answer_a": a, "answer_b": b, "pair_id": i,
                         "pair_kind": p["kind"], **extra})  # fmt: skip
    return rows
