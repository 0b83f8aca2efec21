"""Shared by the feedback-source tests: a synthetic toy world and a fake OpenAI-compatible judge server.

The world: a weak run's labels, two half runs' proposals and a round model's 6 samples per prompt,
each with known correctness (`acc`), so that oracle feedback is defined for every comparison.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from datasets import Dataset


def _answer(rng: random.Random, i: int) -> str:
    return f"{i} + 0 = {rng.choice([i, i, i + 1, i + 2])} #### {rng.choice([i, i, i + 1, i + 2])}"


def make_world(root: Path, n: int = 24, seed: int = 0) -> dict[str, str]:
    """weak/weak_labels, half runs h-hd=1-ri=0 and h-hd=2-ri=0, and r-ri=0 with 6 samples per prompt."""
    rng = random.Random(seed)
    weak, h1, h2, r0 = root / "weak", root / "h-hd=1-ri=0", root / "h-hd=2-ri=0", root / "r-ri=0"
    base = [{"question": f"What is {i} plus 0?", "answer": _answer(rng, i), "gt_answer": f"#### {i}",
             "acc": float(rng.random() < 0.5)} for i in range(n)]  # fmt: skip
    Dataset.from_list(base).save_to_disk(str(weak / "weak_labels"))
    proposals = [dict(r, answer=_answer(rng, i), acc=float(rng.random() < 0.6)) for i, r in enumerate(base)]
    Dataset.from_list(proposals[: n // 2]).save_to_disk(str(h1 / "weak_labels"))
    Dataset.from_list(proposals[n // 2 :]).save_to_disk(str(h2 / "weak_labels"))
    samples = [{"question": r["question"], "gt_answer": r["gt_answer"],
                "answer": [f"{_answer(rng, i)} (sample {k})" for k in range(6)],
                "acc": [float(rng.random() < 0.5) for _ in range(6)]} for i, r in enumerate(base)]  # fmt: skip
    Dataset.from_list(samples).save_to_disk(str(r0 / "weak_labels"))
    return {k: str(v) for k, v in dict(weak=weak, h1=h1, h2=h2, r0=r0).items()}


def logprob_reply(top: list[tuple[str, float]]) -> dict:
    """An OpenAI chat-completions reply of one token with these top log-probabilities."""
    entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]
    content = [{**entries[0], "top_logprobs": entries}]
    choice = {"index": 0, "message": {"role": "assistant", "content": top[0][0]}, "logprobs": {"content": content},
              "finish_reason": "length"}  # fmt: skip
    return {"id": "fake", "object": "chat.completion", "choices": [choice]}


# What the server does with one request: (status, headers, body), or "hang" (sleep past any client timeout).
Behaviour = Callable[[dict], "tuple[int, dict[str, str], bytes] | str"]


class FakeJudgeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, behaviour: Behaviour):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeJudgeServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
        answer = self.server.behaviour(body)
        if answer == "hang":
            time.sleep(0.6)
            return
        status, headers, data = answer
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up
            pass

    def log_message(self, *args) -> None:
        pass
