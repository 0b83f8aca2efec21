"""GSM8K accuracy: the token after the last `####` must match (SPEC §9); anything unparsable is 0."""

from __future__ import annotations

import re

_NUMBER_CHARS = re.compile(r"[,$]")


def extract_final_answer(text: object) -> str | None:
    """The first whitespace-separated token after the last `####`, normalised; None if absent."""
    if not isinstance(text, str) or "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].split()
    if not tail:
        return None
    token = _NUMBER_CHARS.sub("", tail[0]).rstrip(".")
    return token or None


def gsm8k_eval_func(prediction: object, reference: object) -> float:
    """1.0 when both final answers parse and are equal, else 0.0. Never raises."""
    try:
        pred, gold = extract_final_answer(prediction), extract_final_answer(reference)
        return float(pred is not None and pred == gold)
    except Exception:  # defensive: a metric must never stop an evaluation
        return 0.0


def same_final_answer(a: object, b: object) -> bool:
    """ILR's gsm8k agreement check: two answers agree when their final answers are equal."""
    return gsm8k_eval_func(a, b) == 1.0
