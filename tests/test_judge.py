"""The LLM judge as comparison feedback (core.judge), against a fake OpenAI-compatible server.

The preference rule and the two-order debiasing are checked against values computed by hand; the
error paths (429 with Retry-After, 500, missing log-probs, malformed JSON, a hang past the timeout,
a reply naming neither answer) each raise, cache nothing and never turn into a score of 0.5.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
from datasets import load_from_disk
from feedback_world import FakeJudgeServer, logprob_reply, make_world

from iterative_label_refinement.core.evaluator import JudgeEvaluator, debiased_scores
from iterative_label_refinement.core.http_api import ApiError
from iterative_label_refinement.core.judge import TEMPLATE_DIR, JudgeEndpoint, judge_template
from iterative_label_refinement.core.judge_client import JudgeError
from iterative_label_refinement.core.provenance import read_record
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import dpo, ilr, refine

SHOWN = re.compile(r"Solution A: (.*)\n\nSolution B: (.*)\n\nReply", re.S)


def shown(body: dict) -> tuple[str, str]:
    """The answers a request shows as A and B (the toy task's template)."""
    return SHOWN.search(body["messages"][-1]["content"]).groups()


def ok(top: list[tuple[str, float]]) -> tuple[int, dict, bytes]:
    return 200, {}, json.dumps(logprob_reply(top)).encode()


# The judge's top log-probs by the answer shown as A (probabilities written out, logs taken here).
TOPS = {
    "c1": [("B", 0.5), (" B", 0.1), ("A", 0.2), ("C", 0.1)],  # p_A .2, p_B .6 -> P(B) .75
    "p1": [("A", 0.3), (" A", 0.1), ("B", 0.4)],  # p_A .4, p_B .4 -> P(B) .5
    "c2": [("A", 0.9), ("B", 0.05)],  # P(B) .05 / .95
    "p2": [("B", 0.7), ("A", 0.1)],  # P(B) .875
}


def by_answer(body: dict) -> tuple[int, dict, bytes]:
    return ok([(token, math.log(p)) for token, p in TOPS[shown(body)[0]]])


@pytest.fixture
def server():
    servers = []

    def start(behaviour=by_answer) -> FakeJudgeServer:
        servers.append(FakeJudgeServer(behaviour))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _judge(server: FakeJudgeServer, cache, model="judge-m", **kwargs) -> JudgeEvaluator:
    kwargs = {"max_retries": 2, "backoff_s": 0.01, "timeout_s": 5.0, **kwargs}
    return JudgeEvaluator(JudgeEndpoint(server.base_url, model), "toy_arith", cache_dir=cache, **kwargs)


def test_preference_from_log_probs_and_two_order_debiasing_by_hand(server, tmp_path):
    fake = server()
    judge = _judge(fake, tmp_path)
    scores = debiased_scores(judge, ["q1", "q2"], ["c1", "c2"], ["p1", "p2"])
    # 1/2 [P(B | A=current, B=proposal) + 1 - P(B | A=proposal, B=current)]
    assert scores == pytest.approx([0.5 * (0.75 + 1 - 0.5), 0.5 * (0.05 / 0.95 + 1 - 0.875)])
    asked = sorted(shown(body) for body in fake.requests)
    assert asked == [("c1", "p1"), ("c2", "p2"), ("p1", "c1"), ("p2", "c2")]  # both orders, once each
    body = fake.requests[0]
    assert body["model"] == "judge-m" and body["max_tokens"] == 1 and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] >= 2
    question = next(q for q in ("q1", "q2") if f"Problem: {q}\n" in body["messages"][0]["content"])
    a, b = shown(body)
    expected = (TEMPLATE_DIR / "toy_arith.txt").read_text().format(question=question, answer_a=a, answer_b=b)
    assert body["messages"] == [{"role": "user", "content": expected}]


def test_replies_are_cached_by_prompt_answers_and_judge(server, tmp_path):
    fake = server()
    first = debiased_scores(_judge(fake, tmp_path), ["q1"], ["c1"], ["p1"])
    assert len(fake.requests) == 2
    assert debiased_scores(_judge(fake, tmp_path), ["q1"], ["c1"], ["p1"]) == pytest.approx(first)
    assert len(fake.requests) == 2  # a rerun asks nothing
    debiased_scores(_judge(fake, tmp_path, model="another"), ["q1"], ["c1"], ["p1"])
    assert len(fake.requests) == 4  # another judge is asked again
    debiased_scores(_judge(fake, tmp_path), ["q1 "], ["c1"], ["p1"])
    assert len(fake.requests) == 6  # another prompt too


def _waits():
    waits = []
    return waits, waits.append


def test_429_with_retry_after_is_waited_out(server, tmp_path):
    calls = []

    def limited(body):
        calls.append(1)
        return (429, {"Retry-After": "3"}, b'{"error": "slow down"}') if len(calls) == 1 else by_answer(body)

    waits, sleep = _waits()
    judge = _judge(server(limited), tmp_path, sleep=sleep)
    assert judge.p_accept(["q1"], ["c1"], ["p1"]) == pytest.approx([0.75])
    assert waits == [3.0]  # the server's wait, not the backoff's 0.01


def test_a_retry_after_beyond_the_budget_fails_now_and_caches_nothing(server, tmp_path):
    fake = server(lambda body: (429, {"Retry-After": "30"}, b"{}"))
    waits, sleep = _waits()
    with pytest.raises(ApiError, match="Retry-After"):
        _judge(fake, tmp_path, sleep=sleep, max_wait_s=5).p_accept(["q1"], ["c1"], ["p1"])
    assert waits == [] and len(fake.requests) == 1 and list(tmp_path.rglob("*.json")) == []


@pytest.mark.parametrize(
    ("behaviour", "error", "match", "tries"),
    [
        (lambda body: (500, {}, b'{"error": "boom"}'), ApiError, "HTTP 500", 3),
        (lambda body: ok([("A", 0.0)])[:2] + (json.dumps({"choices": [{"logprobs": None}]}).encode(),), ApiError,
         "without the first token's top log-probabilities", 1),
        (lambda body: ok([("A", 0.0)])[:2] + (b'{"choices": [{"logprobs": ',), ApiError, "no JSON object", 3),
        (lambda body: "hang", ApiError, "unreachable", 3),
        (lambda body: ok([("C", math.log(0.9)), ("D", math.log(0.1))]), JudgeError, "neither A nor B", 1),
    ],
    ids=["500", "missing logprobs", "malformed JSON", "hang past the timeout", "neither A nor B"],
)  # fmt: skip
def test_error_paths_raise_cache_nothing_and_never_score(server, tmp_path, behaviour, error, match, tries):
    fake = server(behaviour)
    waits, sleep = _waits()
    with pytest.raises(error, match=match):
        _judge(fake, tmp_path, sleep=sleep, timeout_s=0.2).p_accept(["q1"], ["c1"], ["p1"])
    assert len(fake.requests) == tries  # retried where retrying can help (max_retries=2)
    assert waits == [0.01, 0.02][: tries - 1]
    assert list(tmp_path.rglob("*.json")) == []  # an error is never cached: a fixed server is asked again
    fake.behaviour = by_answer
    assert _judge(fake, tmp_path).p_accept(["q1"], ["c1"], ["p1"]) == pytest.approx([0.75])


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("ILR_JUDGE_CACHE", str(tmp_path / "judge_cache"))
    for name in ("ILR_FEEDBACK_JUDGE_BASE_URL", "ILR_FEEDBACK_JUDGE_MODEL", "ILR_FEEDBACK_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return make_world(tmp_path / "world", n=12)


def _score(body: dict) -> tuple[int, dict, bytes]:
    """A judge that prefers B when B's final answer is the question's number (a fixed function of the texts)."""
    a, b = shown(body)
    n = re.search(r"What is (\d+) plus", body["messages"][0]["content"])[1]
    p_b = 0.8 if b.endswith(f"#### {n}") else 0.3
    return ok([("B", math.log(p_b)), ("A", math.log(0.95 - p_b))])


def test_ilr_and_dpo_steps_record_the_judge_and_a_failed_judge_writes_nothing(server, world):
    fake = server(_score)
    flags = dict(feedback="judge", judge_base_url=fake.base_url + "/", judge_model="smol")
    path = ilr.main("toy_arith", world["weak"], world["h1"], world["h2"], max_replace=0.5, **flags)
    digest = hashlib.sha256(judge_template("toy_arith").encode()).hexdigest()[:16]
    judge = {"judge": {"base_url": fake.base_url, "model": "smol", "template": digest}}
    assert read_record(path)["inputs"]["feedback"] == judge
    assert any(r["score"] not in (-1.0, 0.0, 1.0) for r in load_from_disk(path))  # the judge's, not an oracle's
    pairs = dpo.main("toy_arith", world["weak"], world["r0"], subsample=0.5, **flags)
    assert read_record(pairs)["inputs"]["feedback"] == judge
    # Another judge does not pass for this one: the step refuses to reuse what it made.
    with pytest.raises(ConfigError, match="inputs.feedback.judge.model"):
        ilr.main("toy_arith", world["weak"], world["h1"], world["h2"], max_replace=0.5,
                 **{**flags, "judge_model": "other"})  # fmt: skip
    fake.behaviour = lambda body: (500, {}, b"{}")
    with pytest.raises(ApiError):  # a failed comparison fails the step: no label set, no 0.5
        refine.main("dpo", "toy_arith", world["weak"], strong_model_path=world["r0"], beta=0.1, subsample=0.3,
                    **{**flags, "judge_model": "uncached"})  # fmt: skip
    assert not list(Path(world["weak"]).glob("dpo0.10.3_0*"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (dict(feedback="judge", evaluator_path="ev", judge_base_url="http://x/v1", judge_model="m"),
         "--feedback=judge takes no --evaluator_path"),
        (dict(evaluator_path="ev", judge_model="m"), "--judge_model belong to --feedback=judge"),
        (dict(feedback="judge", judge_model="m"), "needs the base URL of an OpenAI-compatible server, got None"),
        (dict(feedback="judge", judge_base_url="127.0.0.1:8080"), "got '127.0.0.1:8080'"),
        (dict(feedback="judge", judge_base_url="http://x/v1"), "needs a model name"),
        (dict(feedback="judge", judge_base_url="http://x/v1", judge_model="m", use_oracle_feedback=True),
         "--use_oracle_feedback replaces the feedback: drop --feedback=judge"),
        (dict(feedback="people"), "unknown --feedback='people'"),
    ],
)  # fmt: skip
def test_judge_flags_are_checked(world, flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ilr.main("toy_arith", world["weak"], world["h1"], world["h2"], **flags)


def test_naive_takes_no_judge(world):
    with pytest.raises(ConfigError, match="a naive step takes no feedback: drop --feedback"):
        refine.main("naive", "toy_arith", world["weak"], world["h1"], world["h2"], max_replace=0.5, feedback="judge",
                    judge_base_url="http://x/v1", judge_model="m")  # fmt: skip


def test_every_task_registers_a_template_with_the_three_fields():
    from iterative_label_refinement.core.datasets import dataset_names

    for task in dataset_names():
        text = judge_template(task)
        assert "{question}" in text and "{answer_a}" in text and "{answer_b}" in text


def test_the_docs_show_every_template_as_it_is():
    from iterative_label_refinement.core.datasets import dataset_names

    doc = (Path(__file__).resolve().parents[1] / "docs" / "feedback_sources.md").read_text()
    for task in dataset_names():
        assert f"```text\n{judge_template(task)}```" in doc, task


def test_demo_with_the_judge_trains_no_evaluator_and_asks_the_judge(tmp_path):
    from test_scripts import dry_run, flags, module

    cmds = dry_run("demo.sh", tmp_path, RESULTS_FOLDER="", DEMO="quick", EVALUATOR="judge",
                   ILR_FEEDBACK_JUDGE_BASE_URL="http://127.0.0.1:1/v1", ILR_FEEDBACK_JUDGE_MODEL="m")  # fmt: skip
    assert not [c for c in cmds if module(c) in ("generate_evaluator_data", "train_evaluator")]
    steps = [flags(c) for c in cmds if module(c) in ("ilr", "dpo")]
    assert [module(c) for c in cmds if module(c) in ("ilr", "dpo", "naive")] == ["ilr", "dpo"]
    assert all(f["feedback"] == "judge" and "evaluator_path" not in f for f in steps)
    assert {f["results_folder"] for f in map(flags, cmds) if "results_folder" in f} == {"demo_results/quick-judge"}


def test_the_report_names_each_methods_feedback_source(tmp_path):
    from iterative_label_refinement.experiments.report import Cell, feedback_lines

    sources = {"ilr0.3": {"judge": {"base_url": "http://h/v1", "model": "smol", "template": "abc"}},
               "dpo0.50.15": {"human_verdicts": {"name": "v.csv", "sha256": "123"}},
               "orailr0.3": "oracle", "naive0.3": None}  # fmt: skip
    cells = []
    for method, source in sources.items():
        label_set = tmp_path / "weak" / f"{method}_0_weak_labels"
        label_set.mkdir(parents=True)
        (label_set / "provenance.json").write_text(json.dumps({"inputs": {"feedback": source}}))
        for round_id in (0, 1):  # round 0 trained on weak labels: no feedback
            cells.append(Cell("toy_arith", "s", "w", method, round_id, 0, {}, None, None, None,
                              str(tmp_path / f"run-{method}-{round_id}"), "weak"))  # fmt: skip
    assert feedback_lines(cells) == [
        "dpo0.50.15: human verdicts v.csv (sha256 123)",
        "ilr0.3: LLM judge smol at http://h/v1 (template abc)",
        "orailr0.3: oracle (ground truth)",
    ]  # naive takes no feedback
