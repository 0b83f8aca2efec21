"""One SFT (or DPO) training run, then test evaluation and label generation.

    python -m iterative_label_refinement.experiments.main --ds_name=gsm8k --model_size=google/gemma-2b

Outputs in the run dir `<results_folder>/<sweep_subfolder>/<name>`: `experiment_config.json`,
`results_summary.json`, `test_results.jsonl`, `weak_labels` (a `datasets` label set), and the
LoRA adapter or model when kept; then `done.json`, the commit point, written last: a run dir
without it is unfinished, whatever else it holds, and is redone (resuming from its checkpoints).
One process writes a run dir at a time (`core.locks`). `--print_save_path` prints the run dir and
does nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.cli import expand_flags
from iterative_label_refinement.core.distributed import is_main_process
from iterative_label_refinement.core.files import (
    clean_stale_tmp,
    read_json,
    save_to_disk_atomic,
    write_json,
    write_jsonl,
)
from iterative_label_refinement.core.generation import vllm_need
from iterative_label_refinement.core.layout import model_dir
from iterative_label_refinement.core.locks import writing
from iterative_label_refinement.core.models import weights_id
from iterative_label_refinement.core.run_config import MainFlags, RunConfig
from iterative_label_refinement.core.run_data import RunData, gt_answers, load_run_data
from iterative_label_refinement.core.saved_models import (
    DONE,
    check_same_weights,
    delete_saved_model,
    has_saved_model,
    load_trained,
)
from iterative_label_refinement.core.settings import ConfigError, get_logger, seed_everything

if TYPE_CHECKING:
    from datasets import Dataset

logger = get_logger(__name__)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@expand_flags
def main(flags: MainFlags, print_save_path: bool = False) -> dict[str, Any] | str:
    """Train, evaluate on test, and generate labels.

    A ground-truth run (no --weak_labels_path) trains on half A of the train split and labels half B; a run
    on labels trains on all of them (or on one half with --half_data=1|2, labelling the other). The flags
    beyond the reference's keep its behaviour at their defaults; `eval_on=heldout` scores on `n_test_docs`
    training-split prompts no run of `n_docs` trains on or labels: settings are tuned there, never on test.

    Args:
        print_save_path: print the run dir and do nothing else (the pipelines ask where a run goes)
    """
    cfg = RunConfig.resolve(flags, dry_run=print_save_path)
    run_dir, weights = plan(cfg, print_save_path)
    if print_save_path:
        return str(run_dir)
    if finished(cfg, run_dir):
        return _skipped(run_dir)
    data = _load(cfg)  # errors in the inputs still leave nothing behind
    if not is_main_process():  # the other processes of a DDP run only train; rank 0 owns the run dir
        seed_everything(cfg.seed)
        _train_or_load(cfg, run_dir, data.train)
        return {"save_path": str(run_dir)}
    with writing(run_dir):
        if finished(cfg, run_dir):  # another writer finished it while this one loaded its data
            return _skipped(run_dir)
        logger.info("Run dir: %s", run_dir)  # at the start too, not only when the run ends
        _start(cfg, run_dir, weights)
        seed_everything(cfg.seed)
        model, tokenizer = _train_or_load(cfg, run_dir, data.train)
        if cfg.inference_backend == "vllm":  # the trained weights are saved: vLLM loads them, into the model's memory
            need = vllm_need(model)
            del model  # the last reference: a test checks with a weakref that the model is gone
            model = _start_vllm(cfg, run_dir, need)
        summary = _evaluate_and_label(cfg, run_dir, model, tokenizer, data)
        _commit(cfg, run_dir, summary)
    logger.info("Done: %s %s", run_dir, summary)
    print(run_dir)
    return {"save_path": str(run_dir), **summary}


def plan(cfg: RunConfig, print_save_path: bool) -> tuple[Path, str]:
    """The run dir and the weights it trains, checked against what the dir holds; printed for --print_save_path."""
    run_dir = cfg.run_dir()
    weights = weights_id(cfg.model)
    if not cfg.force_retrain:  # before the scripts' "done already" check, which asks for this path
        check_same_weights(run_dir, weights)
    if print_save_path:
        print(run_dir)
    elif cfg.dpo_round and not Path(cfg.dpo_path, "adapter_config.json").exists():
        raise ConfigError(f"--dpo_path={cfg.dpo_path} holds no LoRA adapter (adapter_config.json)")
    return run_dir, weights


def _load(cfg: RunConfig) -> RunData:
    """The run's rows, and the inputs the task's metric needs, checked before hours of training."""
    data = load_run_data(cfg)
    if cfg.dataset.check_rows:
        cfg.dataset.check_rows([data.test, data.label_targets])
    return data


def finished(cfg: RunConfig, run_dir: Path) -> bool:
    """The run's commit point (`DONE`, written last) is there, and so is every output it lists. A run
    dir from before commit points (its record names none) is finished when its outputs exist."""
    if cfg.force_retrain:
        return False
    if (run_dir / DONE).exists():
        return all((run_dir / name).exists() for name in read_json(run_dir / DONE)["outputs"])
    record = run_dir / "experiment_config.json"
    if not record.exists() or "commit_point" in read_json(record):
        return False
    outputs = [run_dir / name for name in _outputs(cfg)]
    return all(p.exists() for p in outputs) and (bool(outputs) or has_saved_model(run_dir))


def _outputs(cfg: RunConfig) -> list[str]:
    return (["results_summary.json"] if cfg.do_test else []) + (["weak_labels"] if cfg.generate_weak_labels else [])


def _skipped(run_dir: Path) -> dict[str, Any]:
    logger.info("Run already done, nothing to do: %s", run_dir)
    print(run_dir)
    return {"save_path": str(run_dir), "skipped": True}


def _start(cfg: RunConfig, run_dir: Path, weights: str) -> None:
    """The run dir with its record; what a killed attempt left half-written goes."""
    from iterative_label_refinement.core.models import resolve_model_path

    run_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(run_dir)  # safe under the run dir's lock: no other writer's temporary files
    (run_dir / DONE).unlink(missing_ok=True)  # a forced rerun is not done until it commits again
    # Where the weights came from: a registered model with a packaged copy may load either.
    write_json(run_dir / "experiment_config.json", dict(cfg.to_json(), model_loaded_from=resolve_model_path(
        cfg.model), model_weights=weights, commit_point=DONE))  # fmt: skip


def _start_vllm(cfg: RunConfig, run_dir: Path, need: int):
    """The vLLM engine on the run's saved model (the trained model itself must have no reference left): with
    its LoRA adapter over the base, or (--lora_rank=0) the fully trained weights as the model; its share
    of GPU memory is chosen from the memory free now, at most --gpu_usage (`vllm_gpu_usage`)."""
    from iterative_label_refinement.core.generation import VLLMModel, vllm_gpu_usage
    from iterative_label_refinement.core.models import resolve_model_path

    tp = cfg.model.tensor_parallel_size
    gpu_usage = vllm_gpu_usage(need, cap=cfg.gpu_usage, n_gpus=tp)
    saved = model_dir(run_dir, cfg.dpo_round)
    if (saved / "adapter_config.json").exists():
        # The weights' folder, not the registry name: tiny and packaged models have no hub id vLLM could fetch.
        return VLLMModel(resolve_model_path(cfg.model), str(saved), tp, gpu_usage)
    return VLLMModel(str(saved), None, tp, gpu_usage)


def _evaluate_and_label(cfg: RunConfig, run_dir: Path, gen_model, tokenizer, data: RunData) -> dict[str, Any]:
    """Test answers (`test_results.jsonl`), train answers when asked, and the labels of the other half
    (`weak_labels`), generated by `gen_model` (the trained model, or a `VLLMModel` serving it); returns the
    summary (accuracy with its standard error, label accuracy)."""
    from datasets import Dataset

    from iterative_label_refinement.core.eval import evaluate_dataset, mean_and_stderr

    gen = dict(max_new_tokens=cfg.max_len, batch_size=cfg.eval_batch_size, seed=cfg.seed, backend=cfg.inference_backend)
    summary: dict[str, Any] = {}
    if cfg.do_test:
        records = evaluate_dataset(gen_model, tokenizer, data.test, cfg.dataset, compute_acc=cfg.compute_test_acc,
                                   desc="test", num_beams=cfg.num_beams, **gen)  # fmt: skip
        write_jsonl(run_dir / "test_results.jsonl", records)
        if cfg.compute_test_acc:
            summary["accuracy"], summary["accuracy_stderr"] = mean_and_stderr([r["acc"] for r in records])
        summary["n_test"] = len(records)
    if cfg.inference_on_train:
        train_rows = Dataset.from_dict({"question": data.train["question"], "answer": gt_answers(data.train)})
        records = evaluate_dataset(gen_model, tokenizer, train_rows, cfg.dataset, desc="train", **gen)
        write_jsonl(run_dir / "train_results.jsonl", records)
    if cfg.generate_weak_labels:
        records = evaluate_dataset(gen_model, tokenizer, data.label_targets, cfg.dataset,
                                   compute_acc=cfg.compute_weak_label_acc, desc="labels", temperature=cfg.label_temp,
                                   num_samples=cfg.num_samples, num_beams=cfg.num_beams if cfg.label_temp <= 0 else 1,
                                   top_k=cfg.top_k, top_p=cfg.top_p, **gen)  # fmt: skip
        save_to_disk_atomic(Dataset.from_list(records), run_dir / "weak_labels")
        if cfg.compute_weak_label_acc:
            accs = [a for r in records for a in (r["acc"] if isinstance(r["acc"], list) else [r["acc"]])]
            summary["label_accuracy"] = mean_and_stderr(accs)[0]
            summary["n_labels"] = len(records)
    return summary


def _commit(cfg: RunConfig, run_dir: Path, summary: dict[str, Any]) -> None:
    """Drop the model unless it is kept, write `results_summary.json`, then the commit point, last:
    a run killed anywhere before it is redone, never taken as done with an output missing."""
    if not (cfg.save_model or cfg.do_dpo):
        delete_saved_model(model_dir(run_dir, cfg.dpo_round))
    if cfg.do_test:
        write_json(run_dir / "results_summary.json", summary)
    write_json(run_dir / DONE, {"outputs": _outputs(cfg), "summary": summary})


def _train_or_load(cfg: RunConfig, run_dir: Path, train_ds: Dataset):
    """Load the saved model when it exists (unless forced), else train and save it. A run killed while
    training (its run dir has checkpoint-K dirs but no model) resumes from its last complete checkpoint;
    --force_retrain trains afresh."""
    from iterative_label_refinement.core.checkpoints import drop_training_state
    from iterative_label_refinement.core.models import load_tokenizer
    from iterative_label_refinement.core.train import save_trained

    tokenizer = load_tokenizer(cfg.model)
    saved = model_dir(run_dir, cfg.dpo_round)
    if has_saved_model(saved) and not cfg.force_retrain:
        logger.info("Model exists, skipping training: %s", saved)
        if is_main_process():  # killed right after saving it, the run kept its checkpoints' training state
            drop_training_state(run_dir)
        return load_trained(cfg.model, saved), tokenizer
    model = _train(cfg, run_dir, train_ds, tokenizer)
    save_trained(model, tokenizer, saved)
    if is_main_process():  # the final model is saved: its checkpoints keep their weights only
        drop_training_state(run_dir)
    return model, tokenizer


def _train(cfg: RunConfig, run_dir: Path, train_ds: Dataset, tokenizer):
    """The trained model: SFT of the base model with LoRA (or all its weights), or a DPO round of the
    previous round's adapter; checkpoints go to the run dir, from which a killed run resumes."""
    from iterative_label_refinement.core.datasets import tokenize_dataset
    from iterative_label_refinement.core.dpo import load_dpo_policy, train_dpo
    from iterative_label_refinement.core.models import load_model
    from iterative_label_refinement.core.train import TrainConfig, add_lora, train_sft

    train_cfg = TrainConfig(
        output_dir=str(run_dir), lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
        minibatch_size_per_device=cfg.minibatch_size_per_device, optim=cfg.optim, lr_schedule=cfg.lr_schedule,
        warmup_ratio=cfg.warmup_ratio, save_frequency=cfg.save_frequency, seed=cfg.data_seed,
        report_to=cfg.report_to, gradient_checkpointing=cfg.model.gradient_checkpointing, run_name=run_dir.name,
        resume=not cfg.force_retrain,
    )  # fmt: skip
    if cfg.dpo_round:
        model = load_dpo_policy(cfg.model, cfg.dpo_path, dropout=cfg.train_with_dropout)
        tokenized = tokenize_dataset(train_ds, tokenizer, preference=True, max_len=cfg.max_len)
        train_dpo(model, tokenizer, tokenized, train_cfg, beta=cfg.dpo_beta, loss_type=cfg.dpo_loss_type,
                  dropped_for_length=len(train_ds) - len(tokenized))  # fmt: skip
        return model
    model = load_model(cfg.model, dropout=cfg.train_with_dropout, full_finetune=cfg.lora_rank == 0)
    model = add_lora(model, cfg.lora_rank, cfg.model.lora_target_modules)
    train_sft(model, tokenizer, tokenize_dataset(train_ds, tokenizer, max_len=cfg.max_len), train_cfg)
    return model


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
