"""Comparison feedback from an LLM judge behind any OpenAI-compatible chat-completions endpoint (RLAIF).

The judge reads its task's prompt template (`DatasetConfig.judge_template`, a file in
`iterative_label_refinement/judge_templates/`) filled with the question and two answers, A and B,
and answers with one token, greedy, whose top log-probabilities the server returns. With p_A and
p_B the probabilities of the tokens `A` and `B` among them (` A` counts as `A`; one absent counts 0),

    P(B is better | A, B) = p_B / (p_A + p_B),

which is `core.evaluator.JudgeEvaluator.p_accept` (accept changing A to B). `debiased_scores`
asks both orders, so the score of a proposal replacing the current answer is

    score = 1/2 [P(B better | A=current, B=proposal) + 1 - P(B better | A=proposal, B=current)].

Errors are those of the judge client (`core.judge_client`, shared with the SaferPaca metric):
bounded retries that honour `Retry-After` (`core.http_api.post_json`); a reply without the first
token's top log-probs, or that is not JSON, is an error; an error is never cached; and a reply that
gives neither `A` nor `B` is an error as well, never a tie of 0.5. Replies are cached on disk by
(base URL, model, the whole prompt): the template, the question and both answers.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from iterative_label_refinement.core.judge_client import JudgeError
from iterative_label_refinement.core.settings import ConfigError, load_env

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "judge_templates"
TEMPLATE_FIELDS = {"question", "answer_a", "answer_b"}


@dataclass(frozen=True)
class JudgeEndpoint:
    """Where the judge is served: an OpenAI-compatible base URL (ending in /v1) and the model name."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)  # never recorded

    @classmethod
    def resolve(
        cls, base_url: str | None = None, model: str | None = None, api_key: str | None = None
    ) -> JudgeEndpoint:
        """The flags, else `$ILR_FEEDBACK_JUDGE_BASE_URL`, `_MODEL`, `_API_KEY` (or `.env`).

        Base URL and model have no default: a comparison judge is never a paid API by accident. They
        are not the SaferPaca metric judge's `$ILR_JUDGE_*`, so feedback and test scoring never share
        a judge unless told to.
        """
        load_env()
        base_url = base_url or os.environ.get("ILR_FEEDBACK_JUDGE_BASE_URL")
        model = model or os.environ.get("ILR_FEEDBACK_JUDGE_MODEL")
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"the judge needs the base URL of an OpenAI-compatible server, got {base_url!r}: "
                              "pass --judge_base_url or set ILR_FEEDBACK_JUDGE_BASE_URL (e.g. "
                              "http://127.0.0.1:8080/v1)")  # fmt: skip
        if not model:
            raise ConfigError("the judge needs a model name: pass --judge_model or set ILR_FEEDBACK_JUDGE_MODEL "
                              "(the name the server serves)")  # fmt: skip
        return cls(base_url.rstrip("/"), model, api_key or os.environ.get("ILR_FEEDBACK_JUDGE_API_KEY") or None)


def judge_template(ds_name: str) -> str:
    """The judge prompt registered for `ds_name`, checked to hold exactly {question}, {answer_a}, {answer_b}."""
    from iterative_label_refinement.core.datasets import get_dataset_config

    name = get_dataset_config(ds_name).judge_template
    if not name:
        raise ConfigError(f"task {ds_name!r} registers no judge template (DatasetConfig.judge_template)")
    path = TEMPLATE_DIR / name
    text = path.read_text()
    fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    if fields != TEMPLATE_FIELDS:
        raise ConfigError(f"{path} has the fields {sorted(fields)}; a judge template has {sorted(TEMPLATE_FIELDS)}")
    return text


def preference(p_a: float, p_b: float) -> float:
    """P(B is better) = p_B / (p_A + p_B); a JudgeError when the judge gave neither (never 0.5)."""
    if not p_a + p_b > 0:
        raise JudgeError("the judge gave neither A nor B: a failed comparison, not a tie")
    return p_b / (p_a + p_b)


def judge_flags(feedback: str, base_url: str | None, model: str | None, api_key: str | None) -> JudgeEndpoint | None:
    """The endpoint for `--feedback=judge`; judge flags with another feedback are refused."""
    if feedback == "judge":
        return JudgeEndpoint.resolve(base_url, model, api_key)
    given = [f"--judge_{n}" for n, v in (("base_url", base_url), ("model", model), ("api_key", api_key)) if v]
    if given:
        raise ConfigError(f"{', '.join(given)} belong to --feedback=judge, got --feedback={feedback}")
    return None
