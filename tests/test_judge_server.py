"""The LLM judge against a real OpenAI-compatible server: llama-cpp-python's, serving the packaged
SmolLM2-135M-Instruct GGUF on 127.0.0.1, asked one ILR round and one DPO preference step of the toy world.

llama-cpp-python compiles llama.cpp from source when installed, which would lengthen `make test`
by far more than its budget, so it is installed by its own target, `make judge-server` (its wheel
is built once and cached), and CI runs this file as its own step (.ci/judge_server). Without the
package every test here is skipped, saying so.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest
from datasets import load_from_disk
from feedback_world import make_world

from iterative_label_refinement.core.embedder import post_json
from iterative_label_refinement.core.judge import JudgeEndpoint, JudgeEvaluator
from iterative_label_refinement.core.provenance import read_record
from iterative_label_refinement.experiments import dpo, ilr

pytestmark = pytest.mark.skipif(
    find_spec("llama_cpp") is None or find_spec("uvicorn") is None,
    reason="the real judge server needs llama-cpp-python[server], which `make judge-server` installs (kept out of "
    "`make test`: it compiles llama.cpp from source)",
)
MODEL = "smollm2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """llama-cpp-python's server on the packaged SmolLM2 GGUF; its base URL once it answers."""
    from iterative_label_refinement.core.models import MODELS_DICT

    gguf = MODELS_DICT["HuggingFaceTB/SmolLM2-135M-Instruct"].packaged.locate()
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{base_url}/models", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start (exit {proc.poll()}): {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("ILR_JUDGE_CACHE", str(tmp_path / "judge_cache"))
    return make_world(tmp_path / "world", n=6)


def _p_b(base_url: str, judge: JudgeEvaluator, question: str, a: str, b: str) -> float:
    """P(B better) asked directly, computed here from the raw top log-probs: p_B / (p_A + p_B)."""
    body = {"model": MODEL, "messages": judge.messages(question, a, b), "max_tokens": 1, "temperature": 0,
            "logprobs": True, "top_logprobs": 20}  # fmt: skip
    top = post_json(base_url, "chat/completions", body, None)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    p = {label: sum(math.exp(e["logprob"]) for e in top if e["token"].strip() == label) for label in "AB"}
    return p["B"] / (p["A"] + p["B"])


def test_ilr_round_with_the_judge(server, world):
    path = ilr.main("toy_arith", world["weak"], world["h1"], world["h2"], max_replace=0.5, feedback="judge",
                    judge_base_url=server, judge_model=MODEL)  # fmt: skip
    assert read_record(path)["inputs"]["feedback"]["judge"]["model"] == MODEL
    judge = JudgeEvaluator(JudgeEndpoint(server, MODEL), "toy_arith")
    labels = {r["question"]: r["answer"] for r in load_from_disk(str(Path(world["weak"]) / "weak_labels"))}
    proposals = {r["question"]: r["answer"] for h in ("h1", "h2") for r in load_from_disk(f"{world[h]}/weak_labels")}
    compared = [r for r in load_from_disk(path) if r["score"] != -1.0]
    assert compared
    for row in compared:  # each score is the two-order mean of what the server answers
        q = row["question"]
        by_hand = 0.5 * (
            _p_b(server, judge, q, labels[q], proposals[q]) + 1 - _p_b(server, judge, q, proposals[q], labels[q])
        )
        assert row["score"] == pytest.approx(by_hand, abs=1e-6)


def test_dpo_preference_step_with_the_judge(server, world):
    path = dpo.main("toy_arith", world["weak"], world["r0"], subsample=0.5, feedback="judge", judge_base_url=server,
                    judge_model=MODEL)  # fmt: skip
    pairs = list(load_from_disk(path))
    assert len(pairs) == int(len(load_from_disk(f"{world['r0']}/weak_labels")) * 3 * 0.5)
    assert all(0 <= p["score"] <= 1 and p["chosen"] != p["rejected"] for p in pairs)
