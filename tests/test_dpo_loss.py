"""DPO's losses against their formulas, on real tokenised pairs of unequal lengths.

The log-probabilities are recomputed here one sequence at a time, with no padding, from the model's
full softmax at each answer position (prompt positions excluded, EOS included); the losses and their
gradients are then the published formulas evaluated by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from iterative_label_refinement.core.datasets import tokenize_dataset
from iterative_label_refinement.core.dpo import _dpo_trainer_class, _pair_batch, _pair_logps, averages_logps, dpo_loss
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.prompts import format_prompt
from iterative_label_refinement.core.train import PaddedRows, TrainConfig

ROWS = [  # prompts, chosen and rejected answers of different lengths, so padding differs per row
    {"question": "7 plus 5?", "chosen": "7+5=12\n#### 12", "rejected": "#### 13"},
    {"question": "What is 61 minus 48 plus 71?", "chosen": "#### 84", "rejected": "61-48=13\n13+71=85\n#### 85"},
    {"question": "2 times 3", "chosen": "2*3=6\n#### 6", "rejected": "#### 5"},
]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("tiny-random", dropout=False).eval(), load_tokenizer("tiny-random")


def logp_by_hand(model, tok, question: str, answer: str) -> tuple[float, int]:
    """(sum of log p(answer token | everything before), number of answer tokens incl. EOS)."""
    prompt = tok(format_prompt(question), add_special_tokens=False)["input_ids"]
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt + answer_ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].double().log_softmax(-1)
    total = sum(logprobs[len(prompt) + j - 1, t].item() for j, t in enumerate(answer_ids))
    return total, len(answer_ids)


def batch_of(tok, rows):
    ds = tokenize_dataset(Dataset.from_list(rows), tok, preference=True)
    return _pair_batch(list(ds), tok.pad_token_id)


def test_pair_logps_are_the_answer_tokens_only_summed_or_averaged(tiny):
    model, tok = tiny
    batch = batch_of(tok, ROWS)
    assert (batch["labels"] == -100).any(dim=1).all()  # prompts are masked
    assert len({int((row != tok.pad_token_id).sum()) for row in batch["input_ids"]}) > 2  # unequal lengths
    with torch.no_grad():
        sums = _pair_logps(model, batch, average=False)
        means = _pair_logps(model, batch, average=True)
    for i, row in enumerate(ROWS):
        for side, (got_sum, got_mean) in enumerate(zip(sums, means)):
            total, n = logp_by_hand(model, tok, row["question"], row["chosen" if side == 0 else "rejected"])
            assert got_sum[i].item() == pytest.approx(total, abs=1e-4)
            assert got_mean[i].item() == pytest.approx(total / n, abs=1e-5)


def by_hand(loss_type: str, h: float, beta: float) -> tuple[float, float]:
    """(loss, d loss / d h) from the published definitions."""
    if loss_type == "sigmoid":
        return math.log1p(math.exp(-beta * h)), -beta / (1 + math.exp(beta * h))
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2, 2 * (h - 1 / (2 * beta))
    return max(0.0, 1 - beta * h), (-beta if 1 - beta * h > 0 else 0.0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_each_loss_and_its_gradient_equal_the_formula(tiny, loss_type, beta):
    """Policy = the tiny model; reference = the same model with perturbed weights. For ipo the
    log-ratios are per-token means (so a long answer does not dominate), for the others sums."""
    model, tok = tiny
    reference = load_model("tiny-random", dropout=False).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    average = averages_logps(loss_type)
    assert average == (loss_type == "ipo")
    batch = batch_of(tok, ROWS)
    with torch.no_grad():
        ref_c, ref_r = _pair_logps(reference, batch, average)
        pol_c, pol_r = _pair_logps(model, batch, average)
    pol_c, pol_r = pol_c.clone().requires_grad_(True), pol_r.clone().requires_grad_(True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta, loss_type)
    losses.sum().backward()
    for i, row in enumerate(ROWS):
        logp = {}
        for name, m in (("pol", model), ("ref", reference)):
            for side in ("chosen", "rejected"):
                total, n = logp_by_hand(m, tok, row["question"], row[side])
                logp[name, side] = total / n if average else total
        h = (logp["pol", "chosen"] - logp["pol", "rejected"]) - (logp["ref", "chosen"] - logp["ref", "rejected"])
        loss, grad = by_hand(loss_type, h, beta)
        assert losses[i].item() == pytest.approx(loss, rel=1e-4, abs=1e-5)
        assert pol_c.grad[i].item() == pytest.approx(grad, rel=1e-4, abs=1e-5)
        assert pol_r.grad[i].item() == pytest.approx(-grad, rel=1e-4, abs=1e-5)
        assert chosen_rewards[i].item() == pytest.approx(
            beta * (logp["pol", "chosen"] - logp["ref", "chosen"]), abs=1e-4
        )
        assert rejected_rewards[i].item() == pytest.approx(
            beta * (logp["pol", "rejected"] - logp["ref", "rejected"]), abs=1e-4)  # fmt: skip


def test_the_three_losses_differ_where_their_definitions_do():
    """Margins chosen so that swapping any two branches changes a value."""
    h = torch.tensor([0.0, 3.0, 30.0])
    zero = torch.zeros(3)
    for loss_type in ("sigmoid", "ipo", "hinge"):
        losses, _, _ = dpo_loss(h, zero, zero, zero, beta=0.1, loss_type=loss_type)
        expected = [by_hand(loss_type, x, 0.1)[0] for x in h.tolist()]
        assert losses.tolist() == pytest.approx(expected, rel=1e-5)
    assert by_hand("ipo", 30.0, 0.1)[0] == pytest.approx(625.0) and by_hand("hinge", 30.0, 0.1)[0] == 0.0


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_the_trainer_loss_is_the_mean_formula_with_the_right_log_probs(tiny, tmp_path, loss_type):
    """`DPOTrainer.compute_loss` on a collated batch: averaged log-probs for ipo, sums otherwise."""
    model, tok = tiny
    beta = 0.2
    ds = tokenize_dataset(Dataset.from_list(ROWS), tok, preference=True)
    rows = [dict(r, row=i) for i, r in enumerate(ds)]
    batch = _pair_batch(rows[::-1], tok.pad_token_id)  # reversed: the reference is looked up by row
    args = TrainConfig(
        output_dir=str(tmp_path), lr=1e-3, batch_size=3, minibatch_size_per_device=3
    ).training_arguments()
    trainer = _dpo_trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                   data_collator=lambda r: r, beta=beta, loss_type=loss_type,
                                   pad_token_id=tok.pad_token_id, reference_batch_size=4,
                                   dropped_for_length=0)  # fmt: skip
    trainer.reference_logps = torch.tensor([[-5.0 - i, -7.0 + i] for i in range(len(rows))])
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
    expected = []
    for i, row in reversed(list(enumerate(ROWS))):
        (c, nc), (r, nr) = (logp_by_hand(model, tok, row["question"], row[s]) for s in ("chosen", "rejected"))
        if loss_type == "ipo":
            c, r = c / nc, r / nr
        h = (c - r) - ((-5.0 - i) - (-7.0 + i))
        expected.append(by_hand(loss_type, h, beta)[0])
    assert loss == pytest.approx(sum(expected) / len(expected), rel=1e-4)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_logged_dpo_diagnostics_equal_their_definitions_by_hand(tiny, tmp_path, loss_type):
    """Three pairs trained in two minibatches, [0, 1] and [2, a padding pair], then one log. Pair 0's
    chosen answer wins, pair 1's answers are the same text (a tie: rewards equal, not a win), pair 2's
    rejected answer wins; chosen and rejected differ in length (ipo's per-token means are not sums).
    Each diagnostic is the mean over the 3 pairs (not the mean of the two minibatches' means), the
    padding pair left out; `pairs/dropped_for_length` comes once, and a log with no pair since the
    last one has no diagnostics."""
    model, tok = tiny
    beta = 0.2
    rows = [ROWS[0], {"question": "2 times 3", "chosen": "2*3=6\n#### 6", "rejected": "2*3=6\n#### 6"}, ROWS[1]]
    ds = Dataset.from_list([dict(r, row=i) for i, r in enumerate(tokenize_dataset(Dataset.from_list(rows), tok,
                                                                                   preference=True))])  # fmt: skip
    args = TrainConfig(output_dir=str(tmp_path), lr=1e-3, batch_size=4, minibatch_size_per_device=2)
    trainer = _dpo_trainer_class()(model=model, args=args.training_arguments(), train_dataset=ds, beta=beta,
                                   data_collator=lambda r: r, loss_type=loss_type, pad_token_id=tok.pad_token_id,
                                   reference_batch_size=4, dropped_for_length=2)  # fmt: skip
    policy = []  # (log pi(chosen), log pi(rejected)) by hand, per-token means for ipo
    for row in rows:
        (c, nc), (r, nr) = (logp_by_hand(model, tok, row["question"], row[s]) for s in ("chosen", "rejected"))
        assert nc != nr or row is rows[1]
        policy.append((c / nc, r / nr) if loss_type == "ipo" else (c, r))
    (pc0, pr0), (pc1, pr1), (pc2, pr2) = policy
    reference = [(pc0 - 1.0, pr0 + 0.5), (-20.0, -20.0), (pc2 + 2.0, pr2 - 1.0)]
    trainer.reference_logps = torch.tensor(reference, dtype=torch.float32)
    padded = PaddedRows(ds)
    with torch.no_grad():
        for minibatch in ([0, 1], [2, len(ds)]):
            trainer.compute_loss(model, _pair_batch([padded[i] for i in minibatch], tok.pad_token_id))
    trainer.log({"loss": 0.5})
    trainer.log({"loss": 0.25})
    first, second = trainer.state.log_history
    ratio_c = [pc - rc for (pc, _), (rc, _) in zip(policy, reference)]
    ratio_r = [pr - rr for (_, pr), (_, rr) in zip(policy, reference)]
    assert ratio_c[0] == pytest.approx(1.0) and ratio_c[2] == pytest.approx(-2.0) and pc1 == pytest.approx(pr1)
    expected = {
        "rewards/chosen": beta * sum(ratio_c) / 3,
        "rewards/rejected": beta * sum(ratio_r) / 3,
        "rewards/accuracies": 1 / 3,  # pair 0 only: pair 1 is a tie, pair 2 is won by the rejected answer
        "rewards/margins": beta * sum(c - r for c, r in zip(ratio_c, ratio_r)) / 3,
        "logps/chosen": (pc0 + pc1 + pc2) / 3,
        "logps/rejected": (pr0 + pr1 + pr2) / 3,
        "kl": (sum(ratio_c) + sum(ratio_r)) / 6,  # over the 6 answers, chosen and rejected
        "pairs/dropped_for_length": 2,
    }
    assert {k: first[k] for k in expected} == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert first["loss"] == 0.5 and first["rewards/accuracies"] == 1 / 3
    assert second["loss"] == 0.25 and not second.keys() & expected.keys()
