"""LoRA (or full) supervised fine-tuning, and LoRA DPO, on the Hugging Face `Trainer` machinery.

The same code runs on one CPU, one GPU, `torchrun --nproc_per_node N` (DDP: gloo on CPUs, NCCL on
GPUs) and `accelerate launch` with the configs in configs/accelerate/ (DDP; FSDP version 2, GPUs only;
DPO refuses DeepSpeed): the effective batch `batch_size` is reached by gradient accumulation over
minibatches of `minibatch_size_per_device` on each process. In SFT, DPO and the evaluator every optimizer
step, a short last one included, sees the same rows weighted alike whatever the number of processes
(`trainer_class`), so N processes train the same weights as one. DPO's reference log-probs are
computed through the model as the Trainer wrapped it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments

from iterative_label_refinement.core.checkpoints import resume_point, trained_steps
from iterative_label_refinement.core.common import (
    DPO_LOSS_TYPES,
    LR_SCHEDULES,
    OPTIMIZERS,
    TENSORBOARD_DIR,
    TRAIN_LOG,
    ConfigError,
    accumulation_steps,
    get_logger,
    is_main_process,
    needing,
    refuse_unsupported_dpo_launcher,
    uses_fsdp,
    validate_optimizer,
    validate_schedule,
    world_size,
    write_jsonl,
)

logger = get_logger(__name__)


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model and data."""

    output_dir: str
    lr: float
    epochs: float = 2
    batch_size: int = 32
    minibatch_size_per_device: int = 1
    optim: str = "adamw"
    lr_schedule: str = "cosine_warmup"
    warmup_ratio: float = 0.05
    # In (0, 1): save a checkpoint-K every ceil(save_frequency x steps) optimizer steps, with the
    # optimizer, scheduler and RNG state that resuming needs (`train_sft`, `train_dpo`).
    save_frequency: float = 0
    seed: int = 0
    report_to: str = "tensorboard"  # where the Trainer also sends its logs: tensorboard, wandb or none
    gradient_checkpointing: bool = False
    run_name: str | None = None
    # Continue from the last complete checkpoint-K in output_dir; False trains afresh (deleting them).
    resume: bool = True

    def training_arguments(self, **overrides: Any) -> TrainingArguments:
        validate_optimizer(self.optim)
        validate_schedule(self.lr_schedule, self.lr, self.warmup_ratio)
        if self.save_frequency and not 0 < self.save_frequency < 1:
            raise ConfigError(
                f"--save_frequency must be in (0, 1) (a fraction of the steps) or 0, got {self.save_frequency}"
            )
        from iterative_label_refinement.core.devices import mixed_precision

        scheduler, warmup = LR_SCHEDULES[self.lr_schedule]
        on_cpu = not torch.cuda.is_available()
        if on_cpu and uses_fsdp():
            # accelerate enables FSDP only on accelerators; on CPUs it would run DDP without a word.
            raise ConfigError("FSDP needs GPUs (accelerate runs DDP on CPUs): on CPUs launch with torchrun")
        kwargs: dict[str, Any] = dict(
            output_dir=self.output_dir,
            learning_rate=self.lr,
            num_train_epochs=self.epochs,
            per_device_train_batch_size=self.minibatch_size_per_device,
            per_device_eval_batch_size=self.minibatch_size_per_device,
            gradient_accumulation_steps=accumulation_steps(self.batch_size, self.minibatch_size_per_device),
            optim=OPTIMIZERS[self.optim],
            lr_scheduler_type=scheduler,
            warmup_steps=self.warmup_ratio if warmup else 0,  # a ratio: `RatioWarmupArguments`
            # Autocast by capability; the weights stay as loaded (float32 for full fine-tunes).
            bf16=mixed_precision() == "bf16",
            fp16=mixed_precision() == "fp16",
            # Without use_cpu, accelerate sees no GPU and no multi-CPU request: torchrun's processes
            # would each train a full replica on all rows instead of one data-parallel run.
            use_cpu=on_cpu,
            ddp_backend="gloo" if on_cpu and world_size() > 1 else None,
            activation_checkpointing=self.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False} if self.gradient_checkpointing else None,
            dataloader_pin_memory=torch.cuda.is_available(),
            logging_steps=1,
            logging_first_step=True,
            save_strategy="steps" if 0 < self.save_frequency < 1 else "no",
            save_steps=self.save_frequency if 0 < self.save_frequency < 1 else 500,
            save_only_model=not 0 < self.save_frequency < 1,  # our checkpoints are for resuming too
            report_to=[] if self.report_to == "none" else [self.report_to],
            run_name=self.run_name,
            seed=self.seed,
            data_seed=self.seed,
            remove_unused_columns=False,
            disable_tqdm=False,
            ddp_find_unused_parameters=False,
        )
        if scheduler == "cosine_with_min_lr":
            kwargs["lr_scheduler_kwargs"] = {"min_lr_rate": 0.1}
        kwargs.update(overrides)
        return RatioWarmupArguments(**kwargs)


def warmup_steps(ratio: float, total_steps: int) -> int:
    """Linear-warmup steps of a run of `total_steps` (n) optimizer steps: W = min(ceil(n x ratio), n - 1).

    Optimizer step s (from 0) runs at lr x s / W while s < W, then at lr x the schedule's decay,
    which is 1 at s = W for every schedule here (cosine, cosine with a floor, linear, constant).
    transformers takes W = ceil(total_steps x ratio): with 1 step that is W = 1, and the only step
    runs at lr 0 (trains nothing). The cap W <= total_steps - 1 makes step W, at the full lr, part
    of every run. Below the cap W is transformers' own count (the same float product, so the same
    rounding), so only runs with ceil(total_steps x ratio) >= total_steps change: with ratio 0.05,
    only 1-step runs (W 1 -> 0); with ratio 1, the last step (W = total_steps - 1).
    """
    return min(math.ceil(total_steps * ratio), max(total_steps - 1, 0))


class RatioWarmupArguments(TrainingArguments):
    """`TrainingArguments` whose `warmup_steps` is a ratio in [0, 1] of the run's optimizer steps,
    turned into steps by `warmup_steps` (never the whole run), where the Trainer builds its scheduler."""

    def get_warmup_steps(self, num_training_steps: int) -> int:
        return warmup_steps(self.warmup_steps, num_training_steps)


def pad_right(sequences: list[list[int]], value: int) -> torch.Tensor:
    """Right padding keeps every real token at its true position, so padding changes no loss."""
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], dtype=torch.long)


def padded_batch(ids: list[list[int]], labels: list[Any], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The one batch layout of every trainer: right-padded ids with their attention mask, and labels
    right-padded with -100 where they are per token (SFT, DPO), or one class id per row (classifier)."""
    return {
        "input_ids": pad_right(ids, pad_token_id),
        "attention_mask": pad_right([[1] * len(s) for s in ids], 0),
        "labels": pad_right(labels, -100) if isinstance(labels[0], list) else torch.tensor(labels, dtype=torch.long),
    }


def collate(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A batch of tokenized rows (`input_ids`, `labels`): SFT's and the evaluator's collator."""
    return padded_batch([r["input_ids"] for r in rows], [r["labels"] for r in rows], pad_token_id)


def add_lora(model: torch.nn.Module, lora_rank: int, target_modules: str | list[str] = "all-linear",
             task_type: str = "CAUSAL_LM"):  # fmt: skip
    """LoRA with r=lora_rank, alpha=2r on `target_modules`; lora_rank=0 keeps full fine-tuning.

    task_type: "CAUSAL_LM", or "SEQ_CLS" for a classifier, which keeps its new head fully trainable
    (and saved) beside the adapter. Every trained parameter, that head included, is float32
    (`core.devices`): PEFT makes its adapters float32 but copies the head in the base's dtype.
    """
    if lora_rank == 0:
        return model
    from peft import LoraConfig, get_peft_model

    from iterative_label_refinement.core.devices import upcast_trainable

    config = LoraConfig(
        r=lora_rank,
        lora_alpha=2 * lora_rank,
        lora_dropout=0.0,
        target_modules=target_modules,
        task_type=task_type,
    )
    model = upcast_trainable(get_peft_model(model, config))
    if getattr(model, "is_activation_checkpointing", False):
        model.enable_input_require_grads()  # checkpointed layers need inputs that require grad
    return model


class EffectiveBatchSampler(torch.utils.data.Sampler):
    """A seeded permutation of the rows per epoch, each effective batch sorted longest first.

    The order depends on the seed, the epoch, `batch_size` and the lengths, never on the number of
    processes: accelerate deals the minibatches round-robin to the processes, so every optimizer step
    sees the same rows on one process as on N. Sorting inside an effective batch changes no gradient
    (the loss is normalised over the whole effective batch) and keeps minibatches of similar length.

    On N > 1 processes a short last effective batch is completed to a multiple of `pad_to` = minibatch
    x N rows by padding indices len(lengths), len(lengths) + 1, ...: rows without loss (`PaddedRows`).
    Every process then gets the same number of full minibatches, which accelerate would otherwise make
    up with repeats of the epoch's first rows, trained as if they were new. One process needs none.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, pad_to: int = 1):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0
        self.padding = -(len(self.lengths) % batch_size) % pad_to

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) + self.padding

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        for start in range(0, len(order), self.batch_size):
            yield from sorted(order[start : start + self.batch_size], key=lambda i: -self.lengths[i])
        yield from range(len(self.lengths), len(self.lengths) + self.padding)


class PaddedRows(torch.utils.data.Dataset):
    """The training rows, then padding rows: an index from len(rows) on gives row 0 with every label
    (each column named *labels) -100, which no loss counts, so it weighs nothing in any step."""

    def __init__(self, rows: Dataset):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < len(self.rows):
            return self.rows[i]
        ignored = lambda v: [-100] * len(v) if isinstance(v, list) else -100  # noqa: E731
        return {k: ignored(v) if k.endswith("labels") else v for k, v in self.rows[0].items()}


def trainer_class():
    """`transformers.Trainer` whose optimizer steps weigh the same rows alike on one process or N.

    Rows come from `EffectiveBatchSampler`, a short last batch completed with rows without loss. A loss
    averaged over tokens (SFT) is normalised by the Trainer by the labelled tokens of the whole step on
    all processes (`num_items_in_batch`, `average_tokens_across_devices`). A loss averaged over rows (DPO,
    the classifier evaluator: `loss_over_rows`) gets the step's rows with a loss on all processes as
    `num_items_in_batch`, R, and a minibatch adds `row_mean`: the sum of its rows' losses x N / R
    (x N: DDP averages the gradients of the N processes). Summed over the step's minibatches on all
    processes, that is the mean over the step's rows, however they were split (the Trainer's own
    scaling, each minibatch's mean / the step's number of minibatches, weighs a short minibatch's rows more).
    """
    from transformers import Trainer

    class ILRTrainer(Trainer):
        loss_over_rows = False  # a subclass whose `compute_loss` uses `row_mean` sets it

        def __init__(self, *args, log_dir: str | Path | None = None, **kwargs):
            """log_dir: where the run's curves go (default: the output dir), `keep_curves`."""
            super().__init__(*args, **kwargs)
            if self.loss_over_rows:
                # No token count for the model, and no division by the number of minibatches.
                self.model_accepts_loss_kwargs, self.loss_is_scaled_for_ga = False, True
            keep_curves(self, Path(log_dir or self.args.output_dir))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """A causal LM's loss (SFT, the likelihood evaluator) as the model computes it, from the logits
            of the labelled positions only (`answer_logits`): the cross-entropy summed over the labelled
            tokens / `num_items_in_batch` (the step's labelled tokens on all processes) x N processes, or
            their mean without it. A classifier's (one label per row) is the Trainer's."""
            labels = inputs["labels"]
            if labels.dim() == 1:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            keep = predicts_answer(labels)
            logits = answer_logits(model, inputs, keep)
            total = -labelled_logps(logits, keep, labels, average=False).sum()
            loss = total / (keep.sum() if num_items_in_batch is None else num_items_in_batch)
            across = self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
            if across and num_items_in_batch is not None:
                # As the Trainer's: num_items_in_batch counts all processes' tokens, and DDP averages
                # the N processes' gradients.
                loss = loss * self.accelerator.num_processes
            return (loss, {"answer_logits": logits}) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            lengths = ds["length"] if "length" in ds.column_names else [1] * len(ds)
            minibatch, world = self.args.per_device_train_batch_size, self.args.world_size
            effective_batch = minibatch * self.args.gradient_accumulation_steps * world
            return EffectiveBatchSampler(lengths, effective_batch, self.args.data_seed,
                                         pad_to=minibatch * world if world > 1 else 1)  # fmt: skip

        def get_train_dataloader(self):
            """The Trainer's, over `PaddedRows`: the sampler's padding indices become rows without loss."""
            return self._get_dataloader(dataset=PaddedRows(self.train_dataset), description="Training",
                                        batch_size=self._train_batch_size, is_training=True,
                                        sampler_fn=lambda _: self._get_train_sampler())  # fmt: skip

        def rows_with_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            """Which rows of a collated minibatch carry a loss (padding rows have every label -100)."""
            labels = batch["labels"]
            return labels != -100 if labels.dim() == 1 else (labels != -100).any(-1)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            if self.loss_over_rows:
                rows = sum(int(self.rows_with_loss(b).sum()) for b in batches)
                num_items = self.accelerator.gather(torch.tensor(rows, device=device)).sum()
            return batches, num_items

        def row_mean(self, row_losses: torch.Tensor, num_items_in_batch: torch.Tensor) -> torch.Tensor:
            """This minibatch's part of the mean over the step's rows: the losses of its rows with a loss."""
            return row_losses.sum() * self.accelerator.num_processes / num_items_in_batch

    return ILRTrainer


def keep_curves(trainer, log_dir: Path) -> None:
    """The run's curves in `log_dir`: the Trainer's TensorBoard writer (report_to) writes under
    `log_dir/tensorboard` (not transformers' default, `<output_dir>/runs/<date_host>`: the evaluator
    deletes its output dir), and the log history goes to `log_dir/train_log.jsonl` when training ends.
    Both on the main process only (the callback's own rule, and `_SaveLog`'s). A resumed run's history
    starts with its checkpoint's, so the file holds the whole run."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = callback.logging_dir or str(log_dir / TENSORBOARD_DIR)  # env var first
    trainer.add_callback(_SaveLog(log_dir))


class _SaveLog(TrainerCallback):
    """Writes the log history (`TRAIN_LOG`) once training ends, after the Trainer's last log."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_jsonl(self.log_dir / TRAIN_LOG, state.log_history)


def train_sft(model: torch.nn.Module, tokenizer, train_ds: Dataset, cfg: TrainConfig) -> dict[str, float]:
    """Train `model` (already LoRA-wrapped or full) on a tokenized dataset; returns train metrics."""
    if len(train_ds) == 0:
        raise ConfigError("No training examples left (all filtered out or too long for max_len)")
    train_ds = train_ds.map(lambda r: {"length": len(r["input_ids"])})
    keep = ["input_ids", "labels", "length"]
    train_ds = train_ds.remove_columns([c for c in train_ds.column_names if c not in keep])
    args = cfg.training_arguments()
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
    )
    result = train_or_resume(trainer, cfg)
    return dict(result.metrics)


class _SameSchedule(TrainerCallback):
    """Refuses, before the first step, to resume a checkpoint made for another number of steps."""

    def __init__(self, checkpoint: Path, total_steps: int):
        self.checkpoint, self.total_steps = checkpoint, total_steps

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps != self.total_steps:
            raise ConfigError(
                f"{self.checkpoint} was saved by a run of {self.total_steps} optimizer steps, "
                f"this one has {state.max_steps} (other data?): --force_retrain=True trains afresh"
            )


class _SamplerEpoch(TrainerCallback):
    """Sets the `EffectiveBatchSampler`'s epoch as each epoch begins. Resuming mid-epoch, the Trainer
    skips the trained batches through accelerate's `skip_first_batches`, whose `set_epoch` does not
    reach a sampler under both its SkipBatchSampler and DDP's BatchSamplerShard: the resumed epoch
    would take epoch 0's order."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        found, seen = [train_dataloader], set()
        while found:  # the sampler under accelerate's wrappers, whichever they are
            obj = found.pop()
            if obj is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, EffectiveBatchSampler):
                obj.set_epoch(int(state.epoch or 0))  # the epoch begun: epochs done (+ the resumed part)
            found += [getattr(obj, "batch_sampler", None), getattr(obj, "sampler", None)]


def train_or_resume(trainer, cfg: TrainConfig):
    """`trainer.train()`, resumed from the last complete checkpoint of `cfg.output_dir` when `cfg.resume`
    (`core.checkpoints.resume_point`): its weights, optimizer, scheduler and RNG state are loaded and
    the Trainer skips the batches of the steps it made (`EffectiveBatchSampler` gives every epoch
    the same order in every process), so the run ends with the weights of an uninterrupted one."""
    checkpoint = resume_point(Path(cfg.output_dir), cfg.resume, is_main_process())
    if checkpoint is not None:
        step, total = trained_steps(checkpoint)
        logger.info("Resuming from %s (step %d of %d)", checkpoint.name, step, total)
        trainer.add_callback(_SameSchedule(checkpoint, total))
        trainer.add_callback(_SamplerEpoch())
    return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)


def save_trained(model: torch.nn.Module, tokenizer, path: str | Path) -> None:
    """Save the LoRA adapter (or the full model) with its tokenizer, on the main process only.

    Under FSDP2 every weight is a DTensor holding one rank's shard: all ranks gather the full tensors
    first (a collective, so every rank calls this), then the main process writes them."""
    from torch.distributed.tensor import DTensor

    # Only the trained adapter: a DPO policy carries a frozen reference adapter beside it.
    kwargs: dict[str, Any] = {"selected_adapters": ["default"]} if hasattr(model, "peft_config") else {}
    if any(isinstance(p, DTensor) for p in model.parameters()):
        # Of a LoRA model only the adapters are saved: the base weights stay sharded.
        keep = (lambda key: "lora_" in key) if "selected_adapters" in kwargs else (lambda key: True)
        kwargs["state_dict"] = {k: v.full_tensor() if isinstance(v, DTensor) else v
                                for k, v in model.state_dict().items() if keep(k)}  # fmt: skip
    if is_main_process():
        saved = kwargs.get("state_dict") or {k: v for k, v in model.state_dict().items()
                                             if "selected_adapters" not in kwargs or "lora_" in k}  # fmt: skip
        with needing(sum(v.numel() * v.element_size() for v in saved.values()), path):
            model.save_pretrained(str(path), **kwargs)
            tokenizer.save_pretrained(str(path))


# ---------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------

POLICY, REFERENCE = "default", "reference"  # PEFT saves the "default" adapter at the folder's root


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


def load_dpo_policy(model_size: str, adapter_path: str, dropout: bool = False):
    """The base model with `adapter_path` loaded twice: a trainable policy and a frozen reference."""
    from peft import PeftModel

    from iterative_label_refinement.core.models import get_model_config, load_model

    base = load_model(model_size, dropout=dropout)
    model = PeftModel.from_pretrained(base, adapter_path, adapter_name=POLICY, is_trainable=True)
    model.load_adapter(adapter_path, adapter_name=REFERENCE, is_trainable=False)
    model.set_adapter(POLICY)
    if get_model_config(model_size).gradient_checkpointing:
        model.enable_input_require_grads()
    assert_reference_frozen(model)
    return model


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
