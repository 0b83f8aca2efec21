"""LoRA DPO: the loss and its diagnostics, the policy beside its frozen reference adapter, the
reference's log-probs computed once through the wrapped model, and the Trainer that trains it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset

from iterative_label_refinement.core.distributed import refuse_unsupported_dpo_launcher
from iterative_label_refinement.core.logps import answer_logits, labelled_logps, predicts_answer
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.core.train import TrainConfig, padded_batch, train_or_resume, trainer_class
from iterative_label_refinement.core.train_options import DPO_LOSS_TYPES

if TYPE_CHECKING:
    from iterative_label_refinement.core.models import ModelConfig

POLICY, REFERENCE = "default", "reference"  # PEFT saves the "default" adapter at the folder's root


def averages_logps(loss_type: str) -> bool:
    """IPO's log-ratios are per answer token (Azar et al., as TRL implements it); the others are sums."""
    return loss_type == "ipo"


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example DPO losses and the implicit rewards of the chosen and rejected answers.

    With h = (log pi(y_w) - log pi(y_l)) - (log ref(y_w) - log ref(y_l)), the policy's log-ratio
    margin over the reference:

        sigmoid: -log sigmoid(beta * h)       (DPO, Rafailov et al.)
        ipo:     (h - 1 / (2 beta))^2         (IPO, Azar et al.)
        hinge:   max(0, 1 - beta * h)         (SLiC)

    The log-probs come in as `sequence_logps` gives them: sums over answer tokens, except for ipo,
    whose callers pass per-token means (`averages_logps`).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ConfigError(f"Unknown dpo_loss_type {loss_type!r}. Valid: {list(DPO_LOSS_TYPES)}")
    # The reference is fixed: no gradient may reach it, whatever the caller passes.
    reference_chosen_logps = reference_chosen_logps.detach()
    reference_rejected_logps = reference_rejected_logps.detach()
    h = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    if loss_type == "sigmoid":
        losses = -torch.nn.functional.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def load_dpo_policy(model: str | ModelConfig, adapter_path: str, dropout: bool = False):
    """The base `model` with `adapter_path` loaded twice: a trainable policy and a frozen reference."""
    from peft import PeftModel

    from iterative_label_refinement.core.models import load_model, model_config

    base = load_model(model, dropout=dropout)
    policy = PeftModel.from_pretrained(base, adapter_path, adapter_name=POLICY, is_trainable=True)
    policy.load_adapter(adapter_path, adapter_name=REFERENCE, is_trainable=False)
    policy.set_adapter(POLICY)
    if model_config(model).gradient_checkpointing:
        policy.enable_input_require_grads()
    assert_reference_frozen(policy)
    return policy


def assert_reference_frozen(model) -> None:
    leaked = [n for n, p in model.named_parameters() if f".{REFERENCE}." in n and p.requires_grad]
    if leaked:
        raise RuntimeError(f"reference adapter parameters became trainable: {leaked[:3]}")


def _pair_batch(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Chosen then rejected sequences in one right-padded batch (one forward pass for both)."""
    ids = [r["chosen_input_ids"] for r in rows] + [r["rejected_input_ids"] for r in rows]
    labels = [r["chosen_labels"] for r in rows] + [r["rejected_labels"] for r in rows]
    batch = padded_batch(ids, labels, pad_token_id)
    if "row" in rows[0]:  # where the trainer finds each pair's reference log-probs
        batch["row"] = torch.tensor([r["row"] for r in rows])
    return batch


def _pair_logps(model, batch: dict[str, torch.Tensor], average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed (or averaged) answer log-probs of the chosen and of the rejected sequences of a
    `_pair_batch`, from the logits of the answer positions only."""
    keep = predicts_answer(batch["labels"])
    logps = labelled_logps(answer_logits(model, batch, keep), keep, batch["labels"], average)
    n = logps.shape[0] // 2
    return logps[:n], logps[n:]


def pair_width(row: dict[str, Any]) -> int:
    """The padded width a pair brings to a `_pair_batch`: its longer sequence, chosen or rejected."""
    return max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))


def reference_batches(widths: list[int], batch_size: int, world: int, rank: int) -> tuple[list[int], list[list[int]]]:
    """The rows in the reference pass's order and rank `rank`'s batches of them (row indices).

    The order sorts the rows widest first by `pair_width` (ties by row), so each batch holds pairs of
    similar width and pads little (dataset order mixes short and long pairs). The order is the same on
    every rank. Rank r of N takes the sorted positions r, r + N, r + 2N, ..., in batches of `batch_size`,
    so position k x N + r of the all-gathered result is sorted position k x N + r. Every rank runs the
    same number of forwards: positions past the end compute the narrowest row again, beside its peers.
    """
    order = sorted(range(len(widths)), key=lambda i: (-widths[i], i))
    per_rank = -(-len(order) // world)
    rows = [order[p] if p < len(order) else order[-1] for p in (k * world + rank for k in range(per_rank))]
    return order, [rows[start : start + batch_size] for start in range(0, per_rank, batch_size)]


@torch.no_grad()
def reference_logps(wrapped, policy, ds: Dataset, pad_token_id: int, batch_size: int, average: bool,
                    device: torch.device) -> torch.Tensor:  # fmt: skip
    """The frozen reference's log-probs of every pair, as a (len(ds), 2) tensor [chosen, rejected], row i
    holding pair i's.

    `wrapped` is the model as training runs it (DDP, FSDP or the bare model on one process) and
    `policy` the PEFT model inside it, whose active adapter is switched to the reference meanwhile:
    under FSDP the weights exist only as shards, gathered by the wrapper's forward, so the forward
    must go through it. The pairs are computed sorted by width and split over the ranks as
    `reference_batches` says (the wrappers' forwards are collectives, so every rank runs as many);
    the ranks all-gather the result, so every rank holds all rows, and it is put back in row order.
    """
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    order, batches = reference_batches([pair_width(r) for r in ds], batch_size, world, rank)
    was_training = wrapped.training
    policy.set_adapter(REFERENCE)
    wrapped.eval()
    local = []
    try:
        for rows in batches:
            batch = _pair_batch([ds[i] for i in rows], pad_token_id)
            chosen, rejected = _pair_logps(wrapped, {k: v.to(device) for k, v in batch.items()}, average)
            local.append(torch.stack([chosen, rejected], dim=1).float())
    finally:
        policy.set_adapter(POLICY)  # PEFT makes the active adapter trainable and the others frozen
        wrapped.train(was_training)
    assert_reference_frozen(policy)
    local = torch.cat(local)
    if world > 1:
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        # gathered[r][k] is sorted position k * world + r: interleave the ranks, drop the padding.
        local = torch.stack(gathered, dim=1).reshape(-1, 2)
    in_row_order = torch.empty(len(ds), 2)
    in_row_order[order] = local[: len(ds)].cpu()
    return in_row_order


DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "kl")  # fmt: skip


def dpo_metric_sums(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_rewards: torch.Tensor,
                    rejected_rewards: torch.Tensor, beta: float) -> torch.Tensor:  # fmt: skip
    """The sums over a batch's pairs of DPO's diagnostics (TRL's names, `DPO_METRICS` order), then the
    number of pairs: divided by it, each is a mean over the pairs. For a pair (y_w chosen, y_l rejected):

        rewards/chosen      r_w = beta (log pi(y_w) - log ref(y_w))      (`dpo_loss`'s implicit rewards)
        rewards/rejected    r_l = beta (log pi(y_l) - log ref(y_l))
        rewards/accuracies  1 if r_w > r_l, else 0 (a tie counts as wrong)
        rewards/margins     r_w - r_l
        logps/chosen        log pi(y_w)
        logps/rejected      log pi(y_l)
        kl                  ((log pi(y_w) - log ref(y_w)) + (log pi(y_l) - log ref(y_l))) / 2 = (r_w + r_l) / (2 beta)

    `kl`, the implicit KL to the reference, is the policy-minus-reference log-ratio of the pair's chosen
    and rejected answers alike (so its mean is over the 2 x pairs training answers), in nats, not
    scaled by beta. It is the Monte Carlo estimate of KL(pi || ref) only for answers sampled from pi:
    on the training labels it measures how far the policy moved on them. The log-probs are those the
    loss uses (`averages_logps`): sums over the answer tokens, per-token means for ipo.
    """
    values = [chosen_rewards, rejected_rewards, (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype),
              chosen_rewards - rejected_rewards, chosen_logps.detach(), rejected_logps.detach(),
              (chosen_rewards + rejected_rewards) / (2 * beta)]  # fmt: skip
    sums = torch.stack([v.double().sum() for v in values])
    return torch.cat([sums, sums.new_tensor([len(chosen_rewards)])])


def _dpo_trainer_class():
    class DPOTrainer(trainer_class()):
        """`Trainer` with the DPO loss, a mean over the pairs of each step (`loss_over_rows`). Each log
        also has DPO's diagnostics (`dpo_metric_sums`), means over every pair with a loss trained
        since the previous log on all processes, and its first log `pairs/dropped_for_length`."""

        loss_over_rows = True

        def __init__(self, *args, beta: float, loss_type: str, pad_token_id: int, reference_batch_size: int,
                     dropped_for_length: int, **kwargs):  # fmt: skip
            super().__init__(*args, **kwargs)
            self.beta, self.loss_type = beta, loss_type
            self.pad_token_id, self.reference_batch_size = pad_token_id, reference_batch_size
            self.dropped_for_length: int | None = dropped_for_length  # None once logged
            self._metric_sums = torch.zeros(len(DPO_METRICS) + 1, dtype=torch.float64)  # since the last log
            self.reference_logps: torch.Tensor | None = None  # (rows, 2), filled once the model is prepared

        def _prepare_for_training(self, *args, **kwargs):
            """After `accelerator.prepare` wrapped the model (DDP, FSDP), before the first step: the
            reference log-probs are computed once, through that wrapper (`reference_logps`)."""
            model, dataloader = super()._prepare_for_training(*args, **kwargs)
            policy = self.accelerator.unwrap_model(model)
            self.reference_logps = reference_logps(model, policy, self.train_dataset, self.pad_token_id,
                                                   self.reference_batch_size, averages_logps(self.loss_type),
                                                   self.args.device)  # fmt: skip
            return model, dataloader

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.reference_logps is None:
                raise RuntimeError("DPO reference log-probs were never computed (Trainer._prepare_for_training "
                                   "was not called: a transformers version this code does not know)")  # fmt: skip
            chosen, rejected = _pair_logps(model, inputs, averages_logps(self.loss_type))
            reference = self.reference_logps[inputs["row"].cpu()].to(chosen.device)
            losses, chosen_r, rejected_r = dpo_loss(chosen, rejected, reference[:, 0], reference[:, 1],
                                                    self.beta, self.loss_type)  # fmt: skip
            real = self.rows_with_loss(inputs).to(losses.device)
            losses, chosen_r, rejected_r = losses[real], chosen_r[real], rejected_r[real]
            sums = dpo_metric_sums(chosen[real], rejected[real], chosen_r, rejected_r, self.beta)
            self._metric_sums = self._metric_sums.to(sums.device) + sums
            # In a training step, its part of the step's mean; a batch alone (no step): its own mean.
            loss = losses.mean() if num_items_in_batch is None else self.row_mean(losses, num_items_in_batch)
            return (loss, {"chosen_logps": chosen}) if return_outputs else loss

        def rows_with_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            """The pairs whose chosen answer has a label (a padding pair has none); `_pair_batch` puts
            the chosen sequences first."""
            return (batch["labels"][: len(batch["row"])] != -100).any(-1)

        def log(self, logs: dict[str, float], *args, **kwargs) -> None:
            # Every process calls log at the same steps: the sums of all of them, each pair counted once.
            sums = self.accelerator.reduce(self._metric_sums.to(self.args.device), "sum").cpu()
            self._metric_sums = torch.zeros_like(sums)
            if sums[-1] > 0:  # no pairs trained since the last log (the end-of-training log): no means
                logs.update({key: (total / sums[-1]).item() for key, total in zip(DPO_METRICS, sums)})
            if self.dropped_for_length is not None:
                logs["pairs/dropped_for_length"], self.dropped_for_length = self.dropped_for_length, None
            super().log(logs, *args, **kwargs)

    return DPOTrainer


def train_dpo(model, tokenizer, train_ds: Dataset, cfg: TrainConfig, beta: float = 0.1, loss_type: str = "sigmoid",
              dropped_for_length: int = 0) -> list[dict[str, float]]:  # fmt: skip
    """DPO of the policy adapter against the frozen reference adapter; returns the log history.

    dropped_for_length: the pairs the caller dropped before, for answers longer than max_len
    (`tokenize_dataset`), logged as `pairs/dropped_for_length`."""
    if len(train_ds) == 0:
        raise ConfigError("No preference pairs left to train DPO on (all filtered out or too long for max_len)")
    refuse_unsupported_dpo_launcher()
    keep = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
    train_ds = train_ds.remove_columns([c for c in train_ds.column_names if c not in keep])
    args = cfg.training_arguments()
    train_ds = train_ds.map(
        lambda r, i: {"length": len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]), "row": i}, with_indices=True
    )
    trainer = _dpo_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=lambda rows: _pair_batch(rows, tokenizer.pad_token_id),
        beta=beta,
        loss_type=loss_type,
        pad_token_id=tokenizer.pad_token_id,
        reference_batch_size=4 * cfg.minibatch_size_per_device,
        dropped_for_length=dropped_for_length,
    )
    train_or_resume(trainer, cfg)
    assert_reference_frozen(model)
    return trainer.state.log_history
