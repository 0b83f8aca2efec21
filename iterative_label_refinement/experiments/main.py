"""One SFT (or DPO) training run, then test evaluation and label generation (SPEC §4).

    python -m iterative_label_refinement.experiments.main --ds_name=gsm8k --model_size=google/gemma-2b

Outputs in the run dir `<results_folder>/<sweep_subfolder>/<name>`: `experiment_config.json`,
`results_summary.json`, `test_results.jsonl`, `weak_labels` (a `datasets` label set), and the
LoRA adapter or model when kept. `--print_save_path` prints the run dir and does nothing else.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterative_label_refinement.core.common import (
    DPO_LOSS_TYPES,
    ConfigError,
    clean_stale_tmp,
    get_config_foldername,
    get_logger,
    get_save_path,
    read_json,
    refuse_unsupported_dpo_launcher,
    save_to_disk_atomic,
    seed_everything,
    validate_optimizer,
    validate_schedule,
    write_json,
    write_jsonl,
)
from iterative_label_refinement.core.datasets import DATASET_MAX_LEN, get_dataset_config, load_dataset
from iterative_label_refinement.core.label_sets import (
    LABEL_COLUMNS,
    PREFERENCE_COLUMNS,
    current_labels_path,
    first,
    is_label_set,
    load_label_set,
)
from iterative_label_refinement.core.models import get_model_config

if TYPE_CHECKING:
    from datasets import Dataset

logger = get_logger(__name__)

DPO_NUM_SAMPLES = 6


# ---------------------------------------------------------------------------------------------
# Pure helpers: names, label-set paths, filters
# ---------------------------------------------------------------------------------------------


def label_set_path(weak_labels_path: str | Path, method: str | None, round_id: int) -> tuple[Path, Path]:
    """(weak run dir, label set) for a run on labels (SPEC §4). A label set path is used as it is."""
    path = Path(weak_labels_path)
    if is_label_set(path):
        return path.parent, path
    return path, current_labels_path(path, method, round_id)


def weak_label_type(method: str, round_id: int) -> str:
    if round_id == 0:
        return "corweak" if "cor" in method else "weak"
    return method


def run_config(**flags: Any) -> dict[str, Any]:
    """The config dict whose name is the run dir (SPEC §4: which keys, and when)."""
    keys = ("batch_size", "max_len", "ds_name", "n_docs", "n_test_docs", "model_size", "lr", "optim", "epochs",
            "seed", "train_with_dropout", "lr_schedule", "half_data", "round_id", "warmup_ratio", "lora_rank",
            "data_seed")  # fmt: skip
    config = {k: flags[k] for k in keys}
    if flags["method"]:
        config["weak_label_type"] = weak_label_type(flags["method"], flags["round_id"])
    if flags["do_dpo"]:
        config.update(do_dpo=True, dpo_beta=flags["dpo_beta"], dpo_loss_type=flags["dpo_loss_type"])
    if flags["train_with_all_data"]:
        config["train_with_all_data"] = True
    if flags["saferpaca_mode"]:
        config["saferpaca_mode"] = flags["saferpaca_mode"]
    if flags["save_frequency"]:
        config["save_frequency"] = flags["save_frequency"]
    if flags["weak_model_size"]:
        config["weak_model_size"] = flags["weak_model_size"]
    return config


def filter_rows(ds: Dataset, ds_name: str, method: str | None, round_id: int, saferpaca_mode: int | None,
                preference: bool) -> Dataset:  # fmt: skip
    """SPEC §4 filters: saferpaca mode, correct-only demonstrations, oracle-correct DPO pairs, `####`."""
    n = len(ds)
    if saferpaca_mode:
        if saferpaca_mode not in (1, 2):
            raise ConfigError(f"saferpaca_mode must be 1 (general) or 2 (safety), got {saferpaca_mode!r}")
        if "category" in ds.column_names:
            keep = "general" if saferpaca_mode == 1 else "safety"
            ds = ds.filter(lambda r: r["category"] == keep)
    if method and preference and "oradpo" in method:
        ds = ds.filter(lambda r: first(r["acc"]) == 1)
    if method and not preference and "cor" in method and round_id == 0 and "acc" in ds.column_names:
        ds = ds.filter(lambda r: first(r["acc"]) == 1)
    if ds_name == "gsm8k":
        column = "chosen" if preference else "answer"
        ds = ds.filter(lambda r: "####" in first(r[column]))
    if len(ds) < n:
        logger.info("Filters kept %d of %d rows", len(ds), n)
    return ds


def model_dir(run_dir: Path, dpo_round: bool) -> Path:
    return run_dir / "train_adapter" if dpo_round else run_dir


def has_saved_model(path: Path) -> bool:
    return (
        (path / "adapter_config.json").exists()
        or (path / "model.safetensors").exists()
        or any(path.glob("model-*.safetensors"))
    )


def delete_saved_model(path: Path) -> None:
    """Remove model weights but keep the run's records (config, results, labels)."""
    for pattern in ("adapter_model.*", "adapter_config.json", "model*.safetensors", "model.safetensors.index.json"):
        for p in path.glob(pattern):
            p.unlink()
    if path.name == "train_adapter":
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class RunData:
    train: Dataset  # rows to train on (SFT: question/answer; DPO: question/chosen/rejected)
    test: Dataset  # task test rows
    label_targets: Dataset | None  # prompts to generate labels for, with ground-truth `answer`


def main(
    seed: int = 0,
    data_seed: int = 0,
    epochs: float = 2,
    batch_size: int = 32,
    ds_name: str = "gsm8k",
    n_docs: int = 20000,
    n_test_docs: int = 10000,
    model_size: str = "google/gemma-2b",
    lr: float | None = None,
    optim: str | None = None,
    force_retrain: bool = False,
    max_len: int | None = None,
    train_with_dropout: bool = False,
    minibatch_size_per_device: int | None = None,
    results_folder: str | None = None,
    lr_schedule: str = "cosine_warmup",
    method: str | None = None,
    weak_labels_path: str | None = None,
    sweep_subfolder: str = "default",
    num_samples: int = 1,
    use_wandb: bool = False,
    save_frequency: float = 0,
    half_data: int = 0,
    round_id: int = 0,
    save_model: bool = False,
    generate_weak_labels: bool = True,
    label_temp: float = 0.0,
    inference_on_train: bool = False,
    warmup_ratio: float = 0.05,
    force_eval: bool | None = None,
    lora_rank: int = 64,
    gpu_usage: float = 0.9,
    train_with_all_data: bool = False,
    compute_weak_label_acc: bool | None = None,
    compute_test_acc: bool | None = None,
    do_dpo: bool = False,
    dpo_path: str | None = None,
    dpo_beta: float = 0.1,
    dpo_loss_type: str = "sigmoid",
    saferpaca_mode: int | None = None,
    weak_model_size: str | None = None,
    eval_batch_size: int | None = None,
    num_beams: int = 4,
    top_k: int = 0,
    top_p: float = 1.0,
    inference_backend: str = "hf",
    do_eval: bool | None = None,
    print_save_path: bool = False,
) -> dict[str, Any] | str:
    """Train, evaluate on test, and generate labels; see SPEC §4 for every flag.

    Extensions over the reference: `minibatch_size_per_device` (default: the model's registered
    value) may exceed 1; `eval_batch_size` (default: the model's), `num_beams` (the reference's 4-beam
    search for test evaluation and temperature-0 labels; 1 is greedy) and
    `inference_backend` (`hf` or `vllm`) control generation; `do_eval` is an alias of `force_eval`;
    `weak_model_size` names the weak model when its run dir cannot be read (dry runs); `top_k` and
    `top_p` truncate label sampling (off by default: samples come from the whole distribution).
    """
    # ----- validate and resolve every flag before anything touches the disk -----
    ds_cfg = get_dataset_config(ds_name)
    model_cfg = get_model_config(model_size)
    method = method or None
    do_dpo = bool(do_dpo or (method and "dpo" in method))
    dpo_round = do_dpo and round_id >= 1
    if half_data not in (0, 1, 2):
        raise ConfigError(f"half_data must be 0, 1 or 2, got {half_data!r}")
    if not isinstance(round_id, int) or round_id < 0:
        raise ConfigError(f"round_id must be a non-negative integer, got {round_id!r}")
    from iterative_label_refinement.core.generation import BACKENDS, check_sampling

    if dpo_loss_type not in DPO_LOSS_TYPES:
        raise ConfigError(f"Unknown dpo_loss_type {dpo_loss_type!r}. Valid: {list(DPO_LOSS_TYPES)}")
    check_sampling(top_k, top_p)
    if inference_backend not in BACKENDS:
        raise ConfigError(f"Unknown inference_backend {inference_backend!r}. Valid: {list(BACKENDS)}")
    if dpo_round and not dpo_path:
        raise ConfigError(f"DPO round {round_id} needs --dpo_path: the previous round's adapter dir")
    if dpo_round:
        refuse_unsupported_dpo_launcher()
    if round_id > 0 and not weak_labels_path:
        raise ConfigError(f"round_id={round_id} trains on refined labels: pass --weak_labels_path")
    if lr is None:
        lr = model_cfg.default_dpo_lr if dpo_round else model_cfg.default_lr
    if optim is None:
        optim = model_cfg.dpo_optimizer if dpo_round else model_cfg.default_optimizer
    validate_optimizer(optim)
    validate_schedule(lr_schedule)
    max_len = max_len or DATASET_MAX_LEN[ds_name]
    if force_eval is None:
        force_eval = do_eval
    if do_dpo and num_samples == 1:
        num_samples = DPO_NUM_SAMPLES
    if num_samples > 1 and label_temp <= 0:
        raise ConfigError(f"num_samples={num_samples} needs --label_temp > 0 (got {label_temp})")
    minibatch_size_per_device = minibatch_size_per_device or model_cfg.minibatch_size_per_device
    eval_batch_size = eval_batch_size or model_cfg.eval_batch_size
    _check_sizes(n_docs=n_docs, n_test_docs=n_test_docs, epochs=epochs, batch_size=batch_size, max_len=max_len,
                 minibatch_size_per_device=minibatch_size_per_device, eval_batch_size=eval_batch_size,
                 num_samples=num_samples)  # fmt: skip
    if compute_weak_label_acc is None:
        compute_weak_label_acc = ds_name != "saferpaca"
    if compute_test_acc is None:
        compute_test_acc = True

    weak_dir = labels_path = None
    weak_config = None
    if weak_labels_path:
        weak_dir, labels_path = label_set_path(weak_labels_path, method, round_id)
        if (weak_dir / "experiment_config.json").exists():
            weak_config = read_json(weak_dir / "experiment_config.json")
            if weak_model_size and weak_model_size != weak_config["model_size"]:
                raise ConfigError(
                    f"--weak_model_size={weak_model_size} but {weak_dir} was trained with {weak_config['model_size']}"
                )
            weak_model_size = weak_config["model_size"]
        elif not print_save_path:
            raise ConfigError(f"weak_labels_path {weak_labels_path} is not a run dir (no experiment_config.json)")
        elif not weak_model_size:
            raise ConfigError(f"{weak_dir} does not exist yet: pass --weak_model_size to print its run dir")
    else:
        weak_model_size = None

    flags = dict(locals())
    config = run_config(**flags)
    run_dir = get_save_path(results_folder) / sweep_subfolder / get_config_foldername(config)
    if print_save_path:
        print(run_dir)
        return str(run_dir)

    # ----- check inputs on disk and load data (errors here still leave nothing behind) -----
    if dpo_round and not Path(dpo_path, "adapter_config.json").exists():
        raise ConfigError(f"--dpo_path={dpo_path} holds no LoRA adapter (adapter_config.json)")
    data = _load_run_data(ds_name, seed, n_docs, n_test_docs, half_data, train_with_all_data, labels_path,
                          method, round_id, saferpaca_mode, dpo_round)  # fmt: skip
    if ds_name == "bird":  # scoring executes SQL on every database: check them before hours of training
        from iterative_label_refinement.core.datasets import bird_root
        from iterative_label_refinement.metrics.eval_bird import check_bird_databases

        splits = [data.test] + ([data.label_targets] if data.label_targets is not None else [])
        check_bird_databases([name for ds in splits for name in ds["db_name"]], bird_root())
    do_test = force_eval if force_eval is not None else half_data == 0
    outputs = [run_dir / "results_summary.json"] if do_test else []
    if generate_weak_labels and data.label_targets is not None:
        outputs.append(run_dir / "weak_labels")
    if all(p.exists() for p in outputs) and not force_retrain and (outputs or has_saved_model(run_dir)):
        logger.info("Run already done, nothing to do: %s", run_dir)
        print(run_dir)
        return {"save_path": str(run_dir), "skipped": True}

    from iterative_label_refinement.core.common import is_main_process, world_size

    if is_main_process():  # the other processes of a DDP run only train; rank 0 owns the run dir
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(run_dir)
    full_config = dict(config, method=method, num_samples=num_samples, label_temp=label_temp, max_len=max_len,
                       minibatch_size_per_device=minibatch_size_per_device, save_model=save_model,
                       weak_labels_path=str(labels_path) if labels_path else None, dpo_path=dpo_path,
                       num_beams=num_beams, top_k=top_k, top_p=top_p, eval_batch_size=eval_batch_size,
                       inference_backend=inference_backend,
                       do_dpo=do_dpo, world_size=world_size(), weak_model=weak_config)  # fmt: skip
    if is_main_process():
        write_json(run_dir / "experiment_config.json", full_config)
    seed_everything(seed)

    model, tokenizer = _train_or_load(
        model_size, run_dir, data.train, force_retrain, dpo_round, dpo_path, lora_rank, train_with_dropout,
        max_len, ds_cfg.name, seed, data_seed, lr, epochs, batch_size, minibatch_size_per_device, optim,
        lr_schedule, warmup_ratio, save_frequency, use_wandb, dpo_beta, dpo_loss_type,
    )  # fmt: skip
    if not is_main_process():
        return {"save_path": str(run_dir)}

    gen_model = model
    if inference_backend == "vllm":
        from iterative_label_refinement.core.generation import VLLMModel
        from iterative_label_refinement.core.models import resolve_model_path

        del model
        # The weights' folder, not the registry name: tiny and packaged models have no hub id vLLM could fetch.
        gen_model = VLLMModel(resolve_model_path(model_size), str(model_dir(run_dir, dpo_round)), lora_rank,
                              model_cfg.tensor_parallel_size, gpu_usage)  # fmt: skip
    gen = dict(max_new_tokens=max_len, batch_size=eval_batch_size, seed=seed, backend=inference_backend)
    summary: dict[str, Any] = {}
    from iterative_label_refinement.core.eval import evaluate_dataset, mean_and_stderr

    if do_test:
        records = evaluate_dataset(gen_model, tokenizer, data.test, ds_name, compute_acc=compute_test_acc,
                                   desc="test", num_beams=num_beams, **gen)  # fmt: skip
        write_jsonl(run_dir / "test_results.jsonl", records)
        if compute_test_acc:
            summary["accuracy"], summary["accuracy_stderr"] = mean_and_stderr([r["acc"] for r in records])
        summary["n_test"] = len(records)
        write_json(run_dir / "results_summary.json", summary)
    from datasets import Dataset

    if inference_on_train:
        train_rows = Dataset.from_dict({"question": data.train["question"], "answer": _gt_answers(data.train)})
        records = evaluate_dataset(gen_model, tokenizer, train_rows, ds_name, desc="train", **gen)
        write_jsonl(run_dir / "train_results.jsonl", records)
    if generate_weak_labels and data.label_targets is not None:
        records = evaluate_dataset(gen_model, tokenizer, data.label_targets, ds_name,
                                   compute_acc=compute_weak_label_acc, desc="labels", temperature=label_temp,
                                   num_samples=num_samples, num_beams=num_beams if label_temp <= 0 else 1,
                                   top_k=top_k, top_p=top_p, **gen)  # fmt: skip
        labels = Dataset.from_list(records)
        save_to_disk_atomic(labels, run_dir / "weak_labels")
        if compute_weak_label_acc:
            accs = [a for r in records for a in (r["acc"] if isinstance(r["acc"], list) else [r["acc"]])]
            summary["label_accuracy"] = mean_and_stderr(accs)[0]
            summary["n_labels"] = len(records)
            if do_test:
                write_json(run_dir / "results_summary.json", summary)
    if not (save_model or do_dpo):
        delete_saved_model(model_dir(run_dir, dpo_round))
    logger.info("Done: %s %s", run_dir, summary)
    print(run_dir)
    return {"save_path": str(run_dir), **summary}


def _gt_answers(ds: Dataset) -> list[str]:
    return list(ds["gt_answer"]) if "gt_answer" in ds.column_names else list(ds["answer"])


def _check_sizes(**sizes: float) -> None:
    """Positive sizes, and a batch that minibatches on every process divide (before any file is written)."""
    from iterative_label_refinement.core.common import accumulation_steps

    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"--{name} must be a positive number, got {value!r}")
    accumulation_steps(sizes["batch_size"], sizes["minibatch_size_per_device"])


def _load_run_data(ds_name, seed, n_docs, n_test_docs, half_data, train_with_all_data, labels_path,
                   method, round_id, saferpaca_mode, dpo_round) -> RunData:  # fmt: skip
    """SPEC §4 splits: train on half A (ground truth) or on the labels (all, or one half)."""
    from datasets import Dataset

    dd = load_dataset(ds_name, seed=seed, split_sizes={"train": n_docs, "test": n_test_docs})
    halves = dd["train"].train_test_split(test_size=0.5, seed=seed)
    extras = [c for c in get_dataset_config(ds_name).extra_columns if c in dd["train"].column_names]

    def as_targets(ds: Dataset) -> Dataset:
        """Prompts to label, with the ground truth as `answer` (label sets carry it as `gt_answer`)."""
        cols = {"question": list(ds["question"]), "answer": _gt_answers(ds)}
        for c in extras:
            if c in ds.column_names:
                cols[c] = list(ds[c])
        return Dataset.from_dict(cols)

    if labels_path is None:  # a ground-truth run: the weak supervisor
        train = dd["train"] if train_with_all_data else halves["train"]
        train = filter_rows(train, ds_name, None, round_id, saferpaca_mode, preference=False)
        return RunData(train=train, test=dd["test"], label_targets=as_targets(halves["test"]))

    labels = load_label_set(labels_path, PREFERENCE_COLUMNS if dpo_round else LABEL_COLUMNS)
    if dpo_round:
        train = filter_rows(labels, ds_name, method, round_id, saferpaca_mode, preference=True)
        # DPO samples again on the prompts of the ground-truth half the labels came from.
        return RunData(train=train, test=dd["test"], label_targets=as_targets(halves["test"]))
    if half_data:
        split = labels.train_test_split(test_size=0.5, seed=seed)
        train, other = (split["train"], split["test"]) if half_data == 1 else (split["test"], split["train"])
    else:
        train, other = labels, labels
    train = filter_rows(train, ds_name, method, round_id, saferpaca_mode, preference=False)
    return RunData(train=train, test=dd["test"], label_targets=as_targets(other))


def _train_or_load(model_size, run_dir, train_ds, force_retrain, dpo_round, dpo_path, lora_rank, train_with_dropout,
                   max_len, ds_name, seed, data_seed, lr, epochs, batch_size, minibatch, optim, lr_schedule,
                   warmup_ratio, save_frequency, use_wandb, dpo_beta, dpo_loss_type):  # fmt: skip
    """Load the saved model when it exists (unless forced), else train and save it."""
    from iterative_label_refinement.core.models import load_model, load_tokenizer
    from iterative_label_refinement.core.train import TrainConfig, add_lora, save_trained, train_sft

    tokenizer = load_tokenizer(model_size)
    saved = model_dir(run_dir, dpo_round)
    model_cfg = get_model_config(model_size)
    if has_saved_model(saved) and not force_retrain:
        logger.info("Model exists, skipping training: %s", saved)
        return load_trained(model_size, saved), tokenizer
    train_cfg = TrainConfig(
        output_dir=str(run_dir), lr=lr, epochs=epochs, batch_size=batch_size, minibatch_size_per_device=minibatch,
        optim=optim, lr_schedule=lr_schedule, warmup_ratio=warmup_ratio, save_frequency=save_frequency,
        seed=data_seed, use_wandb=use_wandb, gradient_checkpointing=model_cfg.gradient_checkpointing,
        run_name=run_dir.name,
    )  # fmt: skip
    from iterative_label_refinement.core.datasets import tokenize_dataset

    if dpo_round:
        from iterative_label_refinement.core.train import load_dpo_policy, train_dpo

        model = load_dpo_policy(model_size, dpo_path, dropout=train_with_dropout)
        tokenized = tokenize_dataset(train_ds, tokenizer, preference=True, max_len=max_len)
        train_dpo(model, tokenizer, tokenized, train_cfg, beta=dpo_beta, loss_type=dpo_loss_type)
    else:
        model = load_model(model_size, dropout=train_with_dropout, full_finetune=lora_rank == 0)
        model = add_lora(model, lora_rank, model_cfg.lora_target_modules)
        tokenized = tokenize_dataset(train_ds, tokenizer, max_len=max_len)
        train_sft(model, tokenizer, tokenized, train_cfg)
    save_trained(model, tokenizer, saved)
    return model, tokenizer


def load_trained(model_size: str, path: Path):
    """A saved run model: the base with its LoRA adapter, or a fully fine-tuned model dir."""
    from iterative_label_refinement.core.models import load_model

    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(model_size, gradient_checkpointing=False), str(path))
    return load_model(str(path), gradient_checkpointing=False)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
