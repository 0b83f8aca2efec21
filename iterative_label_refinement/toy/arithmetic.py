"""The offline synthetic task: short multi-step arithmetic in GSM8K answer format.

`61 minus 48 plus 71` -> `61-48=13\n13+71=84\n#### 84`. Short sequences keep a whole toy pipeline
within minutes on a CPU: arithmetic is learned quickly from short windows (docs/toy_world.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

WORDS = {"+": "plus", "-": "minus"}


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def question(self) -> str:
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:]):
            parts += [WORDS[op], str(x)]
        return " ".join(parts)

    @property
    def header(self) -> str:
        """The symbolic form used for pretraining documents: `61-48+71=?`."""
        text = str(self.operands[0]) + "".join(f"{op}{x}" for op, x in zip(self.ops, self.operands[1:]))
        return text + "=?"

    def steps(self) -> list[tuple[int, str, int, int]]:
        value, out = self.operands[0], []
        for op, x in zip(self.ops, self.operands[1:]):
            new = value + x if op == "+" else value - x
            out.append((value, op, x, new))
            value = new
        return out

    @property
    def result(self) -> int:
        return self.steps()[-1][3]

    @property
    def answer(self) -> str:
        lines = [f"{a}{op}{b}={c}" for a, op, b, c in self.steps()]
        return "\n".join(lines) + f"\n#### {self.result}"


def sample_problem(rng: random.Random, n_steps: int = 2, low: int = 10, high: int = 99) -> Problem:
    """Operands in [low, high], results non-negative and intermediate results <= high."""
    while True:
        operands = [rng.randint(low, high)]
        ops: list[str] = []
        value = operands[0]
        ok = True
        for _ in range(n_steps):
            op = rng.choice("+-")
            x = rng.randint(low, high)
            if op == "-" and x > value:
                if len(ops) == 0:
                    operands[0], x = x, operands[0]  # order the first subtraction to stay >= 0
                    value = operands[0]
                else:
                    ok = False
                    break
            value = value + x if op == "+" else value - x
            operands.append(x)
            ops.append(op)
        if ok and all(c <= high for *_, c in Problem(tuple(operands), tuple(ops)).steps()[:-1]):
            return Problem(tuple(operands), tuple(ops))


def make_split(n: int, seed: int, n_steps: int = 2, exclude: set[str] | None = None) -> list[Problem]:
    """`n` distinct problems drawn from `seed`, none of whose questions are in `exclude`."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    while len(out) < n:
        p = sample_problem(rng, n_steps)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def make_task(n_train: int = 2000, n_test: int = 400, seed: int = 1234) -> dict[str, list[dict[str, str]]]:
    """Train and test rows (`question`, `answer`), disjoint questions, deterministic in `seed`."""
    test = make_split(n_test, seed + 1)
    train = make_split(n_train, seed, exclude={p.question for p in test})
    return {
        "train": [{"question": p.question, "answer": p.answer} for p in train],
        "test": [{"question": p.question, "answer": p.answer} for p in test],
    }
