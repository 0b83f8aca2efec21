"""Answer-only log-probabilities: the log-probs of an answer's tokens given its prompt, computed from
the logits of the answer positions only (DPO's policy and reference, the likelihood evaluator)."""

from __future__ import annotations

import inspect

import torch


def predicts_answer(labels: torch.Tensor) -> torch.Tensor:
    """The (batch, length) mask of the positions whose logits are needed: position t predicts token t + 1,
    so t is kept where labels[:, t + 1] != -100 (never the last position, nor prompt or padding ones)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def labelled_logps(logits: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """Sum (or, with `average`, mean) of the log-probabilities of the labelled tokens, one value per sequence.

    `logits` (n, vocab) are those of the n positions where `keep` (`predicts_answer(labels)`) is True, in
    row-major order. The log-probability of target y at a position is logit_y - logsumexp(logits), in
    float32: only the n answer positions are computed, and no (n, vocab) log-softmax is made or kept
    for backward (log-sum-exp keeps its input, the n rows of logits, which the caller holds anyway).
    """
    logits = logits.float()
    targets = labels[:, 1:][keep[:, :-1]]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    rows = keep.nonzero()[:, 0]  # each kept position's sequence, in the same row-major order
    total = torch.zeros(len(keep), dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    return total / keep.sum(-1) if average else total


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or, with `average`, mean) of the log-probabilities of the labelled tokens (labels != -100),
    one value per sequence, from the (batch, length, vocab) logits of every position (`labelled_logps`)."""
    keep = predicts_answer(labels)
    return labelled_logps(logits[keep], keep, labels, average)


def answer_logits(model, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """The (n, vocab) logits of the n positions `keep` marks (`predicts_answer`), in row-major order.

    The model projects onto the vocabulary only those positions (`logits_to_keep`, a boolean mask);
    a model whose forward takes no `logits_to_keep` (remote code) computes every position's, and
    they are selected here."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if _takes_logits_to_keep(model):
        return model(**inputs, logits_to_keep=keep).logits
    return model(**inputs).logits[keep]


def _takes_logits_to_keep(model) -> bool:
    """Whether the causal LM under the wrappers (DDP, FSDP, PEFT) takes `logits_to_keep`."""
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters
