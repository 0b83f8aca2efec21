"""The LLM-judge client: a pairwise judge's P(A), P(B) of its first answer token, cached on disk.

A judge reads a conversation that ends by asking for `A` or `B` and answers with the probabilities
of those two tokens (` A` counts as `A`; a token absent from the judge's top tokens counts 0). Two
backends: `ApiJudge`, an OpenAI-compatible chat API read through its top log-probs (HTTP through
`core.http_api.post_json`, with its bounded retries), and `LocalJudge`, a Hugging Face causal LM. A
reply without log-probabilities, or with one that is not a finite number <= 0, is an error; so is
any answer that is not two probabilities (finite, >= 0, summing to at most 1): errors are never
cached and never a score.

Answers are cached on disk by (judge name, messages), one small JSON file each written whole
(temporary file, then rename), so a rerun asks nothing twice; an entry that cannot be read or holds
no probability pair (a damaged file, an old version's NaN) is warned about with its path and asked
again. What the two probabilities mean is the caller's: the SaferPaca metric
(`metrics.eval_saferpaca`) and the comparison feedback (`core.judge`, `core.evaluator.JudgeEvaluator`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.files import write_json
from iterative_label_refinement.core.http_api import DEFAULT_BASE_URL, api_url, bad_reply, post_json
from iterative_label_refinement.core.prompts import format_prompt
from iterative_label_refinement.core.settings import get_cache_path, get_logger, load_env

logger = get_logger(__name__)

Messages = list[dict[str, str]]

# Servers compute log-softmax in float32, so a near-certain token's log-prob can round to a hair above
# 0 (float32 epsilon is 1.2e-7); 1e-6 admits that rounding and nothing a real defect produces.
LOGPROB_TOLERANCE = 1e-6
# P(A) + P(B) of disjoint tokens is at most 1; float32 softmax rounding stays far below this margin.
PROB_TOLERANCE = 1e-4


class JudgeError(RuntimeError):
    """A judge answer that is not a probability pair (e.g. a local model's NaN): never cached, never a score."""


def is_logprob(value: object) -> bool:
    """A finite number <= 0 (+ `LOGPROB_TOLERANCE`); JSON booleans, NaN and infinities are not."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value <= LOGPROB_TOLERANCE
    )


def is_probability_pair(p_a: object, p_b: object) -> bool:
    """P(A), P(B) of two disjoint answers: finite, >= 0, and p_a + p_b <= 1 (+ `PROB_TOLERANCE`)."""
    finite = all(
        isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p >= 0 for p in (p_a, p_b)
    )
    return finite and p_a + p_b <= 1 + PROB_TOLERANCE


def choice_probs_from_top_logprobs(
    top_logprobs: Sequence[dict[str, Any]], labels: tuple[str, str] = ("A", "B")
) -> tuple[float, float]:
    """P(A), P(B) from an API's top log-probs of the first token (` A` counts as `A`); absent means 0."""
    probs = [0.0, 0.0]
    for entry in top_logprobs:
        token = entry.get("token", "").strip()
        if token in labels:
            probs[labels.index(token)] += math.exp(entry["logprob"])
    return probs[0], probs[1]


def default_cache_dir() -> Path:
    """`$ILR_JUDGE_CACHE`, else `<cache path>/judge_cache`."""
    load_env()
    return Path(os.environ.get("ILR_JUDGE_CACHE") or get_cache_path() / "judge_cache")


class Judge(ABC):
    """A pairwise judge with a disk cache keyed by (judge name, prompt)."""

    batch_size: int = 32  # prompts per backend call; the cache is written after each

    def __init__(self, name: str, cache_dir: str | Path | None = None):
        self.name = name
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    @abstractmethod
    def choice_probs(self, conversations: Sequence[Messages]) -> list[tuple[float, float]]:
        """Uncached P(A), P(B) of the judge's first answer token, per conversation."""

    def _cache_file(self, messages: Messages) -> Path:
        key = hashlib.sha256(
            json.dumps({"judge": self.name, "messages": messages}, sort_keys=True).encode()
        ).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, file: Path) -> tuple[float, float] | None:
        """The cached P(A), P(B); None when absent or untrustworthy (warned with the path: it is asked again)."""
        if not file.exists():
            return None
        try:
            entry = json.loads(file.read_text())
            if entry["judge"] == self.name and is_probability_pair(entry["p_a"], entry["p_b"]):
                return entry["p_a"], entry["p_b"]
            problem = f"holds {json.dumps(entry)[:200]}, not this judge's P(A), P(B)"
        except (ValueError, KeyError, TypeError) as exc:  # torn or garbled JSON, missing keys, not an object
            problem = f"is unreadable ({type(exc).__name__}: {exc})"
        logger.warning("Judge cache entry %s %s; asking the judge again", file, problem)
        return None

    def cached_choice_probs(
        self, conversations: Sequence[Messages], need_a_label: bool = False
    ) -> list[tuple[float, float]]:
        """P(A), P(B) per conversation, in input order: from the cache, else asked (unique prompts only).

        An answer that is not a probability pair raises JudgeError before anything of its batch is
        cached. `need_a_label`: a reply giving neither `A` nor `B` (P(A) + P(B) = 0) is such an error
        too, for callers to whom it is a failed comparison rather than a tie.
        """
        files = [self._cache_file(c) for c in conversations]
        known = {file: self._read_cache(file) for file in dict.fromkeys(files)}  # unique prompts
        pending = [(file, conv) for file, conv in dict(zip(files, conversations)).items() if known[file] is None]
        logger.info("Judge %s: %d of %d prompts cached", self.name, len(files) - len(pending), len(files))
        for start in range(0, len(pending), self.batch_size):
            batch = pending[start : start + self.batch_size]
            answers = self.choice_probs([conv for _, conv in batch])
            for p_a, p_b in answers:  # the whole batch is checked before any of it is cached
                if not is_probability_pair(p_a, p_b):
                    raise JudgeError(
                        f"Judge {self.name} answered P(A)={p_a!r}, P(B)={p_b!r}, not two probabilities (finite, "
                        f">= 0, summing to at most 1); not cached, not scored"
                    )
                if need_a_label and p_a + p_b == 0:
                    raise JudgeError(
                        f"Judge {self.name} answered neither A nor B among its top log-probabilities; not cached, "
                        "not scored (a failed comparison is never a tie)"
                    )
            for (file, _), (p_a, p_b) in zip(batch, answers):
                write_json(file, {"judge": self.name, "p_a": p_a, "p_b": p_b})
                known[file] = p_a, p_b
        return [known[file] for file in files]


class ApiJudge(Judge):
    """An OpenAI-compatible chat API: one output token, greedy, read through its top log-probs."""

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        cache_dir: str | Path | None = None,
        concurrency: int = 8,
        top_logprobs: int = 20,
        **request_kwargs: Any,
    ):
        super().__init__(f"api:{base_url.rstrip('/')}:{model}", cache_dir)
        self.model, self.base_url, self.api_key = model, base_url, api_key
        self.concurrency = concurrency
        self.top_logprobs = top_logprobs
        self.request_kwargs = request_kwargs  # `post_json`'s retries, waits (max_wait_s, sleep) and timeout

    def _ask(self, messages: Messages) -> tuple[float, float]:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        reply = post_json(self.base_url, "chat/completions", body, self.api_key, **self.request_kwargs)
        return choice_probs_from_top_logprobs(self._top_logprobs(reply))

    def _top_logprobs(self, reply: dict[str, Any]) -> list[dict[str, Any]]:
        """The first token's top log-probs; ApiError when the reply lacks them (never a made-up 0.5).

        A log-prob that is not a finite number <= 0 (NaN, which Python's JSON reader accepts, or +5,
        which would be a probability of 148) is refused too. Not retried: a server that ignores
        `logprobs` ignores it every time.
        """
        url = api_url(self.base_url, "chat/completions")
        try:
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            if top and all(isinstance(e["token"], str) for e in top):
                if all(is_logprob(e["logprob"]) for e in top):
                    return top
                raise bad_reply(url, "with a top log-probability that is not a finite number <= 0", reply)
        except (KeyError, IndexError, TypeError):
            pass
        raise bad_reply(
            url, "without the first token's top log-probabilities (choices[0].logprobs.content[0].top_logprobs)", reply
        )

    def choice_probs(self, conversations: Sequence[Messages]) -> list[tuple[float, float]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._ask, conversations))


def label_token_ids(vocab: dict[str, int], label: str) -> list[int]:
    """Ids of the tokens spelling `label` alone or after a word boundary (`A`, ` A`, `▁A`, `ĠA`)."""
    return sorted({vocab[s] for s in (label, " " + label, "\u2581" + label, "\u0120" + label) if s in vocab})


def _weights_stamp(model_path: str) -> str:
    """Changes when a local model folder's weights change, so a retrained judge misses the cache."""
    folder = Path(model_path)
    stats = (
        sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*.safetensors"))
        if folder.is_dir()
        else []
    )
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:12]


class LocalJudge(Judge):
    """A Hugging Face causal LM: next-token probabilities of the `A`/`B` tokens after the prompt."""

    def __init__(
        self,
        model_name: str,
        cache_dir: str | Path | None = None,
        batch_size: int = 8,
        labels: tuple[str, str] = ("A", "B"),
    ):
        import torch

        from iterative_label_refinement.core.models import load_model, load_tokenizer, resolve_model_path

        stamp = _weights_stamp(resolve_model_path(model_name))
        super().__init__(f"local:{model_name}:{stamp}:{'/'.join(labels)}", cache_dir)
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(model_name)  # left padding: the last position is the next token
        self.tokenizer.truncation_side = "left"  # keep the question about A and B when too long
        self.model = load_model(model_name, gradient_checkpointing=False, dropout=False).eval()
        self.max_length = getattr(self.model.config, "max_position_embeddings", None)
        vocab = self.tokenizer.get_vocab()
        self.label_ids = [torch.tensor(label_token_ids(vocab, label), dtype=torch.long) for label in labels]
        for label, ids in zip(labels, self.label_ids):
            if not len(ids):
                logger.warning("Judge %s has no token for %r: its probability counts as 0", model_name, label)

    def render(self, messages: Messages) -> str:
        """The model's chat template when it has one, else the project's USER/ASSISTANT prompt."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return format_prompt("\n\n".join(m["content"] for m in messages))

    def choice_probs(self, conversations: Sequence[Messages]) -> list[tuple[float, float]]:
        import torch

        enc = self.tokenizer(
            [self.render(c) for c in conversations],
            return_tensors="pt",
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            add_special_tokens=False,
        ).to(self.model.device)
        position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=position_ids
            ).logits[:, -1]
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        p_a, p_b = (probs[:, ids].sum(dim=-1) for ids in self.label_ids)
        return list(zip(p_a.tolist(), p_b.tolist()))
