"""Train the comparison evaluator on pair data from `experiments.generate_evaluator_data`.

    python -m iterative_label_refinement.core.train_evaluator --model_size=google/gemma-2b \
        --pair_data=$ILR_SAVE_PATH/evaluator-data/d=gsm8k-ms=gemma-2b-s=0

`classifier` (default, the paper's): a 2-label sequence classifier on the base model, full fine-tune
or LoRA (`lora_rank`) merged at the end, label 1 = `<accept>`. `likelihood` (toy scale, where no
classifier learns): the base LM fine-tuned on the better answers, P(accept) from the likelihood gap.
Both evaluate and checkpoint every epoch, stop early with patience 1, keep the best model by eval
loss and delete the intermediate checkpoints. Saved under `<ILR_SAVE_PATH>/evaluators/<data>/<name>`
with its tokenizer, `experiment_config.json` and `results_summary.json` (held-out pair accuracy).
An evaluator that exists is not retrained.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, load_from_disk

from iterative_label_refinement.core.cli import NON_NEGATIVE, POSITIVE, REPORT_TO, Valid
from iterative_label_refinement.core.distributed import is_main_process
from iterative_label_refinement.core.evaluator import (
    EVALUATOR_KINDS,
    LikelihoodEvaluator,
    check_evaluator_kind,
    debiased_scores,
    load_evaluator,
    save_evaluator,
)
from iterative_label_refinement.core.files import read_json, write_json
from iterative_label_refinement.core.layout import evaluator_dir, find_evaluator_data
from iterative_label_refinement.core.models import ModelConfig
from iterative_label_refinement.core.prompts import ACCEPT, REJECT
from iterative_label_refinement.core.settings import ConfigError, get_logger, get_save_path, seed_everything
from iterative_label_refinement.core.train_options import LR_SCHEDULES, OPTIMIZERS

logger = get_logger(__name__)

DATA_COLUMNS = ("prompt", "label", "question", "answer_a", "answer_b", "pair_id", "pair_kind")


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def label_id(label: str) -> int:
    if label not in (ACCEPT, REJECT):
        raise ConfigError(f"Evaluator rows are labelled {ACCEPT!r} or {REJECT!r}, got {label!r}")
    return int(label == ACCEPT)


def accept_rows_as_pairs(ds: Dataset) -> dict[str, list[str]]:
    """The pairs of a data split, from their `<accept>` rows (A = worse, B = better)."""
    rows = [r for r in ds if r["label"] == ACCEPT]
    return {
        "question": [r["question"] for r in rows],
        "worse": [r["answer_a"] for r in rows],
        "better": [r["answer_b"] for r in rows],
        "kind": [r["pair_kind"] for r in rows],
    }


def fit_scale(logp_gaps: np.ndarray) -> float:
    """The scale s maximising mean log sigmoid(s * gap), gap = log p(better) - log p(worse).

    Only calibration: it keeps P(accept) off the float limits 0 and 1, where ties would break the
    quantile thresholds of `ilr`; the ordering of scores does not depend on it.
    """
    grid = np.logspace(-3, 1, 81)
    loglik = [np.mean(-np.logaddexp(0.0, -s * logp_gaps)) for s in grid]
    return float(grid[int(np.argmax(loglik))])


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_evaluator_data(path: Path, pair_data: str) -> DatasetDict:
    if not (path / "dataset_dict.json").exists():
        raise ConfigError(f"No evaluator data {pair_data!r} (at {path}); build it with "
                          "python -m iterative_label_refinement.experiments.generate_evaluator_data")  # fmt: skip
    dd = load_from_disk(str(path))
    for split in ("train", "test"):
        if split not in dd:
            raise ConfigError(f"Evaluator data {path} has no {split!r} split; it has {list(dd)}")
        missing = [c for c in DATA_COLUMNS if c not in dd[split].column_names]
        if missing:
            raise ConfigError(f"Evaluator data {path} ({split}) lacks column(s) {missing}")
    return dd


def _classifier_rows(ds: Dataset, tokenizer) -> Dataset:
    from iterative_label_refinement.core.models import prompt_prefix_ids

    def fn(row):
        ids = prompt_prefix_ids(tokenizer) + tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        return {"input_ids": ids, "labels": label_id(row["label"])}

    return ds.map(fn, remove_columns=ds.column_names, desc="tokenize")


def _likelihood_rows(ds: Dataset, tokenizer) -> Dataset:
    """SFT rows on the better answer of every pair (each (question, answer) once)."""
    from iterative_label_refinement.core.datasets import tokenize_dataset

    pairs = accept_rows_as_pairs(ds)
    unique = list(dict.fromkeys(zip(pairs["question"], pairs["better"])))
    rows = Dataset.from_dict({"question": [q for q, _ in unique], "answer": [a for _, a in unique]})
    out = tokenize_dataset(rows, tokenizer)
    return out.select_columns(["input_ids", "labels"])


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _model(base: ModelConfig, kind: str, lora_rank: int, pad_token_id: int):
    from iterative_label_refinement.core.models import load_model
    from iterative_label_refinement.core.train import add_lora

    model = load_model(base, kind="classifier" if kind == "classifier" else "causal_lm",
                       full_finetune=not lora_rank)  # fmt: skip
    model.config.pad_token_id = pad_token_id
    return add_lora(
        model, lora_rank, base.lora_target_modules, task_type="SEQ_CLS" if kind == "classifier" else "CAUSAL_LM"
    )


def _optimizer(model, lr: float, head_lr: float) -> torch.optim.Optimizer:
    """AdamW with its own learning rate for the new classification head (a fresh head learns faster)."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and ".score." in f".{n}"]
    body = [p for n, p in model.named_parameters() if p.requires_grad and ".score." not in f".{n}"]
    if not head:
        raise ConfigError("--head_lr needs a classifier with a `score` head")
    return torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}], lr=lr, weight_decay=0.0)


def _classifier_trainer_class():
    from iterative_label_refinement.core.train import trainer_class

    class ClassifierTrainer(trainer_class()):
        """The mean cross-entropy over the rows of each optimizer step (`loss_over_rows`). The
        sequence-classification forward averages over its own minibatch, and drops `num_items_in_batch`."""

        loss_over_rows = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if num_items_in_batch is None:  # evaluation: the model's own mean over the batch
                return super().compute_loss(model, inputs, return_outputs)
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            # A padding row's label is -100: its loss is 0.
            losses = torch.nn.functional.cross_entropy(outputs.logits, inputs["labels"], reduction="none")
            loss = self.row_mean(losses, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    return ClassifierTrainer


def train(model, train_ds: Dataset, eval_ds: Dataset, collate, args, head_lr: float | None,
          classifier: bool = True, log_dir: Path | None = None) -> dict:  # fmt: skip
    """Trainer with per-epoch evaluation and checkpoints, early stopping (patience 1), best model by eval loss.

    Rows are drawn as in SFT (`core.train.trainer_class`): 1 or N processes train the same weights.
    The evaluator's rows carry no `length` column: each epoch keeps its seeded permutation unsorted,
    the order evaluators have always been trained in (sorting would change which rows share a minibatch).
    classifier: the model is a sequence classifier, whose loss is a mean over rows; otherwise a causal
    LM, whose loss is a mean over the answer tokens of the step. log_dir: where the curves go
    (`core.train.keep_curves`; default the output dir, which holds only checkpoints).
    """
    from transformers import EarlyStoppingCallback

    from iterative_label_refinement.core.train import trainer_class

    optimizers = (_optimizer(model, args.learning_rate, head_lr), None) if head_lr else (None, None)
    trainer_cls = _classifier_trainer_class() if classifier else trainer_class()
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collate,
                          callbacks=[EarlyStoppingCallback(early_stopping_patience=1)],
                          optimizers=optimizers, log_dir=log_dir)  # fmt: skip
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_loss" in log]
    best = min(evals, key=lambda log: log["eval_loss"])
    return {"eval_loss": best["eval_loss"], "best_epoch": best["epoch"], "epochs_run": trainer.state.epoch,
            "eval_losses": [log["eval_loss"] for log in evals],
            "train_losses": [log["loss"] for log in trainer.state.log_history if "loss" in log]}  # fmt: skip


def summarize(evaluator, test: Dataset, batch_size: int) -> dict[str, Any]:
    """Held-out pair accuracy (position-debiased; overall and per pair kind) and raw row accuracy."""
    pairs = accept_rows_as_pairs(test)
    scores = debiased_scores(evaluator, pairs["question"], pairs["worse"], pairs["better"], batch_size)
    right = scores > 0.5
    kinds = np.array(pairs["kind"])
    p = evaluator.p_accept(list(test["question"]), list(test["answer_a"]), list(test["answer_b"]), batch_size)
    labels = np.array([label_id(x) for x in test["label"]])
    return {
        "pair_accuracy": float(right.mean()),
        "pair_accuracy_by_kind": {k: float(right[kinds == k].mean()) for k in sorted(set(pairs["kind"]))},
        "row_accuracy": float(((p > 0.5) == labels).mean()),
        "mean_p_accept": float(p.mean()),
        "n_test_pairs": len(scores),
    }


def main(
    pair_data: str | None = None,
    model_size: str = "google/gemma-2b",
    seed: Annotated[int, NON_NEGATIVE] = 0,
    epochs: Annotated[float, POSITIVE] = 5,
    batch_size: Annotated[int, POSITIVE] = 16,
    lr: Annotated[float | None, POSITIVE] = None,
    head_lr: Annotated[float | None, POSITIVE] = None,
    lr_schedule: Annotated[str, Valid(choices=tuple(LR_SCHEDULES))] = "cosine_anneal_warmup",
    warmup_ratio: Annotated[float, Valid(ge=0, lt=1)] = 0.05,
    optim: Annotated[str, Valid(choices=tuple(OPTIMIZERS))] = "adamw",
    lora_rank: Annotated[int | None, NON_NEGATIVE] = None,
    minibatch_size_per_device: Annotated[int | None, POSITIVE] = None,
    eval_batch_size: Annotated[int | None, POSITIVE] = None,
    evaluator_kind: Annotated[str, Valid(choices=EVALUATOR_KINDS)] = "classifier",
    force_retrain: bool = False,
    use_wandb: bool = False,
    report_to: Annotated[str, REPORT_TO] = "tensorboard",
    results_folder: str | None = None,
    print_save_path: bool = False,
    ds_name: str | None = None,
) -> dict[str, Any] | str:
    """Train (or find) the evaluator on the pair data `pair_data` (a path, or a name under evaluator-data).

    ds_name: the reference's name for `pair_data` (it names the pair data, not a task).
    lr: default the model's registered `evaluator_lr` (gemma-2b 1e-6). head_lr: a separate learning
    rate for the classifier head (default: lr). lora_rank=0: full fine-tune; >0: LoRA, merged when saved;
    default the model's registered `evaluator_lora_rank` (Mistral-7B 64, so that it fits one 80 GB GPU; others 0).
    evaluator_kind: "classifier" (the paper's) or "likelihood" (a toy-scale stand-in).
    """
    from iterative_label_refinement.core.models import check_lora_targets, weights_id
    from iterative_label_refinement.core.saved_models import check_same_weights

    data = _pair_data_flag(pair_data, ds_name)
    config, run = _settings(model_size, seed, epochs, batch_size, lr, head_lr, lr_schedule, warmup_ratio, optim,
                            lora_rank, minibatch_size_per_device, eval_batch_size, evaluator_kind, use_wandb,
                            report_to)  # fmt: skip
    data_path = find_evaluator_data(data, get_save_path(results_folder))
    out = evaluator_dir(get_save_path(results_folder), data_path, config)
    weights = weights_id(run["model"])
    if not force_retrain:
        check_same_weights(out, weights)
    if print_save_path:
        print(out)
        return str(out)
    if config["lora_rank"]:  # reads the model's config: not for a --print_save_path query
        check_lora_targets(run["model"], "classifier" if evaluator_kind == "classifier" else "causal_lm")
    dd = load_evaluator_data(data_path, data)
    from iterative_label_refinement.core.locks import writing
    from iterative_label_refinement.core.provenance import artifact_identity, reuse

    # What makes the evaluator (core.provenance): its weights (not the name they were given by), settings and data.
    record = dict(artifact="evaluator", model_weights=weights, data=artifact_identity(data_path),
                  settings={k: v for k, v in config.items() if k != "model_size"})  # fmt: skip
    done = (out / "config.json").exists() and (out / "experiment_config.json").exists()
    if done and not force_retrain:
        reuse(out, record, "--force_retrain=True")  # an evaluator made otherwise is refused, never reused
        if (out / "results_summary.json").exists():
            logger.info("Evaluator exists, not retraining: %s", out)
            print(out)
            return _found(out)

    # One writer: the main process holds the evaluator dir's lock while it trains and writes.
    with writing(out) if is_main_process() else contextlib.nullcontext():
        if (out / "results_summary.json").exists() and not force_retrain:  # made while this one started
            return _found(out)
        logger.info("Evaluator dir: %s", out)  # at the start too, not only when training ends
        seed_everything(seed)
        summary: dict[str, Any] = {}
        if not done or force_retrain:
            (out / "results_summary.json").unlink(missing_ok=True)  # not done again until it commits
            summary = _train_and_save(out, dd, data_path, config, run, record)
        if not is_main_process():
            return {"save_path": str(out)}
        # Reload from the dir alone: what `ilr` and `dpo` will do.
        summary.update(summarize(load_evaluator(out), dd["test"], run["eval_batch_size"]))
        write_json(out / "results_summary.json", summary)
        logger.info("Evaluator %s: held-out pair accuracy %.3f", out, summary["pair_accuracy"])
        print(out)
        return {"save_path": str(out), **summary}


def _found(out: Path) -> dict[str, Any]:
    return {"save_path": str(out), "skipped": True, **read_json(out / "results_summary.json")}


def _pair_data_flag(pair_data: str | None, ds_name: str | None) -> str:
    """`--pair_data`, or the reference's `--ds_name` for it; exactly one."""
    if pair_data and ds_name and pair_data != ds_name:
        raise ConfigError(f"--pair_data={pair_data} and --ds_name={ds_name} name the same input (--ds_name is the "
                          "reference's name for it): give one")  # fmt: skip
    if not (pair_data or ds_name):
        raise ConfigError("--pair_data is required: the evaluator data's folder, or its name under "
                          "<results>/evaluator-data (--ds_name is accepted too, the reference's name for it)")  # fmt: skip
    return pair_data or ds_name


def _settings(model_size: str, seed: int, epochs: float, batch_size: int, lr: float | None, head_lr: float | None,
              lr_schedule: str, warmup_ratio: float, optim: str, lora_rank: int | None,
              minibatch_size_per_device: int | None, eval_batch_size: int | None, evaluator_kind: str,
              use_wandb: bool, report_to: str) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(the settings that name the evaluator's dir, how it runs: the model's entry, resolved once, and its
    registered defaults filled in). The dir's name keeps the reference's keys: head_lr and a non-default kind only when given."""
    from iterative_label_refinement.core.models import get_model_config
    from iterative_label_refinement.core.run_config import check_lora_rank, report_target

    model_cfg = get_model_config(model_size)
    check_evaluator_kind(evaluator_kind)
    if head_lr and evaluator_kind != "classifier":
        raise ConfigError("--head_lr applies to the classifier evaluator only")
    if head_lr and optim != "adamw":
        raise ConfigError(f"--head_lr uses AdamW; got --optim={optim}")
    run = dict(model=model_cfg, report_to=report_target(report_to, use_wandb), evaluator_kind=evaluator_kind, head_lr=head_lr,
               minibatch_size_per_device=minibatch_size_per_device or model_cfg.minibatch_size_per_device,
               eval_batch_size=eval_batch_size or model_cfg.eval_batch_size,
               gradient_checkpointing=model_cfg.gradient_checkpointing)  # fmt: skip
    lora_rank = model_cfg.evaluator_lora_rank if lora_rank is None else lora_rank
    check_lora_rank(lora_rank)
    config = dict(model_size=model_size, seed=seed, epochs=epochs, batch_size=batch_size,
                  lr=lr or model_cfg.evaluator_lr, lr_schedule=lr_schedule, warmup_ratio=warmup_ratio, optim=optim,
                  lora_rank=lora_rank)  # fmt: skip
    if head_lr:
        config["head_lr"] = head_lr
    if evaluator_kind != "classifier":
        config["evaluator_kind"] = evaluator_kind
    return config, run


def _train_and_save(out: Path, dd: DatasetDict, data_path: Path, config: dict[str, Any], run: dict[str, Any],
                    record: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Train the evaluator, save it (main process) with its config and record; the training summary."""
    from iterative_label_refinement.core.models import load_tokenizer
    from iterative_label_refinement.core.provenance import RECORD
    from iterative_label_refinement.core.train import TrainConfig, collate

    kind, lora_rank = run["evaluator_kind"], config["lora_rank"]
    tokenizer = load_tokenizer(run["model"])
    model = _model(run["model"], kind, lora_rank, tokenizer.pad_token_id)
    rows_of = _classifier_rows if kind == "classifier" else _likelihood_rows
    train_ds, eval_ds = (rows_of(dd[s], tokenizer) for s in ("train", "test"))
    collator = lambda rows: collate(rows, tokenizer.pad_token_id)  # noqa: E731
    checkpoints = out / "checkpoints"
    args = TrainConfig(
        output_dir=str(checkpoints), lr=config["lr"], epochs=config["epochs"], batch_size=config["batch_size"],
        minibatch_size_per_device=run["minibatch_size_per_device"], optim=config["optim"],
        lr_schedule=config["lr_schedule"], warmup_ratio=config["warmup_ratio"], seed=config["seed"],
        report_to=run["report_to"], gradient_checkpointing=run["gradient_checkpointing"], run_name=out.name,
    ).training_arguments(eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                         metric_for_best_model="eval_loss", greater_is_better=False,
                         per_device_eval_batch_size=run["eval_batch_size"])  # fmt: skip
    start = time.time()
    summary = train(model, train_ds, eval_ds, collator, args, run["head_lr"], kind == "classifier", log_dir=out)
    summary["train_seconds"] = round(time.time() - start, 1)
    summary["stopped_early"] = summary["epochs_run"] < config["epochs"] - 1e-6
    if lora_rank:
        model = model.merge_and_unload()
    data_config = data_path / "experiment_config.json"
    full_config = dict(config, model_weights=record["model_weights"], evaluator_kind=kind, head_lr=run["head_lr"],
                       data_path=str(data_path), minibatch_size_per_device=run["minibatch_size_per_device"],
                       eval_batch_size=run["eval_batch_size"],
                       evaluator_data=read_json(data_config) if data_config.exists() else None)  # fmt: skip
    if kind == "likelihood":
        full_config["likelihood_scale"] = _likelihood_scale(model, tokenizer, dd["train"], run["eval_batch_size"])
    if is_main_process():
        save_evaluator(model, tokenizer, out, full_config)
        write_json(out / RECORD, record)  # before results_summary.json, the evaluator's commit point
        shutil.rmtree(checkpoints, ignore_errors=True)
    return summary


def _likelihood_scale(model, tokenizer, train: Dataset, batch_size: int, max_pairs: int = 2000) -> float:
    pairs = accept_rows_as_pairs(train.select(range(min(len(train), 2 * max_pairs))))
    evaluator = LikelihoodEvaluator(model, tokenizer)
    better = evaluator.answer_logps(pairs["question"], pairs["better"], batch_size)
    worse = evaluator.answer_logps(pairs["question"], pairs["worse"], batch_size)
    return fit_scale(better - worse)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli
    from iterative_label_refinement.plugins import load_plugins

    load_plugins()
    run_cli(main)
