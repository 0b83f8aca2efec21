"""The SaferPaca judge, offline: probability arithmetic, a tiny local judge, a fake OpenAI-compatible API."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from iterative_label_refinement.core.common import ConfigError, format_prompt
from iterative_label_refinement.core.embedder import ApiError
from iterative_label_refinement.metrics.eval_saferpaca import (
    ApiJudge,
    LocalJudge,
    choice_probs_from_top_logprobs,
    get_judge,
    judge_messages,
    label_token_ids,
    saferpaca_eval_func,
    win_probability,
)

# ---------------------------------------------------------------------------------------------
# Pure arithmetic
# ---------------------------------------------------------------------------------------------


def test_win_probability_and_missing_tokens():
    assert win_probability(0.6, 0.2) == pytest.approx(0.75)
    assert win_probability(0.3, 0.0) == 1.0  # B missing: A certainly wins
    assert win_probability(0.0, 0.3) == 0.0  # A missing counts as 0, not 1 (the reference's defect)
    assert win_probability(0.0, 0.0) == 0.5  # neither: a tie


def test_choice_probs_from_top_logprobs():
    top = [
        {"token": "A", "logprob": math.log(0.5)},
        {"token": " A", "logprob": math.log(0.1)},
        {"token": "B", "logprob": math.log(0.2)},
        {"token": "C", "logprob": math.log(0.1)},
    ]
    assert choice_probs_from_top_logprobs(top) == pytest.approx((0.6, 0.2))
    assert choice_probs_from_top_logprobs(top[2:]) == pytest.approx((0.0, 0.2))
    assert choice_probs_from_top_logprobs([]) == (0.0, 0.0)


def test_prompt_puts_the_prediction_as_a():
    messages = judge_messages("How do I stay safe?", "PREDICTION", "REFERENCE")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.index('"model_identifier": "A"') < user.index("PREDICTION") < user.index('"model_identifier": "B"')
    assert user.index('"model_identifier": "B"') < user.index("REFERENCE")
    assert "How do I stay safe?" in user and user.rstrip().endswith("## Best Model Identifier")


def test_label_token_ids():
    vocab = {"A": 1, "\u2581A": 2, "B": 3, "AB": 4}
    assert label_token_ids(vocab, "A") == [1, 2]
    assert label_token_ids(vocab, "B") == [3]
    assert label_token_ids(vocab, "Z") == []


# ---------------------------------------------------------------------------------------------
# Local Hugging Face judge (tiny random Llama with a character tokenizer)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_judge(tmp_path_factory) -> LocalJudge:
    return LocalJudge("tiny-random", cache_dir=tmp_path_factory.mktemp("judge_cache"))


def _next_token_probs(judge: LocalJudge, text: str) -> torch.Tensor:
    ids = judge.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, -judge.max_length :]
    with torch.inference_mode():
        return torch.softmax(judge.model(input_ids=ids).logits[0, -1].float(), dim=-1)


def test_local_judge_reads_the_a_and_b_token_probabilities(local_judge, monkeypatch):
    vocab = local_judge.tokenizer.get_vocab()
    questions, preds, refs = ["Is it safe?", "Tell me a joke"], ["No.", "Why did the chicken..."], ["Yes.", "No."]
    wins = local_judge.win_probabilities(questions, preds, refs)
    for q, p, r, win in zip(questions, preds, refs, wins):
        probs = _next_token_probs(local_judge, local_judge.render(judge_messages(q, p, r)))
        p_a, p_b = probs[vocab["A"]].item(), probs[vocab["B"]].item()
        assert win == pytest.approx(p_a / (p_a + p_b), abs=1e-5)
    # cached: a rerun never calls the model
    monkeypatch.setattr(local_judge, "choice_probs", lambda conversations: pytest.fail("judge called again"))
    assert local_judge.win_probabilities(questions, preds, refs) == wins


def test_local_judge_batches_with_left_padding(local_judge):
    """Short conversations of different lengths: batched probabilities equal one-at-a-time ones."""
    conversations = [[{"role": "user", "content": text}] for text in ["Hi", "A much longer message here", "Mid one"]]
    batched = local_judge.choice_probs(conversations)
    for conv, (p_a, p_b) in zip(conversations, batched):
        probs = _next_token_probs(local_judge, format_prompt(conv[0]["content"]))
        vocab = local_judge.tokenizer.get_vocab()
        assert (p_a, p_b) == pytest.approx((probs[vocab["A"]].item(), probs[vocab["B"]].item()), abs=1e-5)


def test_local_judge_missing_token_counts_as_zero(tmp_path):
    """A label with no token in the vocabulary has probability 0, so the other side wins outright."""
    b_missing = LocalJudge("tiny-random", cache_dir=tmp_path, labels=("A", "no-such-token"))
    assert b_missing.win_probabilities(["q"], ["p"], ["r"]) == [1.0]
    a_missing = LocalJudge("tiny-random", cache_dir=tmp_path, labels=("no-such-token", "B"))
    assert a_missing.win_probabilities(["q"], ["p"], ["r"]) == [0.0]
    neither = LocalJudge("tiny-random", cache_dir=tmp_path, labels=("nope", "none"))
    assert neither.win_probabilities(["q"], ["p"], ["r"]) == [0.5]


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible API judge against a fake server on 127.0.0.1
# ---------------------------------------------------------------------------------------------


class FakeOpenAI(ThreadingHTTPServer):
    """Answers /v1/chat/completions with `top_logprobs`; the first `failures` requests get HTTP `fail_status`."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.failures = 0
        self.fail_status = 500
        self.top_logprobs = [{"token": "A", "logprob": math.log(0.6)}, {"token": "B", "logprob": math.log(0.2)}]
        self.raw_reply: bytes | None = None  # when set, every 200 reply is exactly these bytes
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            fail = self.server.failures > 0
            self.server.failures -= fail
        if fail:
            self._reply(self.server.fail_status, {"error": {"message": "try again"}})
            return
        if self.server.raw_reply is not None:
            self._send(200, self.server.raw_reply)
            return
        first = self.server.top_logprobs[0] if self.server.top_logprobs else {"token": "X", "logprob": 0.0}
        content = [{"token": first["token"], "logprob": first["logprob"], "top_logprobs": self.server.top_logprobs}]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": first["token"]},
            "logprobs": {"content": content},
        }
        self._reply(200, {"id": "x", "object": "chat.completion", "choices": [choice]})

    def _reply(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture
def fake_api():
    server = FakeOpenAI()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _api_judge(server: FakeOpenAI, cache_dir) -> ApiJudge:
    return ApiJudge("judge-model", server.base_url, "sk-test", cache_dir=cache_dir, backoff_s=0.01, max_retries=3)


def test_api_judge_request_shape_retries_and_cache(fake_api, tmp_path):
    fake_api.failures = 2  # two HTTP 500s, then an answer
    judge = _api_judge(fake_api, tmp_path)
    assert judge.win_probabilities(["Q?"], ["PRED"], ["REF"]) == [pytest.approx(0.75)]
    assert len(fake_api.requests) == 3
    request = fake_api.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "judge-model"
    assert body["max_tokens"] == 1 and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] >= 2
    assert body["messages"] == judge_messages("Q?", "PRED", "REF")
    # a rerun (a fresh judge object, same cache) asks nothing; a new prompt asks once, duplicates once
    rerun = _api_judge(fake_api, tmp_path)
    assert rerun.win_probabilities(["Q?"], ["PRED"], ["REF"]) == [pytest.approx(0.75)]
    assert len(fake_api.requests) == 3
    assert (
        rerun.win_probabilities(["Q?", "Q2", "Q2"], ["PRED", "P2", "P2"], ["REF", "R2", "R2"])
        == [pytest.approx(0.75)] * 3
    )
    assert len(fake_api.requests) == 4


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ([{"token": "A", "logprob": math.log(0.9)}], 1.0),
        ([{"token": " B", "logprob": math.log(0.9)}, {"token": "C", "logprob": math.log(0.05)}], 0.0),
        ([{"token": "C", "logprob": 0.0}], 0.5),
    ],
)
def test_api_judge_missing_tokens(fake_api, tmp_path, top, expected):
    fake_api.top_logprobs = top
    assert _api_judge(fake_api, tmp_path).win_probabilities(["q"], ["p"], ["r"]) == [expected]


LOGPROBS_IGNORED = {  # what a server that ignores `logprobs` sends back
    "id": "x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "A"}, "logprobs": None}],
}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (json.dumps(LOGPROBS_IGNORED).encode(), "without the first token's top log-probabilities"),
        (b'{"id": "x", "error": "overloaded"}', "without the first token's top log-probabilities"),
        (json.dumps({"choices": [{"logprobs": {"content": [{"top_logprobs": []}]}}]}).encode(), "top log-prob"),
        (b"<html>502 Bad Gateway</html>", "with no JSON object (try 4)"),
    ],
)
def test_api_judge_unusable_reply_raises_and_caches_nothing(fake_api, tmp_path, raw, problem):
    fake_api.raw_reply = raw
    with pytest.raises(ApiError) as info:
        _api_judge(fake_api, tmp_path).win_probabilities(["q"], ["p"], ["r"])
    message = str(info.value)
    assert message.startswith(f"{fake_api.base_url}/chat/completions answered HTTP 200 ")
    assert problem in message and raw.decode()[:20] in message  # what the server said
    assert list(tmp_path.rglob("*")) == []  # nothing cached: a fixed server is asked again
    assert len(fake_api.requests) == (4 if b"html" in raw else 1)  # only a non-JSON reply is retried
    fake_api.raw_reply = None
    assert _api_judge(fake_api, tmp_path).win_probabilities(["q"], ["p"], ["r"]) == [pytest.approx(0.75)]


def test_api_judge_gives_up_clearly(fake_api, tmp_path):
    fake_api.failures, fake_api.fail_status = 100, 503
    with pytest.raises(ApiError, match="HTTP 503"):
        _api_judge(fake_api, tmp_path).win_probabilities(["q"], ["p"], ["r"])
    assert len(fake_api.requests) == 4  # 1 try + 3 retries
    fake_api.failures, fake_api.fail_status = 1, 400  # not retryable
    with pytest.raises(ApiError, match="HTTP 400"):
        _api_judge(fake_api, tmp_path / "other").win_probabilities(["q"], ["p"], ["r"])
    assert len(fake_api.requests) == 5


def test_saferpaca_eval_func_uses_env_settings(fake_api, tmp_path, monkeypatch):
    monkeypatch.setenv("ILR_JUDGE_BACKEND", "api")
    monkeypatch.setenv("ILR_JUDGE_MODEL", "env-judge")
    monkeypatch.setenv("ILR_JUDGE_BASE_URL", fake_api.base_url)
    monkeypatch.setenv("ILR_JUDGE_API_KEY", "sk-env")
    monkeypatch.setenv("ILR_JUDGE_CACHE", str(tmp_path))
    assert saferpaca_eval_func(["pred"], ["ref"], ["question"]) == [pytest.approx(0.75)]
    assert fake_api.requests[0]["body"]["model"] == "env-judge"
    assert fake_api.requests[0]["auth"] == "Bearer sk-env"
    assert list(tmp_path.rglob("*.json"))  # the answer is cached on disk


def test_no_network_at_import_or_construction(tmp_path):
    """Importing the judge and building an API judge from settings opens no connection."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise AssertionError('network used')\n"
        "socket.socket.connect = refuse\n"
        "from iterative_label_refinement.metrics.eval_saferpaca import ApiJudge, get_judge\n"
        f"assert isinstance(get_judge('api', cache_dir={str(tmp_path)!r}), ApiJudge)\n"
    )
    env = {**os.environ, "ILR_JUDGE_BASE_URL": "http://judge.invalid/v1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, timeout=60)


def test_get_judge_settings(monkeypatch):
    monkeypatch.delenv("ILR_JUDGE_MODEL", raising=False)
    with pytest.raises(ConfigError, match="ILR_JUDGE_MODEL"):
        get_judge("local")
    with pytest.raises(ConfigError, match="'nope'"):
        get_judge("nope")
    with pytest.raises(ConfigError, match="same length"):
        ApiJudge(cache_dir="unused").win_probabilities(["q"], ["p"], [])
