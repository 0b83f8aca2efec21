"""One run of experiments.main as a value: every flag declared once, validated and resolved once, before any file.

`MainFlags` declares experiments.main's flags (type, valid values, default, help); the CLI is made
from it (`core.cli.expand_flags`). `RunConfig.resolve` turns them into a frozen config, a
`MainFlags` with every None default filled in: defaults come from the model
and dataset registries (their entries travel with the config, so no later layer looks a name up
again), the method name is parsed once, and the weak run the labels come from is read. The run
dir's name (`dirname`) and `experiment_config.json` (`to_json`) are written from it and nowhere
else; both are how finished runs are found again, so their keys and order never change
(tests/test_run_config.py pins them).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

from iterative_label_refinement.core.cli import (
    FRACTION,
    INSIDE,
    NON_NEGATIVE,
    POSITIVE,
    REPORT_TO,
    Valid,
    alias,
    flag,
    merge_aliases,
)
from iterative_label_refinement.core.datasets import DatasetConfig, get_dataset_config
from iterative_label_refinement.core.distributed import accumulation_steps, refuse_unsupported_dpo_launcher
from iterative_label_refinement.core.files import read_json
from iterative_label_refinement.core.generation import BACKENDS, check_sampling
from iterative_label_refinement.core.label_sets import check_trains, current_labels_path, is_label_set
from iterative_label_refinement.core.layout import get_config_foldername
from iterative_label_refinement.core.methods import Method, parse_method
from iterative_label_refinement.core.models import ModelConfig, check_lora_targets, get_model_config, weights_id
from iterative_label_refinement.core.settings import ConfigError, get_save_path
from iterative_label_refinement.core.train_options import (
    DPO_LOSS_TYPES,
    LR_SCHEDULES,
    OPTIMIZERS,
    validate_optimizer,
    validate_schedule,
)

# DPO compares samples of the same prompt: a run that feeds DPO draws this many per prompt.
DPO_NUM_SAMPLES = 6
# What a run scores: the task's test split, or held-out training prompts (for tuning settings).
EVAL_SPLITS = ("test", "heldout")

# The keys of the run-dir name, in the order the original config dict listed them.
NAME_KEYS = ("batch_size", "max_len", "ds_name", "n_docs", "n_test_docs", "model_size", "lr", "optim", "epochs",
             "seed", "train_with_dropout", "lr_schedule", "half_data", "round_id", "warmup_ratio", "lora_rank",
             "data_seed")  # fmt: skip


def label_set_path(weak_labels_path: str | Path, method: Method | str | None, round_id: int) -> tuple[Path, Path]:
    """(weak run dir, label set) for a run on labels. A label set path is used as it is."""
    path = Path(weak_labels_path)
    if is_label_set(path):
        check_trains(path, method, round_id)
        return path.parent, path
    return path, current_labels_path(path, method, round_id)


def weak_label_type(method: Method, round_id: int) -> str:
    """Round 0 trains on the weak model's demonstrations (all, or the correct ones); later rounds on the method's."""
    if round_id == 0:
        return "corweak" if method.correct_start else "weak"
    return str(method)


def check_sizes(**sizes: float) -> None:
    """Positive sizes, and a batch that minibatches on every process divide (before any file is written)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"--{name} must be a positive number, got {value!r}")
    accumulation_steps(sizes["batch_size"], sizes["minibatch_size_per_device"])


def report_target(report_to: str, use_wandb: bool) -> str:
    """Where the Trainer sends its logs: --report_to, or wandb for --use_wandb=True (the reference's
    flag). wandb is an optional extra: refused here when absent, not by the Trainer once the model is loaded."""
    if use_wandb and report_to not in ("tensorboard", "wandb"):  # tensorboard: the default, not a choice
        raise ConfigError(f"--use_wandb=True is --report_to=wandb; it contradicts --report_to={report_to}")
    target = "wandb" if use_wandb else report_to
    if target == "wandb" and importlib.util.find_spec("wandb") is None:
        flag = "--use_wandb=True" if use_wandb else "--report_to=wandb"
        raise ConfigError(f"{flag} needs the wandb package, which is not installed: pip install wandb, "
                          "or --report_to=tensorboard (the default) or none")  # fmt: skip
    return target


def check_lora_rank(lora_rank: int) -> None:
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
        raise ConfigError(f"--lora_rank must be 0 (full fine-tune) or a positive integer, got {lora_rank!r}")


def check_served_rank(lora_rank: int, dpo_path: str | None) -> None:
    """The LoRA rank vLLM will serve is one it can: this run's, or in a DPO round the one of the adapter it
    continues (its absence is refused later, with the other DPO inputs)."""
    from iterative_label_refinement.core.generation import adapter_rank, check_vllm_lora_rank

    if dpo_path is None:
        check_vllm_lora_rank(lora_rank, f"--lora_rank={lora_rank} with --inference_backend=vllm")
    elif Path(dpo_path, "adapter_config.json").exists():
        rank = adapter_rank(dpo_path)
        check_vllm_lora_rank(rank, f"--dpo_path={dpo_path} (a rank-{rank} adapter) with --inference_backend=vllm")


def _check_choices(f: MainFlags, dataset: DatasetConfig, dpo_round: bool) -> None:
    """The flags' values that --help's types do not cover, or that a call from Python passes unchecked."""
    if f.half_data not in (0, 1, 2):
        raise ConfigError(f"half_data must be 0, 1 or 2, got {f.half_data!r}")
    if not isinstance(f.round_id, int) or f.round_id < 0:
        raise ConfigError(f"round_id must be a non-negative integer, got {f.round_id!r}")
    if f.dpo_loss_type not in DPO_LOSS_TYPES:
        raise ConfigError(f"Unknown dpo_loss_type {f.dpo_loss_type!r}. Valid: {list(DPO_LOSS_TYPES)}")
    check_sampling(f.top_k, f.top_p)
    if f.eval_on not in EVAL_SPLITS:
        raise ConfigError(f"Unknown eval_on {f.eval_on!r}. Valid: {list(EVAL_SPLITS)}")
    if f.inference_backend not in BACKENDS:
        raise ConfigError(f"Unknown inference_backend {f.inference_backend!r}. Valid: {list(BACKENDS)}")
    dataset.check_mode(f.mode, "--mode")
    if dpo_round:
        if not f.dpo_path:
            raise ConfigError(f"DPO round {f.round_id} needs --dpo_path: the previous round's adapter dir")
        refuse_unsupported_dpo_launcher()  # before anything is written (train_dpo checks again when called alone)
    if f.round_id > 0 and not f.weak_labels_path:
        raise ConfigError(f"round_id={f.round_id} trains on refined labels: pass --weak_labels_path")


def check_vllm(f: MainFlags, dpo_round: bool, do_test: bool) -> None:
    """What a vLLM engine can serve: the run's LoRA rank, and greedy decoding where main decodes with beams."""
    check_served_rank(f.lora_rank, f.dpo_path if dpo_round else None)
    greedy = do_test or (f.generate_weak_labels and f.label_temp <= 0)  # these decode with num_beams
    if greedy and f.num_beams > 1:
        raise ConfigError(f"--num_beams={f.num_beams}: beam search runs on the 'hf' backend only; with "
                          "--inference_backend=vllm pass --num_beams=1 (greedy)")  # fmt: skip


@dataclass(frozen=True)
class MainFlags:
    """experiments.main's flags, each declared once: type and valid values, the reference's default,
    and one line of help (why the default, where it has a reason). None: resolved from the model's or
    the task's registry entry (`RunConfig.resolve`)."""

    seed: Annotated[int, NON_NEGATIVE] = flag(0, "seed of the data split, the half split and generation")
    data_seed: Annotated[int, NON_NEGATIVE] = flag(0, "seed of the training data order and of training")
    epochs: Annotated[float, POSITIVE] = flag(2, "training epochs (the paper's 2)")
    batch_size: Annotated[int, POSITIVE] = flag(32, "examples per optimizer step, over all processes (the paper's 32)")
    ds_name: str = flag("gsm8k", "the task: a registered dataset (core.datasets)")
    n_docs: Annotated[int, POSITIVE] = flag(20000, "training-split rows a run uses (the paper's 20000)")
    n_test_docs: Annotated[int, POSITIVE] = flag(10000, "test rows scored (all of a task's test split, at most)")
    model_size: str = flag("google/gemma-2b", "the model: a registered name or a model folder")
    lr: Annotated[float | None, POSITIVE] = flag(None, "learning rate (None: the model's SFT or DPO default)")
    optim: Annotated[str | None, Valid(choices=tuple(OPTIMIZERS))] = flag(
        None, "optimizer (None: the model's SFT or DPO default)")  # fmt: skip
    force_retrain: bool = flag(False, "train again though a saved model or a finished run exists")
    max_len: Annotated[int | None, POSITIVE] = flag(None, "max tokens of an answer (None: the task's)")
    train_with_dropout: bool = flag(False, "keep the model's dropout on while training")
    minibatch_size_per_device: Annotated[int | None, POSITIVE] = flag(
        None, "examples per forward pass on one device (None: the model's; the reference had 1)")  # fmt: skip
    results_folder: str | None = flag(None, "where run dirs go (None: $ILR_SAVE_PATH or ./results)")
    lr_schedule: Annotated[str, Valid(choices=tuple(LR_SCHEDULES))] = flag(
        "cosine_warmup", "learning-rate schedule (the paper's cosine with warmup)")  # fmt: skip
    method: str | None = flag(None, "the refinement method the labels come from, e.g. ilr0.15 (None: ground truth)")
    weak_labels_path: str | None = flag(None, "the weak run dir (or a label set) to train on (None: ground truth)")
    sweep_subfolder: Annotated[str, INSIDE] = flag("default", "sub-folder of the results folder for this sweep")
    num_samples: Annotated[int, POSITIVE] = flag(1, f"labels sampled per prompt (a DPO run draws {DPO_NUM_SAMPLES})")
    use_wandb: bool = flag(False, "the reference's flag: --report_to=wandb")
    report_to: Annotated[str, REPORT_TO] = flag("tensorboard", "where training logs also go (train_log.jsonl always)")
    save_frequency: Annotated[float, Valid(ge=0, lt=1)] = flag(
        0, "keep a checkpoint every this fraction of training (0: only resumable ones)")  # fmt: skip
    half_data: Annotated[int, Valid(choices=(0, 1, 2))] = flag(
        0, "train on one half of the labels and label the other (1 or 2; 0: all of them)")  # fmt: skip
    round_id: Annotated[int, NON_NEGATIVE] = flag(0, "the refinement round the labels come from")
    save_model: bool = flag(False, "keep the trained model (a DPO run always keeps its adapter)")
    generate_weak_labels: bool = flag(True, "label the prompts of the other half (the next step's input)")
    label_temp: Annotated[float, NON_NEGATIVE] = flag(0.0, "label sampling temperature (0: beam search)")
    inference_on_train: bool = flag(False, "also answer the training prompts (train_results.jsonl)")
    warmup_ratio: Annotated[float, Valid(ge=0, lt=1)] = flag(0.05, "share of steps warming up (the paper's 0.05)")
    force_eval: bool | None = flag(None, "score the test set (None: unless the run trains on half the data)")
    lora_rank: Annotated[int, NON_NEGATIVE] = flag(64, "LoRA rank, alpha 2r (the paper's 64; 0: full fine-tune)")
    gpu_usage: Annotated[float, FRACTION] = flag(0.9, "at most this share of GPU memory for vLLM")
    train_with_all_data: bool = flag(False, "a ground-truth run trains on all its rows, not half A")
    compute_weak_label_acc: bool | None = flag(None, "score the labels (None: the task's default)")
    compute_test_acc: bool | None = flag(None, "score the test answers (None: yes)")
    do_dpo: bool = flag(False, "a DPO run (implied by a dpo method; round 0 is SFT that samples the pairs)")
    dpo_path: str | None = flag(None, "the previous round's adapter a DPO round continues")
    dpo_beta: Annotated[float, POSITIVE] = flag(0.1, "DPO's beta (the paper's 0.1)")
    dpo_loss_type: Annotated[str, Valid(choices=DPO_LOSS_TYPES)] = flag("sigmoid", "DPO's loss (the paper's sigmoid)")
    mode: Annotated[int | None, POSITIVE] = flag(None, "the task's subset to train on (its registered modes)")
    saferpaca_mode: Annotated[int | None, POSITIVE] = alias("mode", "the reference's name of --mode")
    weak_model_size: str | None = flag(None, "the weak run's model, when its run dir cannot be read (dry runs)")
    eval_batch_size: Annotated[int | None, POSITIVE] = flag(None, "prompts per generation batch (None: the model's)")
    num_beams: Annotated[int, POSITIVE] = flag(4, "beams of test answers and temperature-0 labels (the reference's 4)")
    top_k: Annotated[int, NON_NEGATIVE] = flag(0, "label sampling keeps the k likeliest tokens (0: off)")
    top_p: Annotated[float, FRACTION] = flag(1.0, "label sampling keeps this probability mass (1: off)")
    inference_backend: Annotated[str, Valid(choices=BACKENDS)] = flag("hf", "what generates: hf, or a vLLM engine")
    do_eval: bool | None = alias("force_eval", "another name of --force_eval")
    eval_on: Annotated[str, Valid(choices=EVAL_SPLITS)] = flag(
        "test", "score the test split, or heldout training prompts (for tuning settings)")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class RunConfig(MainFlags):
    """experiments.main's flags resolved: every None default filled in, aliases merged, and the
    registry entries, the parsed method and the weak run the labels come from."""

    method: Method | None = None  # the --method flag, parsed
    dataset: DatasetConfig
    model: ModelConfig
    weak_dir: Path | None  # the weak run the labels come from, its label set and its record
    labels_path: Path | None
    weak_config: dict[str, Any] | None
    do_test: bool

    @property
    def dpo_round(self) -> bool:
        """A DPO round trains the previous round's adapter on preferences; round 0 of DPO is SFT."""
        return self.do_dpo and self.round_id >= 1

    @classmethod
    def from_flags(cls, *, dry_run: bool = False, **flags: Any) -> RunConfig:
        """`resolve` of experiments.main's flags given by name."""
        return cls.resolve(MainFlags(**flags), dry_run)

    @classmethod
    def resolve(cls, flags: MainFlags, dry_run: bool = False) -> RunConfig:
        """Validate and resolve experiments.main's flags. `dry_run` (--print_save_path) only names the
        run: the weak run dir may not exist yet when --weak_model_size names its model."""
        f = merge_aliases(flags)
        dataset, model = get_dataset_config(f.ds_name), get_model_config(f.model_size)
        method = parse_method(f.method) if f.method else None
        do_dpo = bool(f.do_dpo or (method and method.is_dpo))
        dpo_round = do_dpo and f.round_id >= 1
        _check_choices(f, dataset, dpo_round)
        lr = f.lr if f.lr is not None else (model.default_dpo_lr if dpo_round else model.default_lr)
        optim = f.optim if f.optim is not None else (model.dpo_optimizer if dpo_round else model.default_optimizer)
        validate_optimizer(optim)
        validate_schedule(f.lr_schedule, lr, f.warmup_ratio)
        max_len = f.max_len or dataset.max_len
        num_samples = DPO_NUM_SAMPLES if do_dpo and f.num_samples == 1 else f.num_samples
        if num_samples > 1 and f.label_temp <= 0:
            raise ConfigError(f"num_samples={num_samples} needs --label_temp > 0 (got {f.label_temp})")
        minibatch = f.minibatch_size_per_device or model.minibatch_size_per_device
        eval_batch_size = f.eval_batch_size or model.eval_batch_size
        check_sizes(n_docs=f.n_docs, n_test_docs=f.n_test_docs, epochs=f.epochs, batch_size=f.batch_size,
                    max_len=max_len, minibatch_size_per_device=minibatch, eval_batch_size=eval_batch_size,
                    num_samples=num_samples)  # fmt: skip
        report_to = report_target(f.report_to, f.use_wandb)
        check_lora_rank(f.lora_rank)
        # The half-data runs only propose labels: they skip the test set unless asked.
        do_test = f.force_eval if f.force_eval is not None else f.half_data == 0
        if f.inference_backend == "vllm":
            check_vllm(f, dpo_round, do_test)
        weak = cls._weak_run(f.weak_labels_path, method, f.round_id, f.weak_model_size, dry_run)
        # Last: it reads the model's config (a dry run only names the run; a DPO round trains the adapter at --dpo_path).
        if f.lora_rank and not dpo_round and not dry_run:
            check_lora_targets(model)
        resolved = dict(ds_name=dataset.name, dataset=dataset, model=model, method=method, do_dpo=do_dpo, lr=lr,
                        optim=optim, max_len=max_len, num_samples=num_samples, minibatch_size_per_device=minibatch,
                        eval_batch_size=eval_batch_size, report_to=report_to, do_test=do_test,
                        **weak,
                        compute_weak_label_acc=dataset.score_labels if f.compute_weak_label_acc is None
                        else f.compute_weak_label_acc,
                        compute_test_acc=True if f.compute_test_acc is None else f.compute_test_acc)  # fmt: skip
        return cls(**{k.name: getattr(f, k.name) for k in fields(MainFlags)} | resolved)

    @staticmethod
    def _weak_run(weak_labels_path, method, round_id, weak_model_size, dry_run) -> dict[str, Any]:
        """The weak dir, label set, weak run's config and weak model of a run on labels, as the config's
        fields; all None for a ground-truth run. The weak model names the run, so a dry run must be told
        it when the dir is absent."""
        if not weak_labels_path:
            return dict(weak_dir=None, labels_path=None, weak_config=None, weak_model_size=None)
        weak_dir, labels_path = label_set_path(weak_labels_path, method, round_id)
        if (weak_dir / "experiment_config.json").exists():
            weak_config = read_json(weak_dir / "experiment_config.json")
            if weak_model_size and weights_id(weak_model_size) != weights_id(weak_config["model_size"]):
                raise ConfigError(
                    f"--weak_model_size={weak_model_size} but {weak_dir} was trained with {weak_config['model_size']}"
                )
            model_size = weak_config["model_size"]
            return dict(weak_dir=weak_dir, labels_path=labels_path, weak_config=weak_config, weak_model_size=model_size)
        if not dry_run:
            raise ConfigError(f"weak_labels_path {weak_labels_path} is not a run dir (no experiment_config.json)")
        if not weak_model_size:
            raise ConfigError(f"{weak_dir} does not exist yet: pass --weak_model_size to print its run dir")
        return dict(weak_dir=weak_dir, labels_path=labels_path, weak_config=None, weak_model_size=weak_model_size)

    def name_config(self) -> dict[str, Any]:
        """The keys the run dir is named by: always NAME_KEYS, the others only when they differ from a
        plain SFT run, so older run dirs keep their names as options were added."""
        config = {k: getattr(self, k) for k in NAME_KEYS}
        if self.method:
            config["weak_label_type"] = weak_label_type(self.method, self.round_id)
            # Round 0's labels are `weak` for every method: a half run that labels every prompt (its
            # kind compares both half models) is another run than one labelling the other half.
            if self.half_data and self.method.spec.half_runs_label_all:
                config["half_labels_all"] = True
        if self.do_dpo:
            config.update(do_dpo=True, dpo_beta=self.dpo_beta, dpo_loss_type=self.dpo_loss_type)
        if self.train_with_all_data:
            config["train_with_all_data"] = True
        if self.mode:  # under the reference's name, as the run dirs before --mode were named
            config["saferpaca_mode"] = self.mode
        if self.save_frequency:
            config["save_frequency"] = self.save_frequency
        if self.weak_model_size:
            config["weak_model_size"] = self.weak_model_size
        if self.eval_on != "test":
            config["eval_on"] = self.eval_on
        return config

    def dirname(self) -> str:
        return get_config_foldername(self.name_config())

    def run_dir(self) -> Path:
        return get_save_path(self.results_folder) / self.sweep_subfolder / self.dirname()

    def to_json(self) -> dict[str, Any]:
        """experiment_config.json: the name's keys, then what else decides the run's outputs. The
        keys after `weak_model` were added later (older records lack them): how the model was
        trained, as experiments.main and core.train do it on this machine. A DPO round trains the
        adapter it continues (`dpo_path`), so its LoRA is read from there; otherwise core.train's
        `add_lora` builds r=lora_rank, alpha=2r (none for lora_rank=0, a full fine-tune)."""
        from iterative_label_refinement.core.devices import default_dtype, mixed_precision
        from iterative_label_refinement.core.distributed import world_size

        lora: dict[str, Any] = {}
        if self.dpo_round:
            adapter = Path(self.dpo_path, "adapter_config.json")
            lora = read_json(adapter) if adapter.exists() else {}
        elif self.lora_rank:
            lora = {"target_modules": self.model.lora_target_modules, "lora_alpha": 2 * self.lora_rank}
        full_finetune = self.lora_rank == 0 and not self.dpo_round  # see _train_or_load in experiments.main
        return dict(self.name_config(), method=str(self.method) if self.method else None, num_samples=self.num_samples,
                    label_temp=self.label_temp, max_len=self.max_len,
                    minibatch_size_per_device=self.minibatch_size_per_device, save_model=self.save_model,
                    weak_labels_path=str(self.labels_path) if self.labels_path else None, dpo_path=self.dpo_path,
                    num_beams=self.num_beams, top_k=self.top_k, top_p=self.top_p, eval_batch_size=self.eval_batch_size,
                    inference_backend=self.inference_backend, do_dpo=self.do_dpo, world_size=world_size(),
                    weak_model=self.weak_config, lora_target_modules=lora.get("target_modules"),
                    lora_alpha=lora.get("lora_alpha"), dtype=str(default_dtype(full_finetune)).removeprefix("torch."),
                    mixed_precision=mixed_precision(),
                    gradient_checkpointing=self.model.gradient_checkpointing)  # fmt: skip
