"""LoRA (or full) supervised fine-tuning on the Hugging Face `Trainer` machinery, and that machinery as
DPO (`core.dpo`) and the evaluator (`core.train_evaluator`) use it too.

The same code runs on one CPU, one GPU, `torchrun --nproc_per_node N` (DDP: gloo on CPUs, NCCL on
GPUs) and `accelerate launch` with the configs in configs/accelerate/ (DDP; FSDP version 2, GPUs only;
DPO refuses DeepSpeed): the effective batch `batch_size` is reached by gradient accumulation over
minibatches of `minibatch_size_per_device` on each process. In SFT, DPO and the evaluator every optimizer
step, a short last one included, sees the same rows weighted alike whatever the number of processes
(`trainer_class`), so N processes train the same weights as one. DPO's reference log-probs are
computed through the model as the Trainer wrapped it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments

from iterative_label_refinement.core.checkpoints import resume_point, trained_steps
from iterative_label_refinement.core.distributed import accumulation_steps, is_main_process, uses_fsdp, world_size
from iterative_label_refinement.core.files import needing, write_jsonl
from iterative_label_refinement.core.logps import answer_logits, labelled_logps, predicts_answer
from iterative_label_refinement.core.settings import ConfigError, get_logger
from iterative_label_refinement.core.train_options import (
    LR_SCHEDULES,
    OPTIMIZERS,
    TENSORBOARD_DIR,
    TRAIN_LOG,
    validate_optimizer,
    validate_schedule,
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
