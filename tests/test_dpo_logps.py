"""Log-probs of the answer tokens only (DPO's, SFT's loss), and DPO's reference pass sorted by width.

`labelled_logps` computes logit_y - logsumexp(logits) at the answer positions alone; here it is held to
the computations it replaced: DPO's, written out below (a log-softmax over every position, then
masked), and SFT's, the model's own loss from the logits of every position.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from iterative_label_refinement.core.datasets import tokenize_dataset, tokenize_example
from iterative_label_refinement.core.dpo import (
    REFERENCE,
    _pair_batch,
    _pair_logps,
    load_dpo_policy,
    pair_width,
    reference_batches,
    reference_logps,
)
from iterative_label_refinement.core.logps import sequence_logps
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.train import PaddedRows, TrainConfig, add_lora, collate, trainer_class


def full_log_softmax_then_mask(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """The computation before: a (batch, length, vocab) log-softmax, gathered, prompt and padding times 0."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = (token_logps * mask).sum(-1)
    return total / mask.sum(-1) if average else total


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_equal_the_full_log_softmax_then_masked(average):
    """Rows of unequal lengths, unlabelled positions on both sides (a prompt or left padding before the
    answer, right padding after it), a lone answer token, and a label at position 0 (no logit predicts it)."""
    torch.manual_seed(0)
    labels = torch.tensor([
        [-100, -100, -100, 7, 3, 9, 1, -100, -100],  # prompt, answer, right padding
        [-100, -100, -100, -100, -100, 4, 4, 0, 12],  # left padding and prompt, answer to the end
        [-100, -100, 5, -100, -100, -100, -100, -100, -100],  # one answer token
        [2, 8, 8, 8, 8, 8, 8, 8, 11],  # labelled from position 0
    ])  # fmt: skip
    logits = (3 * torch.randn(4, 9, 13)).requires_grad_(True)
    got = sequence_logps(logits, labels, average)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    expected = full_log_softmax_then_mask(logits, labels, average)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert (grad - expected_grad).abs().max().item() < 1e-5


class NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward takes no `logits_to_keep` (remote code written before it existed)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("wrapper", [None, NoLogitsToKeep])
def test_pair_logps_project_only_answer_positions_and_equal_the_full_computation(average, wrapper):
    """The output head sees the answer positions only (one row each); values and gradients equal the
    full log-softmax's, on right-padded pairs of unequal lengths with their prompts masked."""
    torch.manual_seed(0)
    model, tok = load_model("tiny-random", dropout=False), load_tokenizer("tiny-random")
    rows = [
        {"question": "7 plus 5?", "chosen": "7+5=12\n#### 12", "rejected": "#### 13"},
        {"question": "What is 61 minus 48 plus 71?", "chosen": "#### 84", "rejected": "61-48=13\n13+71=85\n#### 85"},
    ]
    batch = _pair_batch(list(tokenize_dataset(Dataset.from_list(rows), tok, preference=True)), tok.pad_token_id)
    assert len({int(m.sum()) for m in batch["attention_mask"]}) == 4  # unequal lengths, so unequal padding
    projected = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: projected.append(args[0].shape[:-1]))
    got = torch.cat(_pair_logps(wrapper(model) if wrapper else model, batch, average))
    grads = torch.autograd.grad(got.sum(), list(model.parameters()))
    answer_positions = int((batch["labels"][:, 1:] != -100).sum())
    if wrapper is None:
        assert projected == [torch.Size([answer_positions])]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = full_log_softmax_then_mask(logits, batch["labels"], average)
    expected_grads = torch.autograd.grad(expected.sum(), list(model.parameters()))
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert max((g - e).abs().max().item() for g, e in zip(grads, expected_grads)) < 1e-5


def test_ipo_padding_pair_gives_no_nan_gradient():
    """A padding pair (every label -100, `PaddedRows`) has 0 answer tokens: its per-token mean is 0 / 0.
    Its loss is left out, but the full log-softmax sent 0 x (1 / 0) = nan back into every weight."""
    torch.manual_seed(0)
    model, tok = load_model("tiny-random", dropout=False), load_tokenizer("tiny-random")
    rows = list(tokenize_dataset(Dataset.from_list([{"question": "1 plus 1", "chosen": "#### 2", "rejected": "#### 3"}]),
                                 tok, preference=True))  # fmt: skip
    padding = {k: [-100] * len(v) if k.endswith("labels") else v for k, v in rows[0].items()}
    chosen, rejected = _pair_logps(model, _pair_batch(rows + [padding], tok.pad_token_id), average=True)
    assert torch.isnan(chosen[1]) and torch.isfinite(chosen[0])
    ((chosen[:1] - rejected[:1]) ** 2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("num_items", [None, 29])
def test_sft_loss_is_the_models_own_from_the_answer_positions_only(tmp_path, num_items):
    """The Trainer's SFT loss on a minibatch of unequal lengths with a padding row: the model's own
    cross-entropy (summed over the answer tokens / the step's `num_items_in_batch`, or their mean), and
    its gradient, with the output head applied to the answer positions alone."""
    torch.manual_seed(0)
    model, tok = load_model("tiny-random", dropout=False), load_tokenizer("tiny-random")
    examples = [tokenize_example(tok, q, a) for q, a in [("7 plus 5?", "7+5=12\n#### 12"), ("2 times 3", "#### 6"),
                                                          ("What is 61 minus 48?", "61-48=13\n#### 13")]]  # fmt: skip
    padded = PaddedRows(Dataset.from_list(examples))
    rows = [padded[i] for i in range(4)]  # the 3 examples and a padding row (every label -100)
    batch = collate(rows, tok.pad_token_id)
    args = TrainConfig(output_dir=str(tmp_path), lr=1e-3, batch_size=4, minibatch_size_per_device=4)
    trainer = trainer_class()(model=model, args=args.training_arguments(), train_dataset=Dataset.from_list(rows),
                              data_collator=lambda r: r)  # fmt: skip
    projected = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: projected.append(args[0].shape[:-1]))
    n = None if num_items is None else torch.tensor(num_items)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=n)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    answer_positions = int((batch["labels"][:, 1:] != -100).sum())
    assert projected == [torch.Size([answer_positions])]
    expected = model(**batch, **({} if n is None else {"num_items_in_batch": n})).loss
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert max((g - e).abs().max().item() for g, e in zip(grads, expected_grads)) < 1e-5


def padded_per_real(widths: list[int], lengths: list[int], batches: list[list[int]]) -> float:
    """Positions the reference forwards compute (2 sequences a pair, each as wide as the batch's widest)
    per real token."""
    return sum(2 * len(b) * max(widths[i] for i in b) for b in batches) / sum(lengths)


def test_reference_batches_sort_by_width_cover_every_row_once_and_pad_less():
    """Widths in an order that mixes short and long pairs, batches of 3, on 1 process and on 2 (where one
    position is padding). Dataset order, as before, pads [9, 2, 8] to 9; sorted order groups [9, 8, 8]."""
    widths = [9, 2, 8, 3, 8, 2, 7, 3, 1]
    lengths = [2 * w - 1 for w in widths]  # the rejected answer one token shorter
    for world, before, after in ((1, 2 * 3 * (9 + 8 + 7), 2 * 3 * (9 + 7 + 2)),
                                 (2, 2 * (3 * 9 + 2 * 7 + 3 * 3 + 2 * 9), 2 * (3 * 9 + 2 * 2 + 3 * 8 + 2 * 2))):  # fmt: skip
        ranks = [reference_batches(widths, 3, world, rank) for rank in range(world)]
        order = ranks[0][0]
        assert order == [0, 2, 4, 6, 3, 7, 1, 5, 8]  # widest first, ties in row order
        assert all(r[0] == order for r in ranks)  # the same order on every rank
        # Rank r's k-th row is sorted position k x world + r: the gathered result is in sorted order.
        flat = [[i for b in batches for i in b] for _, batches in ranks]
        assert [flat[p % world][p // world] for p in range(len(order))] == order
        assert len({len(f) for f in flat}) == 1 and all(len(b) <= 3 for _, bs in ranks for b in bs)
        assert padded_per_real(widths, lengths, [b for _, bs in ranks for b in bs]) == pytest.approx(after / 77)
        # Before: rank r computed rows r, r + N, ... in dataset order, the last ones padded with row 0.
        rows = [[k * world + r if k * world + r < len(widths) else 0 for k in range(5 if world == 2 else 9)]
                for r in range(world)]  # fmt: skip
        unsorted = [rs[s : s + 3] for rs in rows for s in range(0, len(rs), 3)]
        assert padded_per_real(widths, lengths, unsorted) == pytest.approx(before / 77)
        assert after < before


def test_reference_logps_sorted_are_each_pairs_own(tmp_path):
    """Pairs whose widths are out of order, batches of 2: every row of the result is its own pair's
    reference log-probs, computed here one pair at a time (no padding) with the reference adapter."""
    torch.manual_seed(0)
    tok = load_tokenizer("tiny-random")
    sft = add_lora(load_model("tiny-random", dropout=False), 4)
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a fresh lora_B is 0: the reference adapter would change nothing
    sft.save_pretrained(str(tmp_path / "sft"))
    policy = load_dpo_policy("tiny-random", str(tmp_path / "sft"))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name and p.requires_grad:
                p.add_(0.5)  # the policy moved away from the reference
    answers = ["#### 1", "1+1=2\n2+2=4\n4+4=8\n#### 8", "#### 3", "5*5=25\n#### 25", "#### 10", "9-1=8\n#### 8"]
    rows = [{"question": f"q{i}", "chosen": a, "rejected": answers[(i + 2) % 6]} for i, a in enumerate(answers)]
    ds = tokenize_dataset(Dataset.from_list(rows), tok, preference=True)
    widths = [pair_width(r) for r in ds]
    assert widths != sorted(widths, reverse=True)
    got = reference_logps(policy, policy, ds, tok.pad_token_id, 2, False, torch.device("cpu"))
    assert policy.active_adapter != REFERENCE
    policy.set_adapter(REFERENCE)
    with torch.no_grad():
        alone = [torch.cat(_pair_logps(policy, _pair_batch([r], tok.pad_token_id), False)) for r in ds]
    assert got.shape == (6, 2)
    assert (got - torch.stack(alone)).abs().max().item() < 1e-5
    policy.set_adapter("default")  # the policy's own log-probs differ: the reference adapter was the one used
    with torch.no_grad():
        assert abs(_pair_logps(policy, _pair_batch([ds[0]], tok.pad_token_id), False)[0].item() - got[0, 0]) > 1e-3
