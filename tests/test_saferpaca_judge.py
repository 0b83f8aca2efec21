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

from iterative_label_refinement.core.http_api import ApiError, retry_after_seconds
from iterative_label_refinement.core.judge_client import (
    ApiJudge,
    Judge,
    JudgeError,
    LocalJudge,
    choice_probs_from_top_logprobs,
    is_logprob,
    is_probability_pair,
    label_token_ids,
)
from iterative_label_refinement.core.prompts import format_prompt
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.metrics.eval_saferpaca import (
    get_judge,
    judge_messages,
    saferpaca_eval_func,
    win_probabilities,
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


def test_logprob_and_probability_pair_checks():
    assert is_logprob(0) and is_logprob(-9999.0) and is_logprob(1e-7)  # float32 rounding of a certain token
    for bad in (2e-6, 5.0, math.nan, math.inf, -math.inf, True, "0", None):
        assert not is_logprob(bad), bad
    assert is_probability_pair(0.6, 0.4) and is_probability_pair(0, 0) and is_probability_pair(1.00001, 0)
    for bad in ((math.nan, 0.2), (148.4, 0.2), (0.7, 0.7), (-0.1, 0.5), (math.inf, 0), (True, 0), ("0.5", 0.5)):
        assert not is_probability_pair(*bad), bad


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
    wins = win_probabilities(local_judge, questions, preds, refs)
    for q, p, r, win in zip(questions, preds, refs, wins):
        probs = _next_token_probs(local_judge, local_judge.render(judge_messages(q, p, r)))
        p_a, p_b = probs[vocab["A"]].item(), probs[vocab["B"]].item()
        assert win == pytest.approx(p_a / (p_a + p_b), abs=1e-5)
    # cached: a rerun never calls the model
    monkeypatch.setattr(local_judge, "choice_probs", lambda conversations: pytest.fail("judge called again"))
    assert win_probabilities(local_judge, questions, preds, refs) == wins


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
    assert win_probabilities(b_missing, ["q"], ["p"], ["r"]) == [1.0]
    a_missing = LocalJudge("tiny-random", cache_dir=tmp_path, labels=("no-such-token", "B"))
    assert win_probabilities(a_missing, ["q"], ["p"], ["r"]) == [0.0]
    neither = LocalJudge("tiny-random", cache_dir=tmp_path, labels=("nope", "none"))
    assert win_probabilities(neither, ["q"], ["p"], ["r"]) == [0.5]


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
        self.retry_after: str | None = None  # the Retry-After header of a failure, if any
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
            retry = {"Retry-After": self.server.retry_after} if self.server.retry_after is not None else {}
            self._reply(self.server.fail_status, {"error": {"message": "try again"}}, retry)
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

    def _reply(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)  # NaN stays NaN, as Python's json writes it

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
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


def _api_judge(server: FakeOpenAI, cache_dir, **request_kwargs) -> ApiJudge:
    request_kwargs = {"backoff_s": 0.01, "max_retries": 3, **request_kwargs}
    return ApiJudge("judge-model", server.base_url, "sk-test", cache_dir=cache_dir, **request_kwargs)


def test_api_judge_request_shape_retries_and_cache(fake_api, tmp_path):
    fake_api.failures = 2  # two HTTP 500s, then an answer
    judge = _api_judge(fake_api, tmp_path)
    assert win_probabilities(judge, ["Q?"], ["PRED"], ["REF"]) == [pytest.approx(0.75)]
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
    assert win_probabilities(rerun, ["Q?"], ["PRED"], ["REF"]) == [pytest.approx(0.75)]
    assert len(fake_api.requests) == 3
    assert (
        win_probabilities(rerun, ["Q?", "Q2", "Q2"], ["PRED", "P2", "P2"], ["REF", "R2", "R2"])
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
    assert win_probabilities(_api_judge(fake_api, tmp_path), ["q"], ["p"], ["r"]) == [expected]


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
        win_probabilities(_api_judge(fake_api, tmp_path), ["q"], ["p"], ["r"])
    message = str(info.value)
    assert message.startswith(f"{fake_api.base_url}/chat/completions answered HTTP 200 ")
    assert problem in message and raw.decode()[:20] in message  # what the server said
    assert list(tmp_path.rglob("*")) == []  # nothing cached: a fixed server is asked again
    assert len(fake_api.requests) == (4 if b"html" in raw else 1)  # only a non-JSON reply is retried
    fake_api.raw_reply = None
    assert win_probabilities(_api_judge(fake_api, tmp_path), ["q"], ["p"], ["r"]) == [pytest.approx(0.75)]


@pytest.mark.parametrize(
    "bad_entry",
    [
        {"token": "A", "logprob": math.nan},  # Python's json reads NaN; it used to score a fake 0.5
        {"token": "A", "logprob": 5.0},  # a "probability" of e^5 = 148.4
        {"token": "A", "logprob": math.inf},
        {"token": "A", "logprob": -math.inf},
        {"token": "A", "logprob": 2e-6},  # above the rounding tolerance
        {"token": "A", "logprob": True},  # a JSON boolean is not a number
        {"token": "C", "logprob": math.nan},  # even on a token that is neither A nor B: the reply is broken
    ],
)
def test_api_judge_refuses_logprobs_that_are_not_finite_and_at_most_0(fake_api, tmp_path, bad_entry):
    fake_api.top_logprobs = [bad_entry, {"token": "B", "logprob": math.log(0.2)}]
    with pytest.raises(ApiError, match="top log-probability that is not a finite number <= 0"):
        win_probabilities(_api_judge(fake_api, tmp_path), ["q"], ["p"], ["r"])
    assert list(tmp_path.rglob("*")) == []  # never cached: a fixed server is asked again
    assert len(fake_api.requests) == 1  # not retried: the server would say the same
    fake_api.top_logprobs = [{"token": "A", "logprob": 1e-7}, {"token": "B", "logprob": math.log(1e-9)}]
    assert win_probabilities(_api_judge(fake_api, tmp_path), ["q"], ["p"], ["r"]) == [pytest.approx(1.0)]


def test_api_judge_missing_logprob_is_an_error(fake_api, tmp_path):
    fake_api.top_logprobs = [{"token": "B", "logprob": math.log(0.2)}, {"token": "A"}]
    with pytest.raises(ApiError, match="without the first token's top log-probabilities"):
        win_probabilities(_api_judge(fake_api, tmp_path), ["q"], ["p"], ["r"])
    assert list(tmp_path.rglob("*")) == []


class FixedJudge(Judge):
    """A backend that answers the same (P(A), P(B)) for every prompt and counts its calls."""

    def __init__(self, answer: tuple[float, float], cache_dir):
        super().__init__("fixed", cache_dir)
        self.answer, self.asked = answer, 0

    def choice_probs(self, conversations):
        self.asked += len(conversations)
        return [self.answer] * len(conversations)


@pytest.mark.parametrize("answer", [(math.nan, math.nan), (math.nan, 0.2), (148.4, 0.2), (0.7, 0.7), (-0.1, 0.5)])
def test_judge_refuses_an_answer_that_is_not_a_probability_pair(tmp_path, answer):
    """E.g. a local model whose logits overflowed to NaN: an error, never cached, never scored 0.5."""
    with pytest.raises(JudgeError, match="not two probabilities"):
        win_probabilities(FixedJudge(answer, tmp_path), ["q"], ["p"], ["r"])
    assert list(tmp_path.rglob("*")) == []


TORN = "torn"  # the cache file cut in half, as a kill or power loss during a non-atomic write leaves it


@pytest.mark.parametrize(
    "damage",
    [
        TORN,
        "",
        '{"judge": "fixed", "p_a": NaN, "p_b": 0.2}',  # what an old version cached from a NaN log-prob
        '{"judge": "fixed", "p_a": 148.4, "p_b": 0.2}',  # ... and from a log-prob of +5
        '{"judge": "fixed", "p_a": 0.6}',
        '{"judge": "fixed", "p_a": "0.6", "p_b": 0.2}',
        '{"judge": "another", "p_a": 0.1, "p_b": 0.9}',
        "[0.6, 0.2]",
    ],
)
def test_damaged_cache_entry_is_warned_about_and_asked_again(tmp_path, caplog, damage):
    questions, preds, refs = ["q1", "q2", "q3"], ["p1", "p2", "p3"], ["r1", "r2", "r3"]
    assert win_probabilities(FixedJudge((0.6, 0.2), tmp_path), questions, preds, refs) == [pytest.approx(0.75)] * 3
    damaged = FixedJudge((0.6, 0.2), tmp_path)._cache_file(judge_messages("q2", "p2", "r2"))
    text = damaged.read_text()
    damaged.write_text(text[: len(text) // 2] if damage == TORN else damage)
    rerun = FixedJudge((0.1, 0.3), tmp_path)  # a different answer shows which entries were asked again
    with caplog.at_level("WARNING"):
        wins = win_probabilities(rerun, questions, preds, refs)
    assert wins == [pytest.approx(0.75), pytest.approx(0.25), pytest.approx(0.75)]
    assert rerun.asked == 1  # only the damaged entry; the rest of the cache is used
    assert json.loads(damaged.read_text()) == {"judge": "fixed", "p_a": 0.1, "p_b": 0.3}  # repaired
    assert any(f"Judge cache entry {damaged} " in m and "asking the judge again" in m for m in caplog.messages)
    assert win_probabilities(FixedJudge((0.0, 1.0), tmp_path), questions, preds, refs) == wins  # now all cached


def test_api_judge_honours_retry_after(fake_api, tmp_path):
    """`Retry-After: 3` waits 3 s (not the 0.2 s backoff); the sleep is recorded, not slept."""
    sleeps: list[float] = []
    fake_api.failures, fake_api.fail_status, fake_api.retry_after = 1, 429, "3"
    judge = _api_judge(fake_api, tmp_path, backoff_s=0.2, sleep=sleeps.append)
    assert win_probabilities(judge, ["q"], ["p"], ["r"]) == [pytest.approx(0.75)]
    assert sleeps == [3.0] and len(fake_api.requests) == 2
    fake_api.failures, fake_api.fail_status, fake_api.retry_after = 2, 503, None  # no header: doubling backoff
    assert win_probabilities(judge, ["q2"], ["p"], ["r"]) == [pytest.approx(0.75)]
    assert sleeps == [3.0, 0.2, 0.4]


def test_api_judge_fails_when_retry_after_exceeds_the_budget(fake_api, tmp_path):
    sleeps: list[float] = []
    fake_api.failures, fake_api.fail_status, fake_api.retry_after = 100, 429, "10"
    judge = _api_judge(fake_api, tmp_path, max_retries=5, max_wait_s=25, sleep=sleeps.append)
    with pytest.raises(
        ApiError, match=r"HTTP 429 \(try 3\).*would wait 10 s \(its Retry-After\), more than the 5 s left"
    ):
        win_probabilities(judge, ["q"], ["p"], ["r"])
    assert sleeps == [10.0, 10.0] and len(fake_api.requests) == 3  # never retried early
    assert list(tmp_path.rglob("*")) == []
    fake_api.retry_after = "120"  # more than the whole budget: fails at once
    with pytest.raises(ApiError, match="would wait 120 s"):
        win_probabilities(_api_judge(fake_api, tmp_path, max_wait_s=25, sleep=sleeps.append), ["q"], ["p"], ["r"])
    assert sleeps == [10.0, 10.0] and len(fake_api.requests) == 4


def test_retry_after_seconds():
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    stamp = 1445412480.0  # that date, in seconds since the epoch
    assert retry_after_seconds("3", now=stamp) == 3.0
    assert retry_after_seconds(" 120 ", now=stamp) == 120.0
    assert retry_after_seconds(date, now=stamp - 4.5) == pytest.approx(4.5)
    assert retry_after_seconds(date, now=stamp + 60) == 0.0  # already past: retry now
    for unreadable in (None, "", "soon", "-5", "1.5", "\u00b2"):  # absent or not RFC 9110: the backoff applies
        assert retry_after_seconds(unreadable, now=stamp) is None, unreadable


def test_api_judge_gives_up_clearly(fake_api, tmp_path):
    fake_api.failures, fake_api.fail_status = 100, 503
    with pytest.raises(ApiError, match="HTTP 503"):
        win_probabilities(_api_judge(fake_api, tmp_path), ["q"], ["p"], ["r"])
    assert len(fake_api.requests) == 4  # 1 try + 3 retries
    fake_api.failures, fake_api.fail_status = 1, 400  # not retryable
    with pytest.raises(ApiError, match="HTTP 400"):
        win_probabilities(_api_judge(fake_api, tmp_path / "other"), ["q"], ["p"], ["r"])
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
        "from iterative_label_refinement.core.judge_client import ApiJudge\n"
        "from iterative_label_refinement.metrics.eval_saferpaca import get_judge\n"
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
        win_probabilities(ApiJudge("judge-model", cache_dir="unused"), ["q"], ["p"], [])
