"""One run of experiments.main as a value: every flag validated and resolved once, before any file.

`RunConfig.from_flags` turns the command line into a frozen config: defaults come from the model
and dataset registries (their entries travel with the config, so no later layer looks a name up
again), the method name is parsed once, and the weak run the labels come from is read. The run
dir's name (`dirname`) and `experiment_config.json` (`to_json`) are written from it and nowhere
else; both are how finished runs are found again, so their keys and order never change
(tests/test_run_config.py pins them).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.common import (
    DPO_LOSS_TYPES,
    ConfigError,
    accumulation_steps,
    get_save_path,
    read_json,
    refuse_unsupported_dpo_launcher,
    validate_optimizer,
    validate_schedule,
)
from iterative_label_refinement.core.datasets import DatasetConfig, get_dataset_config
from iterative_label_refinement.core.label_sets import check_trains, current_labels_path, is_label_set
from iterative_label_refinement.core.layout import get_config_foldername
from iterative_label_refinement.core.methods import Method, parse_method
from iterative_label_refinement.core.models import ModelConfig, check_lora_targets, get_model_config, weights_id

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


@dataclass(frozen=True)
class RunConfig:
    # what is trained, on what
    dataset: DatasetConfig
    model: ModelConfig
    model_size: str  # the name the run was asked for (a registered name or a folder): it names the run dir
    method: Method | None
    seed: int
    data_seed: int
    n_docs: int
    n_test_docs: int
    half_data: int
    round_id: int
    train_with_all_data: bool
    saferpaca_mode: int | None
    # training
    epochs: float
    batch_size: int
    minibatch_size_per_device: int
    lr: float
    optim: str
    lr_schedule: str
    warmup_ratio: float
    lora_rank: int
    train_with_dropout: bool
    max_len: int
    save_frequency: float
    report_to: str
    do_dpo: bool
    dpo_path: str | None
    dpo_beta: float
    dpo_loss_type: str
    # where the labels come from
    weak_dir: Path | None
    labels_path: Path | None
    weak_config: dict[str, Any] | None
    weak_model_size: str | None
    # evaluation and label generation
    do_test: bool
    force_retrain: bool
    save_model: bool
    generate_weak_labels: bool
    inference_on_train: bool
    compute_weak_label_acc: bool
    compute_test_acc: bool
    num_samples: int
    label_temp: float
    eval_batch_size: int
    num_beams: int
    top_k: int
    top_p: float
    inference_backend: str
    gpu_usage: float
    eval_on: str
    # where the run dir lives
    results_folder: str | None
    sweep_subfolder: str

    @property
    def ds_name(self) -> str:
        return self.dataset.name

    @property
    def dpo_round(self) -> bool:
        """A DPO round trains the previous round's adapter on preferences; round 0 of DPO is SFT."""
        return self.do_dpo and self.round_id >= 1

    @classmethod
    def from_flags(cls, *, dry_run: bool = False, **flags: Any) -> RunConfig:
        """Validate and resolve experiments.main's flags. `dry_run` (--print_save_path) only names the
        run: the weak run dir may not exist yet when --weak_model_size names its model."""
        f = dict(flags)
        dataset = get_dataset_config(f["ds_name"])
        model = get_model_config(f["model_size"])
        method = parse_method(f["method"]) if f["method"] else None
        do_dpo = bool(f["do_dpo"] or (method and method.is_dpo))
        dpo_round = do_dpo and f["round_id"] >= 1
        round_id = f["round_id"]
        if f["half_data"] not in (0, 1, 2):
            raise ConfigError(f"half_data must be 0, 1 or 2, got {f['half_data']!r}")
        if not isinstance(round_id, int) or round_id < 0:
            raise ConfigError(f"round_id must be a non-negative integer, got {round_id!r}")
        from iterative_label_refinement.core.generation import BACKENDS, check_sampling

        if f["dpo_loss_type"] not in DPO_LOSS_TYPES:
            raise ConfigError(f"Unknown dpo_loss_type {f['dpo_loss_type']!r}. Valid: {list(DPO_LOSS_TYPES)}")
        check_sampling(f["top_k"], f["top_p"])
        if f["eval_on"] not in EVAL_SPLITS:
            raise ConfigError(f"Unknown eval_on {f['eval_on']!r}. Valid: {list(EVAL_SPLITS)}")
        if f["inference_backend"] not in BACKENDS:
            raise ConfigError(f"Unknown inference_backend {f['inference_backend']!r}. Valid: {list(BACKENDS)}")
        if dpo_round:
            if not f["dpo_path"]:
                raise ConfigError(f"DPO round {round_id} needs --dpo_path: the previous round's adapter dir")
            refuse_unsupported_dpo_launcher()  # before anything is written (train_dpo checks again when called alone)
        if round_id > 0 and not f["weak_labels_path"]:
            raise ConfigError(f"round_id={round_id} trains on refined labels: pass --weak_labels_path")
        lr = f["lr"] if f["lr"] is not None else (model.default_dpo_lr if dpo_round else model.default_lr)
        optim = (
            f["optim"] if f["optim"] is not None else (model.dpo_optimizer if dpo_round else model.default_optimizer)
        )
        validate_optimizer(optim)
        validate_schedule(f["lr_schedule"], lr, f["warmup_ratio"])
        max_len = f["max_len"] or dataset.max_len
        force_eval = f["force_eval"] if f["force_eval"] is not None else f["do_eval"]
        num_samples = DPO_NUM_SAMPLES if do_dpo and f["num_samples"] == 1 else f["num_samples"]
        if num_samples > 1 and f["label_temp"] <= 0:
            raise ConfigError(f"num_samples={num_samples} needs --label_temp > 0 (got {f['label_temp']})")
        minibatch = f["minibatch_size_per_device"] or model.minibatch_size_per_device
        eval_batch_size = f["eval_batch_size"] or model.eval_batch_size
        check_sizes(n_docs=f["n_docs"], n_test_docs=f["n_test_docs"], epochs=f["epochs"], batch_size=f["batch_size"],
                    max_len=max_len, minibatch_size_per_device=minibatch, eval_batch_size=eval_batch_size,
                    num_samples=num_samples)  # fmt: skip
        report_to = report_target(f["report_to"], f["use_wandb"])
        check_lora_rank(f["lora_rank"])
        # The half-data runs only propose labels: they skip the test set unless asked.
        do_test = force_eval if force_eval is not None else f["half_data"] == 0
        if f["inference_backend"] == "vllm":
            check_served_rank(f["lora_rank"], f["dpo_path"] if dpo_round else None)
            greedy = do_test or (f["generate_weak_labels"] and f["label_temp"] <= 0)  # these decode with num_beams
            if greedy and f["num_beams"] > 1:
                raise ConfigError(f"--num_beams={f['num_beams']}: beam search runs on the 'hf' backend only; with "
                                  "--inference_backend=vllm pass --num_beams=1 (greedy)")  # fmt: skip
        compute_weak_label_acc = f["compute_weak_label_acc"]
        if compute_weak_label_acc is None:
            compute_weak_label_acc = dataset.score_labels
        compute_test_acc = True if f["compute_test_acc"] is None else f["compute_test_acc"]
        weak_dir, labels_path, weak_config, weak_model_size = cls._weak_run(
            f["weak_labels_path"], method, round_id, f["weak_model_size"], dry_run
        )
        # Last: it reads the model's config (a dry run only names the run; a DPO round trains the adapter at --dpo_path).
        if f["lora_rank"] and not dpo_round and not dry_run:
            check_lora_targets(f["model_size"])
        return cls(
            dataset=dataset, model=model, model_size=f["model_size"], method=method, seed=f["seed"], data_seed=f["data_seed"],
            n_docs=f["n_docs"], n_test_docs=f["n_test_docs"], half_data=f["half_data"], round_id=round_id,
            train_with_all_data=f["train_with_all_data"], saferpaca_mode=f["saferpaca_mode"], epochs=f["epochs"],
            batch_size=f["batch_size"], minibatch_size_per_device=minibatch, lr=lr, optim=optim,
            lr_schedule=f["lr_schedule"], warmup_ratio=f["warmup_ratio"], lora_rank=f["lora_rank"],
            train_with_dropout=f["train_with_dropout"], max_len=max_len, save_frequency=f["save_frequency"],
            report_to=report_to, do_dpo=do_dpo, dpo_path=f["dpo_path"], dpo_beta=f["dpo_beta"],
            dpo_loss_type=f["dpo_loss_type"], weak_dir=weak_dir, labels_path=labels_path, weak_config=weak_config,
            weak_model_size=weak_model_size,
            do_test=do_test,
            force_retrain=f["force_retrain"], save_model=f["save_model"],
            generate_weak_labels=f["generate_weak_labels"], inference_on_train=f["inference_on_train"],
            compute_weak_label_acc=compute_weak_label_acc, compute_test_acc=compute_test_acc,
            num_samples=num_samples, label_temp=f["label_temp"], eval_batch_size=eval_batch_size,
            num_beams=f["num_beams"], top_k=f["top_k"], top_p=f["top_p"], inference_backend=f["inference_backend"],
            gpu_usage=f["gpu_usage"], eval_on=f["eval_on"], results_folder=f["results_folder"],
            sweep_subfolder=f["sweep_subfolder"],
        )  # fmt: skip

    @staticmethod
    def _weak_run(weak_labels_path, method, round_id, weak_model_size, dry_run):
        """(weak dir, label set, weak run's config, weak model) of a run on labels; all None for a
        ground-truth run. The weak model names the run, so a dry run must be told it when the dir is absent."""
        if not weak_labels_path:
            return None, None, None, None
        weak_dir, labels_path = label_set_path(weak_labels_path, method, round_id)
        if (weak_dir / "experiment_config.json").exists():
            weak_config = read_json(weak_dir / "experiment_config.json")
            if weak_model_size and weights_id(weak_model_size) != weights_id(weak_config["model_size"]):
                raise ConfigError(
                    f"--weak_model_size={weak_model_size} but {weak_dir} was trained with {weak_config['model_size']}"
                )
            return weak_dir, labels_path, weak_config, weak_config["model_size"]
        if not dry_run:
            raise ConfigError(f"weak_labels_path {weak_labels_path} is not a run dir (no experiment_config.json)")
        if not weak_model_size:
            raise ConfigError(f"{weak_dir} does not exist yet: pass --weak_model_size to print its run dir")
        return weak_dir, labels_path, None, weak_model_size

    def name_config(self) -> dict[str, Any]:
        """The keys the run dir is named by: always NAME_KEYS, the others only when they differ from a
        plain SFT run, so older run dirs keep their names as options were added."""
        config = {k: getattr(self, k) for k in NAME_KEYS}
        if self.method:
            config["weak_label_type"] = weak_label_type(self.method, self.round_id)
        if self.do_dpo:
            config.update(do_dpo=True, dpo_beta=self.dpo_beta, dpo_loss_type=self.dpo_loss_type)
        if self.train_with_all_data:
            config["train_with_all_data"] = True
        if self.saferpaca_mode:
            config["saferpaca_mode"] = self.saferpaca_mode
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
        from iterative_label_refinement.core.common import world_size
        from iterative_label_refinement.core.devices import default_dtype, mixed_precision

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
