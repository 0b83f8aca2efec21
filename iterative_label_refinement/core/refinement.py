"""The decisions that spend comparison feedback, as pure functions of plain data.

* ILR: which disagreeing proposals replace the current label.
* naive ILR: which labels are replaced at random.
* DPO: how samples are paired, scored and kept as preferences.
* oracle feedback: what ground truth says about a comparison, for each method.

`core.refinement_step` runs one step of any method around these (inputs, feedback, output).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from iterative_label_refinement.core.label_sets import first
from iterative_label_refinement.core.methods import Method, check_fraction
from iterative_label_refinement.core.settings import ConfigError

# ---------------------------------------------------------------------------------------------
# ILR
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ILRDecision:
    replace: list[bool]
    threshold: float


def ilr_threshold(scores: Sequence[float], max_replace: float) -> float:
    """max(0.5, the (1 - max_replace) quantile of `scores`), NumPy's linear quantile, as the reference.

    With the m scores sorted, s_0 <= ... <= s_{m-1}, and (1 - max_replace)(m - 1) = j + f (j whole,
    0 <= f < 1), the quantile is s_j + f (s_{j+1} - s_j): at least s_j, so only s_{j+1}, ..., s_{m-1}
    can lie strictly above it, which `ilr_decide` asks. That is at most ceil(max_replace (m - 1))
    scores, exactly as many when they are distinct and above 0.5; ties at the threshold all stay.
    This is not a cap of `max_replace` m: 1 of 2 scores passes at max_replace 0.1, 4 of 26 at
    0.15; with max_replace 1 the lowest score never passes.
    """
    if len(scores) == 0:
        return 0.5
    return max(0.5, float(np.quantile(np.asarray(scores, dtype=float), 1 - max_replace)))


def ilr_decide(agree: Sequence[bool], scores: Sequence[float | None], max_replace: float,
               oracle: bool = False) -> ILRDecision:  # fmt: skip
    """Replace a label when its proposal disagrees and scores strictly above the threshold.

    `scores[i]` is the evaluator's (debiased) preference for the proposal, ignored where `agree[i]`.
    The threshold is `ilr_threshold` of the disagreeing rows' scores: of m disagreements, at most
    ceil(max_replace (m - 1)) change, which is more than a `max_replace` fraction when m is small
    (1 of 2 at 0.1, 4 of 26 at 0.15).
    With oracle feedback every correct proposal (score 1) is accepted: threshold 0.5, no cap.
    """
    check_fraction("max_replace", max_replace)
    compared = [float(s) for a, s in zip(agree, scores) if not a]
    threshold = 0.5 if oracle else ilr_threshold(compared, max_replace)
    replace = [(not a) and float(s) > threshold for a, s in zip(agree, scores)]
    return ILRDecision(replace=replace, threshold=threshold)


def match_proposals(questions: list[str], proposal_sets: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The proposal row for each question, matched by question text (never by position)."""
    by_question: dict[str, dict[str, Any]] = {}
    for ds in proposal_sets:
        for row in ds:
            by_question.setdefault(row["question"], row)
    missing = [q for q in questions if q not in by_question]
    if missing:
        raise ConfigError(
            f"{len(missing)} current labels have no proposal (e.g. {missing[0]!r}): the half-data runs were "
            "not trained on this round's labels"
        )
    return [by_question[q] for q in questions]


def refined_rows(labels: Sequence[dict[str, Any]], proposals: list[dict[str, Any]], replace: list[bool],
                 scores: list[float]) -> list[dict[str, Any]]:  # fmt: skip
    """Refined-label rows (the chosen answer, its acc, the evaluator's score); task extras (db_name, category, ...) are carried along."""
    rows = []
    for row, prop, rep, score in zip(labels, proposals, replace, scores):
        out = {k: v for k, v in row.items() if k != "answer_ids"}  # the ids of the old answer would be stale
        out["answer"] = first(prop["answer"]) if rep else first(row["answer"])
        out["acc"] = first(prop.get("acc")) if rep else first(row.get("acc"))
        out["score"] = float(score)
        rows.append(out)
    return rows


# ---------------------------------------------------------------------------------------------
# naive ILR
# ---------------------------------------------------------------------------------------------


def naive_choice(questions: Sequence[str], max_replace: float, seed: int, round_id: int,
                 redraw_each_round: bool = False) -> list[bool]:  # fmt: skip
    """Which of the rows (one per question, in the order given) are replaced: exactly
    k = int(n * max_replace) of the n rows, uniformly at random.

    Reference rule (default): the rows are put in question order (Python's stable `sorted` on the
    question text) and, with NumPy's generator reseeded with `seed` every round,
        np.random.seed(seed); picked = np.random.choice(n, k, replace=False)
    the rows at those sorted positions are replaced. `round_id` is not read: every round of a run
    replaces the same questions, whatever order its rows come in.
    `redraw_each_round`: k row positions in the order given, drawn by
    `random.Random(seed + round_id).sample(range(n), k)`, so each round replaces other rows.
    """
    check_fraction("max_replace", max_replace)
    n, k = len(questions), int(len(questions) * max_replace)
    if redraw_each_round:
        chosen = set(random.Random(seed + round_id).sample(range(n), k))
    else:
        by_question = sorted(range(n), key=lambda i: questions[i])  # the row at each sorted position
        # RandomState(seed) is the generator np.random.seed(seed) resets, without touching NumPy's global one.
        chosen = {by_question[p] for p in np.random.RandomState(seed).choice(n, k, replace=False)}
    return [i in chosen for i in range(n)]


# ---------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------


def dpo_pairs(rows: Sequence[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(row, first, second) for every pair of every prompt's samples (`sample_pairs`)."""
    for i, row in enumerate(rows):
        if not isinstance(row["answer"], list) or len(row["answer"]) < 2:
            raise ConfigError(f"row {i} holds {row['answer']!r}: DPO needs several samples per prompt (num_samples=6)")
    return [(r, a, b) for r, row in enumerate(rows) for a, b in sample_pairs(row["answer"])]


def sample_pairs(samples: Sequence[str]) -> list[tuple[int, int]]:
    """Samples (0, 1), (2, 3), (4, 5), ...: disjoint pairs, so every sample is used once."""
    return [(i, i + 1) for i in range(0, len(samples) - 1, 2)]


def oracle_pair_score(acc_first: float, acc_second: float, neutral_ties: bool = False) -> float:
    """P(second is better) from correctness.

    Reference rule (default): 1 when the second is correct and the first is not, else 0, so a tie
    (both right or both wrong) is as confident as a real preference and keeps the first as chosen.
    `neutral_ties`: a tie scores 0.5 instead (zero confidence), so ties rank last and are kept only
    when `subsample` asks for more pairs than there are real preferences.
    """
    if neutral_ties:
        return 0.5 + 0.5 * (float(acc_second) - float(acc_first))
    return float(float(acc_second) > float(acc_first))


@dataclass(frozen=True)
class Preference:
    row: int  # index of the prompt
    first: int  # sample indices of the pair
    second: int
    score: float  # P(second is better)

    @property
    def confidence(self) -> float:
        return abs(self.score - 0.5)

    @property
    def chosen_is_second(self) -> bool:
        return self.score > 0.5


def select_preferences(pairs: Sequence[tuple[int, int, int]], scores: Sequence[float], subsample: float,
                       seed: int = 0) -> list[Preference]:  # fmt: skip
    """Keep the int(n * subsample) most confident pairs (|score - 0.5|), in their original order.

    Pairs of equal confidence are ranked in a seeded random order, as the reference did, so a cut
    through a tie takes a random subset of it rather than the first prompts.
    """
    check_fraction("subsample", subsample)
    prefs = [Preference(row, a, b, float(s)) for (row, a, b), s in zip(pairs, scores)]
    shuffled = list(range(len(prefs)))
    random.Random(seed).shuffle(shuffled)
    ranked = sorted(shuffled, key=lambda i: -prefs[i].confidence)
    keep = sorted(ranked[: int(len(prefs) * subsample)])
    return [prefs[i] for i in keep]


def preference_rows(rows: Sequence[dict[str, Any]], pairs: Sequence[tuple[int, int, int]], scores: Sequence[float],
                    extras: tuple[str, ...], subsample: float, seed: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Chosen/rejected rows of the kept preferences (`select_preferences`); `scores[i]` is P(second
    better) of `pairs[i]`. `acc` is the chosen sample's correctness (None where unknown), and the
    task's `extras` columns (db_name, category, ...) are carried along."""
    out = []
    for pref in select_preferences(pairs, scores, subsample, seed):
        row = rows[pref.row]
        chosen, rejected = (pref.second, pref.first) if pref.chosen_is_second else (pref.first, pref.second)
        record = {
            "question": row["question"],
            "chosen": row["answer"][chosen],
            "rejected": row["answer"][rejected],
            "gt_answer": row["gt_answer"],
            "score": pref.score,
            "acc": row["acc"][chosen] if row.get("acc") is not None else None,
        }
        out.append(record | {k: row[k] for k in extras if k in row})
    return out


# ---------------------------------------------------------------------------------------------
# Oracle feedback
# ---------------------------------------------------------------------------------------------


def oracle_score(method: Method, acc_first: float | None, acc_second: float | None) -> float:
    """Ground truth's P(the second answer is better than the first), as `method` asks it.

    ILR (and every kind but dpo that takes feedback) asks whether a proposal (second) may replace
    the current label (first): with an oracle every correct proposal may, whatever the label
    (`ilr_decide` then accepts scores above 0.5, uncapped), so the score is the proposal's
    correctness and the label's is never read.
    DPO asks which of two samples to prefer: `oracle_pair_score`, with ties as the method says.
    """
    if not method.takes_feedback:
        raise ConfigError(f"a {method.kind} method takes no feedback, so it has no oracle")
    read = (acc_first, acc_second) if method.is_dpo else (acc_second,)
    if any(acc is None for acc in read):
        raise ConfigError("oracle feedback needs the correctness of every answer it compares (acc is None)")
    if method.is_dpo:
        return oracle_pair_score(acc_first, acc_second, method.neutral_ties)
    return float(acc_second)
