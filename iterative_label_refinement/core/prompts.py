"""What the models read: the SFT and evaluator prompts, and the tokenizer's padding and end-of-answer set-up."""

from __future__ import annotations

from typing import Any

from iterative_label_refinement.core.settings import ConfigError

PROMPT_TEMPLATE = "USER:\n{question}\n\nASSISTANT:\n"

# The comparison evaluator reads this: "having given answer (A), do you accept changing it to (B)?"
EVALUATOR_TEMPLATE = (
    "Question:\n{question}\n\n"
    "Answer (A):\n{answer_a}\n\n"
    "Answer (B):\n{answer_b}\n\n"
    "You gave answer (A). Do you accept changing it to answer (B)?"
)
ACCEPT, REJECT = "<accept>", "<reject>"


def format_prompt(question: str) -> str:
    """The SFT prompt around a question; the answer follows directly."""
    return PROMPT_TEMPLATE.format(question=question)


def format_evaluator_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return EVALUATOR_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b)


def setup_tokenizer(tokenizer: Any) -> Any:
    """pad = eos, left padding; callers always tokenise with `add_special_tokens=False`."""
    if tokenizer.eos_token is None:
        raise ConfigError(f"Tokenizer {tokenizer.name_or_path!r} has no eos token; one is required.")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    for attr in ("add_bos_token", "add_eos_token"):
        if hasattr(tokenizer, attr):
            try:
                setattr(tokenizer, attr, False)
            except (AttributeError, ValueError):
                pass
    return tokenizer
