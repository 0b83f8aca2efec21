"""Pure decision functions of ILR, naive ILR and DPO, and the DPO loss, on plain data."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from iterative_label_refinement.core.dpo import dpo_loss
from iterative_label_refinement.core.logps import sequence_logps
from iterative_label_refinement.core.methods import Method
from iterative_label_refinement.core.refinement import (
    dpo_pairs,
    ilr_decide,
    ilr_threshold,
    match_proposals,
    naive_choice,
    oracle_pair_score,
    oracle_score,
    preference_rows,
    refined_rows,
    sample_pairs,
    select_preferences,
)
from iterative_label_refinement.core.settings import ConfigError


def test_ilr_threshold_is_quantile_with_half_floor():
    scores = [0.1, 0.2, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99]
    assert ilr_threshold(scores, 0.2) == pytest.approx(0.8 * 0.97 + 0.2 * 0.98)  # numpy linear quantile at 0.8
    assert ilr_threshold([0.1, 0.2, 0.3], 0.5) == 0.5  # the 0.5 floor
    assert ilr_threshold([], 0.1) == 0.5


def test_ilr_decision_replaces_exactly_the_rule():
    agree = [True, False, False, False, False, False, True]
    scores = [-1, 0.9, 0.8, 0.8, 0.4, 0.95, -1]
    # compared scores [0.9, 0.8, 0.8, 0.4, 0.95]; 0.6 quantile (max_replace=0.4) = 0.86 -> >0.86 replaced
    decision = ilr_decide(agree, scores, max_replace=0.4)
    assert decision.replace == [False, True, False, False, False, True, False]
    # ties at the threshold are not replaced (strictly greater)
    tie = ilr_decide([False] * 4, [0.7, 0.7, 0.7, 0.7], max_replace=0.5)
    assert tie.threshold == 0.7 and tie.replace == [False] * 4
    # the 0.5 floor: nothing below or at 0.5 is ever replaced, even with max_replace=1
    floor = ilr_decide([False] * 4, [0.2, 0.5, 0.51, 0.3], max_replace=1.0)
    assert floor.threshold == 0.5 and floor.replace == [False, False, True, False]
    # an agreeing row is never replaced, whatever its score
    assert ilr_decide([True], [0.99], max_replace=1.0).replace == [False]


def test_ilr_oracle_accepts_all_and_only_correct_proposals():
    agree = [False] * 6 + [True]
    acc = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    decision = ilr_decide(agree, acc, max_replace=0.1, oracle=True)
    assert decision.replace == [True, False, True, True, False, True, False]


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, "x"])
def test_fraction_bounds(bad):
    with pytest.raises(ConfigError, match="max_replace must be in"):
        ilr_decide([False], [0.9], max_replace=bad)
    with pytest.raises(ConfigError, match="subsample must be in"):
        select_preferences([(0, 0, 1)], [0.9], subsample=bad)


def test_naive_replaces_exactly_int_n_alpha_rows_by_their_own_proposal():
    labels = [{"question": f"q{i}", "answer": f"a{i}", "acc": 0.0, "gt_answer": "g"} for i in range(23)]
    # proposals in another order and with an extra question: matching is by question
    props = [{"question": f"q{i}", "answer": f"p{i}", "acc": 1.0} for i in reversed(range(25))]
    questions = [r["question"] for r in labels]
    replace = naive_choice(questions, 0.15, seed=3, round_id=0)
    assert sum(replace) == int(23 * 0.15) == 3
    assert replace == naive_choice(questions, 0.15, seed=3, round_id=0) != naive_choice(questions, 0.15, 4, 0)
    matched = match_proposals([r["question"] for r in labels], [props[:10], props[10:]])
    rows = refined_rows(labels, matched, replace, [-1.0] * 23)
    for i, (row, rep) in enumerate(zip(rows, replace)):
        assert row["question"] == f"q{i}"
        assert row["answer"] == (f"p{i}" if rep else f"a{i}") and row["acc"] == (1.0 if rep else 0.0)


def reference_naive(questions, max_replace, seed):
    """The reference release's draw, step by step: rows sorted by question, NumPy's global generator
    reseeded with the seed, positions of the sorted rows picked. Returns the picked questions."""
    ordered = sorted(questions)
    np.random.seed(seed)
    picked = np.random.choice(len(ordered), int(len(ordered) * max_replace), replace=False)
    return {ordered[i] for i in picked}


def test_naive_replaces_the_same_questions_every_round_as_the_reference_and_the_variant_redraws():
    rng = random.Random(1)
    # Rows out of question order, and "q10" < "q9" as text: a draw over the unsorted rows, or a
    # numeric sort, picks other questions.
    questions = [f"q{i}" for i in rng.sample(range(1000), 37)]
    later = rng.sample(questions, len(questions))  # a later round gets the rows in another order
    for max_replace, seed in [(0.3, 0), (0.15, 5), (0.5, 2)]:
        expected = reference_naive(questions, max_replace, seed)
        unsorted = {questions[i] for i in np.random.RandomState(seed).choice(37, len(expected), replace=False)}
        assert len(expected) == int(37 * max_replace) and unsorted != expected
        for round_id, rows in enumerate([questions, later, questions]):
            chosen = naive_choice(rows, max_replace, seed, round_id)
            assert {q for q, c in zip(rows, chosen) if c} == expected
    # The variant: Python's random seeded with seed + round_id, over the rows as given.
    redrawn = []
    for round_id, rows in enumerate([questions, later]):
        chosen = naive_choice(rows, 0.3, 4, round_id, redraw_each_round=True)
        redrawn.append({q for q, c in zip(rows, chosen) if c})
        assert redrawn[-1] == {rows[i] for i in random.Random(4 + round_id).sample(range(37), 11)}
    assert redrawn[0] != redrawn[1]


def test_match_proposals_refuses_missing_questions():
    with pytest.raises(ConfigError, match="1 current labels have no proposal"):
        match_proposals(["q1", "q2"], [[{"question": "q1", "answer": "x"}]])


def test_dpo_pairing_ranking_and_subsample():
    assert sample_pairs(list("abcdef")) == [(0, 1), (2, 3), (4, 5)]
    assert sample_pairs(list("abcde")) == [(0, 1), (2, 3)]  # an odd sample out is left unpaired
    pairs = [(0, 0, 1), (0, 2, 3), (0, 4, 5), (1, 0, 1), (1, 2, 3), (1, 4, 5)]
    scores = [0.55, 0.1, 0.5, 0.97, 0.7, 0.35]
    kept = select_preferences(pairs, scores, subsample=0.5)  # 3 most confident: 0.97, 0.1, 0.7
    assert [(p.row, p.first, p.second) for p in kept] == [(0, 2, 3), (1, 0, 1), (1, 2, 3)]
    assert [p.chosen_is_second for p in kept] == [False, True, True]
    assert [p.score for p in kept] == [0.1, 0.97, 0.7]
    assert len(select_preferences(pairs, scores, subsample=1.0)) == 6
    assert len(select_preferences(pairs, scores, subsample=0.34)) == 2  # int(6 * 0.34)
    assert not select_preferences(pairs, [0.5] * 6, subsample=1.0)[0].chosen_is_second  # 0.5: no preference


def test_oracle_pair_score_reference_rule_and_neutral_variant():
    # Reference: 1 only when the second answer is right and the first is not; ties are 0, not 0.5.
    assert [oracle_pair_score(a, b) for a, b in [(0, 1), (1, 0), (1, 1), (0, 0)]] == [1.0, 0.0, 0.0, 0.0]
    assert [oracle_pair_score(a, b, neutral_ties=True) for a, b in [(0, 1), (1, 0), (1, 1), (0, 0)]] == [
        1.0, 0.0, 0.5, 0.5]  # fmt: skip


def test_confidence_ties_are_cut_in_a_seeded_random_order():
    """Reference oracle scores are all 0 or 1, so every pair is equally confident: which are kept is
    a random subset, reproducible from the seed, not the first prompts' pairs."""
    pairs = [(r, 0, 1) for r in range(40)]
    scores = [1.0, 0.0] * 20
    kept = {seed: [p.row for p in select_preferences(pairs, scores, 0.25, seed=seed)] for seed in range(200)}
    assert all(len(rows) == 10 and rows == sorted(rows) for rows in kept.values())
    assert kept[3] == [p.row for p in select_preferences(pairs, scores, 0.25, seed=3)]
    assert len({tuple(rows) for rows in kept.values()}) > 150
    counts = [sum(r in rows for rows in kept.values()) for r in range(40)]
    assert min(counts) > 20 and max(counts) < 80  # each kept about 50 times in 200, first rows no more
    # More confident pairs always go first, whatever the seed; the cut only randomises within a tie.
    scores = [0.9] * 5 + [0.6] * 30 + [0.5] * 5
    for seed in range(20):
        rows = [p.row for p in select_preferences(pairs, scores, 0.25, seed=seed)]
        assert rows[:5] == [0, 1, 2, 3, 4] and all(5 <= r < 35 for r in rows[5:])


def reference_ilr(agree, scores, max_replace, oracle):
    """The ILR rule step by step: agreeing rows keep their label; the rest are replaced when their score is
    strictly above max(0.5, the (1 - max_replace) quantile of their scores), or 0.5 with an oracle."""
    compared = [s for a, s in zip(agree, scores) if not a]
    if oracle:
        threshold = 0.5
    elif compared:
        threshold = max(0.5, float(np.percentile(compared, 100 * (1 - max_replace))))
    else:
        threshold = 0.5
    return [(not a) and s > threshold for a, s in zip(agree, scores)], threshold


def test_ilr_decision_equals_the_rule_on_random_rows_with_ties():
    rng = random.Random(0)
    for trial in range(500):
        n = rng.randint(1, 30)
        agree = [rng.random() < 0.3 for _ in range(n)]
        # Scores on a coarse grid: many ties, some exactly at 0.5 and at the quantile.
        scores = [rng.choice([0.0, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0]) for _ in range(n)]
        max_replace = rng.choice([0.1, 0.15, 0.25, 0.5, 1.0])
        oracle = trial % 5 == 0
        expected, threshold = reference_ilr(agree, scores, max_replace, oracle)
        decision = ilr_decide(agree, scores, max_replace, oracle=oracle)
        assert decision.replace == expected and decision.threshold == pytest.approx(threshold)
        compared = n - sum(agree)
        if not oracle:  # the bound `ilr_threshold` states
            assert sum(decision.replace) <= math.ceil(max_replace * max(0, compared - 1))


def test_the_quantile_threshold_passes_more_than_max_replace_of_few_disagreements():
    """ilr_threshold's docstring: of m disagreements at most ceil(max_replace (m - 1)) change, which
    is no cap of max_replace m. NumPy's linear quantile q of the sorted s: position h = q (m - 1),
    j = floor(h), threshold s_j + (h - j)(s_{j+1} - s_j)."""
    # m = 2 at 0.1: h = 0.9, the threshold is 0.9 of the way from 0.6 to 0.7; 0.7 passes, 1 of 2
    # (50%, where int(0.1 * 2) = 0). 2 of 2 cannot happen: the lower score is never above it.
    two = ilr_decide([False, False], [0.7, 0.6], max_replace=0.1)
    assert two.threshold == pytest.approx(0.6 + 0.9 * (0.7 - 0.6)) and two.replace == [True, False]
    # m = 26 at 0.15: h = 0.85 * 25 = 21.25, so the threshold lies a quarter of the way from s_21 to
    # s_22 and s_22..s_25 pass: 4 of 26 (15.4%, where 0.15 * 26 = 3.9).
    scores = random.Random(0).sample([0.52 + 0.01 * i for i in range(26)], 26)
    s = sorted(scores)
    h = (1 - 0.15) * (26 - 1)
    j = math.floor(h)
    threshold = s[j] + (h - j) * (s[j + 1] - s[j])
    assert sum(x > threshold for x in scores) == 4 == math.ceil(0.15 * 25) > 0.15 * 26
    decision = ilr_decide([False] * 26, scores, max_replace=0.15)
    assert decision.threshold == pytest.approx(threshold) and sum(decision.replace) == 4
    assert [x for x, r in zip(scores, decision.replace) if r] == [x for x in scores if x > threshold]


def test_dpo_loss_by_hand():
    zero = torch.zeros(3)
    losses, cr, rr = dpo_loss(zero, zero, zero, zero, beta=0.1, loss_type="sigmoid")
    assert torch.allclose(losses, torch.full((3,), math.log(2)))
    pc, pr, rc, rj = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5])
    h = (-1 + 3) - (-2 + 2.5)  # 1.5
    beta = 0.5
    losses, cr, rr = dpo_loss(pc, pr, rc, rj, beta=beta, loss_type="sigmoid")
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-beta * h)))
    assert cr.item() == pytest.approx(beta * (-1 + 2)) and rr.item() == pytest.approx(beta * (-3 + 2.5))
    losses, _, _ = dpo_loss(pc, pr, rc, rj, beta=beta, loss_type="ipo")
    assert losses.item() == pytest.approx((h - 1 / (2 * beta)) ** 2)
    losses, _, _ = dpo_loss(pc, pr, rc, rj, beta=beta, loss_type="hinge")
    assert losses.item() == pytest.approx(max(0.0, 1 - beta * h))
    with pytest.raises(ConfigError, match="Unknown dpo_loss_type 'kto'"):
        dpo_loss(pc, pr, rc, rj, loss_type="kto")


def test_dpo_gradient_reaches_only_the_policy():
    policy = [torch.tensor([-1.0, -2.0], requires_grad=True) for _ in range(2)]
    reference = [torch.tensor([-1.5, -1.0], requires_grad=True) for _ in range(2)]
    losses, _, _ = dpo_loss(*policy, *reference, beta=0.1)
    losses.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy)
    assert all(r.grad is None for r in reference)


def test_sequence_logps_counts_only_labelled_tokens():
    logits = torch.zeros(1, 4, 5)  # uniform: log p = -log 5 per token
    labels = torch.tensor([[-100, -100, 2, 3]])  # the last two positions are labelled
    assert sequence_logps(logits, labels).item() == pytest.approx(-2 * math.log(5))


def test_naive_and_matching_errors_name_the_flag_and_the_cause():
    with pytest.raises(ConfigError, match=r"^--max_replace must be in \(0, 1\], got 0$"):
        naive_choice([f"q{i}" for i in range(10)], 0, seed=0, round_id=0)
    with pytest.raises(ConfigError, match="the half-data runs were not trained on this round's labels"):
        match_proposals(["q1"], [[]])


def test_refined_rows_replace_answer_acc_and_score_and_drop_stale_fields():
    labels = [{"question": "q0", "answer": ["a0", "b0"], "acc": [0.0, 1.0], "gt_answer": "g", "answer_ids": [1, 2],
               "score": 0.3, "db_name": "x"},
              {"question": "q1", "answer": "a1", "acc": 1.0, "gt_answer": "g", "answer_ids": [3], "score": 0.4,
               "db_name": "y"}]  # fmt: skip
    proposals = [{"question": "q0", "answer": "p0", "acc": 1.0}, {"question": "q1", "answer": ["p1"], "acc": [0.0]}]
    rows = refined_rows(labels, proposals, [True, False], [0.9, -1.0])
    assert rows == [
        {"question": "q0", "gt_answer": "g", "db_name": "x", "answer": "p0", "acc": 1.0, "score": 0.9},
        {"question": "q1", "gt_answer": "g", "db_name": "y", "answer": "a1", "acc": 1.0, "score": -1.0},
    ]
    assert all(isinstance(r["score"], float) for r in rows)


def direct_selection(pairs, scores, subsample, seed):
    """select_preferences' rule step by step: Python's random.Random(seed) shuffles the pair indices,
    a stable sort puts the most confident first, the first int(n * subsample) are kept in order."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    ranked = sorted(order, key=lambda i: -abs(scores[i] - 0.5))
    return sorted(ranked[: int(len(pairs) * subsample)])


def test_preference_rows_cut_a_tie_with_the_seed_they_are_given():
    rows = [{"question": f"q{r}", "answer": [f"a{r}.{k}" for k in range(6)], "gt_answer": "g",
             "acc": [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]} for r in range(8)]  # fmt: skip
    pairs = dpo_pairs(rows)  # 24 pairs: 16 tied at confidence 0.5, 8 at 0.4
    scores = [0.0, 1.0, 0.9] * 8
    kept = {}
    for seed in (0, 1, 2):
        kept[seed] = preference_rows(rows, pairs, scores, (), subsample=0.25, seed=seed)  # 6 of the 16 tied
        expected = []
        for i in direct_selection(pairs, scores, 0.25, seed):
            r, a, b = pairs[i]
            chosen, rejected = (b, a) if scores[i] > 0.5 else (a, b)
            expected.append((f"q{r}", f"a{r}.{chosen}", f"a{r}.{rejected}"))
        assert [(k["question"], k["chosen"], k["rejected"]) for k in kept[seed]] == expected
    assert kept[0] != kept[1] != kept[2] != kept[0]  # the seeds give other subsets: a lost seed shows


def test_default_seeds_and_beta_are_the_reference_values():
    pairs = [(r, 0, 1) for r in range(20)]
    scores = [1.0] * 20
    assert select_preferences(pairs, scores, 0.3) == select_preferences(pairs, scores, 0.3, seed=0)
    rows = [{"question": f"q{r}", "answer": ["a", "b"], "gt_answer": "g"} for r in range(20)]
    default = preference_rows(rows, pairs, scores, (), 0.3)
    assert (
        default
        == preference_rows(rows, pairs, scores, (), 0.3, seed=0)
        != preference_rows(rows, pairs, scores, (), 0.3, 1)
    )
    h = torch.tensor([2.0])
    zero = torch.zeros(1)
    assert dpo_loss(h, zero, zero, zero)[0].item() == pytest.approx(math.log1p(math.exp(-0.1 * 2.0)))


def test_dpo_pairs_pair_every_prompts_samples_and_refuse_single_answers():
    rows = [{"answer": list("abcdef")}, {"answer": list("xyz")}]
    assert dpo_pairs(rows) == [(0, 0, 1), (0, 2, 3), (0, 4, 5), (1, 0, 1)]
    with pytest.raises(ConfigError, match="row 1 holds 'x': DPO needs several samples per prompt"):
        dpo_pairs([{"answer": ["a", "b"]}, {"answer": "x"}])
    with pytest.raises(ConfigError, match="row 0 holds"):
        dpo_pairs([{"answer": ["only"]}])


def test_preference_rows_choose_by_score_and_carry_acc_and_extras():
    rows = [
        {"question": "q0", "answer": ["a", "b", "c", "d"], "gt_answer": "g0", "acc": [0.0, 1.0, 1.0, 0.0],
         "db_name": "x", "other": 1},
        {"question": "q1", "answer": ["e", "f"], "gt_answer": "g1", "acc": None, "db_name": "y"},
    ]  # fmt: skip
    pairs = dpo_pairs(rows)  # (0, 0, 1), (0, 2, 3), (1, 0, 1)
    kept = preference_rows(rows, pairs, [0.9, 0.2, 0.55], ("db_name", "category"), subsample=0.67)
    # int(3 * 0.67) = 2 most confident pairs, in their original order; the second is chosen above 0.5
    assert kept == [
        {"question": "q0", "chosen": "b", "rejected": "a", "gt_answer": "g0", "score": 0.9, "acc": 1.0, "db_name": "x"},
        {"question": "q0", "chosen": "c", "rejected": "d", "gt_answer": "g0", "score": 0.2, "acc": 1.0, "db_name": "x"},
    ]  # fmt: skip
    unknown = preference_rows(rows, pairs, [0.5, 0.5, 0.9], (), subsample=0.34)
    assert unknown == [{"question": "q1", "chosen": "f", "rejected": "e", "gt_answer": "g1", "score": 0.9, "acc": None}]


def test_oracle_score_is_each_methods_question_to_ground_truth():
    ilr, dpo = Method("ilr", oracle=True, max_replace=0.1), Method("dpo", oracle=True, beta=0.1, subsample=1.0)
    neutral = Method("dpo", oracle=True, beta=0.1, subsample=1.0, neutral_ties=True)
    cases = [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0)]
    # ILR: a correct proposal may replace any label, so both-correct scores 1 (the label's acc is not read).
    assert [oracle_score(ilr, a, b) for a, b in cases] == [1.0, 0.0, 1.0, 0.0]
    assert oracle_score(ilr, None, 1.0) == 1.0
    assert [oracle_score(dpo, a, b) for a, b in cases] == [oracle_pair_score(a, b) for a, b in cases]
    assert [oracle_score(neutral, a, b) for a, b in cases] == [1.0, 0.0, 0.5, 0.5]
    with pytest.raises(
        ConfigError, match=r"^oracle feedback needs the correctness of every answer it compares \(acc is None\)$"
    ):
        oracle_score(dpo, None, 1.0)
    with pytest.raises(
        ConfigError, match=r"^oracle feedback needs the correctness of every answer it compares \(acc is None\)$"
    ):
        oracle_score(ilr, 1.0, None)
    with pytest.raises(ConfigError, match="a naive method takes no feedback"):
        oracle_score(Method("naive", max_replace=0.1), 0.0, 1.0)
