"""GSM8K accuracy and ILR's GSM8K agreement check: the final answers must match; unparsable is 0.

Reference rule (default): split the text from the last `####` on whitespace and take the second
token, so `#### 1,000` and `#### 1000` differ, and `####72` (no space) has no answer.

`ILR_GSM8K_NORMALIZE_NUMBERS=1` (environment or `.env`) is the lenient variant: the first token
after the last `####`, without `,` and `$` and a trailing `.`, so `#### $1,000.` equals `#### 1000`.
It changes test accuracy, label accuracy and agreement alike; set it for a whole experiment or not at all.
"""

from __future__ import annotations

import os
import re

from iterative_label_refinement.core.settings import ConfigError, load_env

_NUMBER_CHARS = re.compile(r"[,$]")
NORMALIZE_SETTING = "ILR_GSM8K_NORMALIZE_NUMBERS"


def normalize_numbers() -> bool:
    load_env()
    value = os.environ.get(NORMALIZE_SETTING, "0").strip()
    if value not in ("0", "1", ""):
        raise ConfigError(f"{NORMALIZE_SETTING}={value!r}: valid values are 0 (the reference's exact token) and 1")
    return value == "1"


def extract_final_answer(text: object, normalize: bool = False) -> str | None:
    """The final answer token (see the module docstring for both rules); None when there is none."""
    if not isinstance(text, str) or "####" not in text:
        return None
    if not normalize:
        tokens = text[text.rfind("####") :].split()
        return tokens[1] if len(tokens) > 1 else None
    tail = text.rsplit("####", 1)[1].split()
    token = _NUMBER_CHARS.sub("", tail[0]).rstrip(".") if tail else ""
    return token or None


def gsm8k_eval_func(prediction: object, reference: object, normalize: bool | None = None) -> float:
    """1.0 when both final answers parse and are equal, else 0.0. `normalize` defaults to the setting."""
    if normalize is None:
        normalize = normalize_numbers()
    pred, gold = extract_final_answer(prediction, normalize), extract_final_answer(reference, normalize)
    return float(pred is not None and pred == gold)


def same_final_answer(a: object, b: object, normalize: bool | None = None) -> bool:
    """ILR's gsm8k agreement check: two answers agree when their final answers are equal."""
    return gsm8k_eval_func(a, b, normalize) == 1.0
