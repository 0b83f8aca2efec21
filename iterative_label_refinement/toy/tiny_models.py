"""Offline tiny models: a character tokenizer, a small Llama, and a short pretraining on arithmetic.

Built once into the cache directory with `save_pretrained`; from then on they load through the
same `from_pretrained` code as real models (see `core.models.load_model`). LoRA needs a pretrained
base to learn anything (a randomly initialised base did not learn), so the strong base is pretrained on symbolic worked solutions
(`67-29+40=?\n67-29=38\n38+40=78\n#### 78\n`), with the loss masked on the `...=?` header, packed
into short windows (arithmetic emerges quickly there); a second, shorter phase on longer windows
wraps the same documents in the prompt template, so the model can read a problem at the positions
where the task's prompts put it. The task's worded questions (`67 minus 29 plus 40`) are never
seen in pretraining: fine-tuning has to teach them.
"""

from __future__ import annotations

import functools
import hashlib
import random
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from iterative_label_refinement.core.files import save_model_dir
from iterative_label_refinement.core.models import ModelConfig, register_model
from iterative_label_refinement.core.prompts import format_prompt
from iterative_label_refinement.core.settings import ConfigError, get_logger
from iterative_label_refinement.toy.arithmetic import sample_problem

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)

SPECIALS = ["<unk>", "<s>", "</s>"]
CHARS = list(string.printable[:95]) + ["\n"]  # digits, letters, punctuation, space, newline


def make_char_tokenizer():
    """One token per printable character, built offline with the `tokenizers` library."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        clean_up_tokenization_spaces=False,
    )


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    max_position_embeddings: int = 512
    init_seed: int = 0
    pretrain_steps: int = 0  # short-window pretraining on worked solutions
    pretrain_window: int = 48
    pretrain_batch: int = 48
    pretrain_lr: float = 3e-3
    pretrain_stop: int = 0  # stop the first phase after this many steps (an earlier checkpoint of the run)
    prompt_steps: int = 0  # then longer windows, half the documents wrapped in the prompt template
    prompt_window: int = 96
    prompt_batch: int = 24
    prompt_lr: float = 1e-3


def _pretrain_batch(
    tokenizer, rng: random.Random, batch: int, window: int, templated: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of packed documents, each window starting at a document boundary; header unlabelled.
    A `templated` fraction of the documents put the header in the prompt template."""
    import torch

    ids_rows, label_rows = [], []
    for _ in range(batch):
        ids: list[int] = []
        labels: list[int] = []
        while len(ids) < window:
            p = sample_problem(rng, n_steps=rng.randint(1, 3))
            text = format_prompt(p.header) if rng.random() < templated else p.header + "\n"
            header = tokenizer(text, add_special_tokens=False)["input_ids"]
            body = tokenizer(p.answer + "\n", add_special_tokens=False)["input_ids"]
            ids += header + body
            labels += [-100] * len(header) + body
        ids_rows.append(ids[:window])
        label_rows.append(labels[:window])
    return torch.tensor(ids_rows), torch.tensor(label_rows)


def _linear_decay(steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then linear decay to 0.05x at `steps` (the recipe the shipped bases were built with)."""

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 - 0.95 * (step - warmup) / max(1, steps - warmup)

    return lr_lambda


def _train_phase(model, name: str, steps: int, lr: float, lr_lambda: Callable[[int], float],
                 make_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], log_every: int = 100) -> None:  # fmt: skip
    """`steps` AdamW updates (betas 0.9/0.98, weight decay 0.01, clip 1.0) on `make_batch()` batches.

    On one CPU thread: float sums can depend on the thread count, and a build must give the same
    weights on every machine (two builds run side by side in `scripts/demo.sh`)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.time()
        for step in range(steps):
            ids, labels = make_batch()
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step % log_every == 0 or step == steps - 1:
                logger.info("%s step %d/%d loss %.3f (%.0fs)", name, step, steps, loss.item(), time.time() - start)
    finally:
        torch.set_num_threads(threads)
    model.eval()


def pretrain(model, tokenizer, spec: TinySpec) -> None:
    """Short windows of bare documents, then (optionally) longer windows, half of them templated."""
    rng = random.Random(spec.init_seed + 1000)
    warmup = min(50, spec.pretrain_steps // 10 + 1)
    _train_phase(model, "pretrain", spec.pretrain_stop or spec.pretrain_steps, spec.pretrain_lr,
                 _linear_decay(spec.pretrain_steps, warmup),
                 lambda: _pretrain_batch(tokenizer, rng, spec.pretrain_batch, spec.pretrain_window))  # fmt: skip
    if spec.prompt_steps:
        _train_phase(model, "pretrain (prompt template)", spec.prompt_steps, spec.prompt_lr,
                     _linear_decay(spec.prompt_steps, 10),
                     lambda: _pretrain_batch(tokenizer, rng, spec.prompt_batch, spec.prompt_window, templated=0.5))  # fmt: skip


def _new_model(spec: TinySpec):
    """(model, tokenizer): the spec's architecture, initialised from its seed, untrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(spec.init_seed)
    return LlamaForCausalLM(config), tokenizer


def build_tiny_model(spec: TinySpec, path: Path) -> None:
    """Create tokenizer and model from a config, pretrain if asked, save atomically to `path`."""
    model, tokenizer = _new_model(spec)
    if spec.pretrain_steps:
        pretrain(model, tokenizer, spec)
    save_model_dir(model, tokenizer, path)


# ---------------------------------------------------------------------------------------------
# Shipped weights: pretraining is chaotic across CPUs (float rounding differs by instruction set,
# and the arithmetic transition amplifies it), so the toy world's bases ship with the code and
# every machine starts from the same weights. Each file is named by its recipe's build id, and its
# sha256 is registered beside the recipe.
# ---------------------------------------------------------------------------------------------

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Shipped:
    """A tiny model's weights file shipped with the code, and the sha256 they must have."""

    name: str
    file: Path
    sha256: str

    def check(self, path: Path, what: str) -> None:
        if not path.is_file():
            raise ConfigError(f"{what} {path} of {self.name} is missing: reinstall the package, or rebuild the model "
                              f"from its recipe (experiments.build_models --rebuild {self.name})")  # fmt: skip
        actual = sha256_of(path)
        if actual != self.sha256:
            raise ConfigError(f"{what} {path} of {self.name} is corrupted: sha256 {actual}, expected {self.sha256}; "
                              + ("reinstall the package" if path == self.file else "delete its folder to reinstall it"))  # fmt: skip

    def install(self, spec: TinySpec, path: Path) -> None:
        """The cache's model dir from the shipped weights (checked first): the recipe's architecture and
        tokenizer, the shipped tensors loaded strictly, saved as `build_tiny_model` would save them."""
        from safetensors.torch import load_file

        self.check(self.file, "shipped weights")
        model, tokenizer = _new_model(spec)
        model.load_state_dict(load_file(str(self.file)), strict=True)
        save_model_dir(model, tokenizer, path)

    def verify(self, path: Path) -> None:
        self.check(path / "model.safetensors", "cached weights")


# Registry settings of every tiny model (ModelConfig fields), unless a registration overrides them.
# DPO's lr: the best of 1e-4 .. 5e-6 on held-out prompts of the toy world (benchmarks/sweep_baselines.sh).
TINY_DEFAULTS = dict(default_lr=3e-3, default_dpo_lr=1e-4, evaluator_lr=3e-4, eval_batch_size=64,
                     minibatch_size_per_device=8, gradient_checkpointing=False)  # fmt: skip


TINY_SPECS: dict[str, TinySpec] = {}  # every registered tiny model's recipe
SHIPPED: dict[str, Shipped] = {}  # the tiny models whose weights ship with the code


def recipe_id(spec: TinySpec) -> str:
    return hashlib.sha1(repr(spec).encode()).hexdigest()[:8]


def register_tiny(name: str, spec: TinySpec, sha256: str | None = None, weights_dir: Path = WEIGHTS_DIR,
                  **config_kwargs) -> ModelConfig:  # fmt: skip
    """A tiny model built from `spec` on first use or, with `sha256`, installed from its shipped weights
    `<weights_dir>/<name>-<recipe id>.safetensors` and checked against that hash on every load."""
    kwargs = {**TINY_DEFAULTS, **config_kwargs}
    build_id = recipe_id(spec)
    TINY_SPECS[name] = spec
    build, verify = functools.partial(build_tiny_model, spec), None
    if sha256:
        shipped = SHIPPED[name] = Shipped(name, weights_dir / f"{name}-{build_id}.safetensors", sha256)
        build, verify = functools.partial(shipped.install, spec), shipped.verify
    return register_model(ModelConfig(name=name, build=build, build_id=build_id, verify=verify, **kwargs))


def rebuild(name: str, spec: TinySpec, out: Path) -> str:
    """Build `name` from its recipe into `out` (never the cache) and return the weights' sha256."""
    build_tiny_model(spec, out)
    return sha256_of(out / "model.safetensors")


# A random-initialised model for unit tests: builds in a second, learns nothing useful.
register_tiny("tiny-random", TinySpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2))
# The toy world's strong base: pretrained on worked solutions until arithmetic is past its sudden
# transition (symbolic 2-step problems: 98.5% solved, benchmarks/base_arithmetic.py; an 850-step
# run stopped short of it on this project's CPU, 12%, and its SFT learned less than its labels).
# 1,650 steps on one core: 5 min here.
register_tiny(
    "tiny-llama-strong",
    TinySpec(pretrain_steps=1500, init_seed=0, prompt_steps=150),
    sha256="46030e5eb8554ea654c51f6caedc55e2b47c30420cbf0cad3b8cb1cebd77e8c4",
)
# The toy world's weak base: a separate pretraining run (another initialisation and data order), so
# that its errors are its own (a weak model on the strong model's own path handed its errors back:
# SFT on its labels equalled the labels, docs/toy_world.md). Its 1,000-step schedule is stopped at
# step 750, in the middle of the arithmetic transition: 19% of symbolic 2-step problems solved.
register_tiny(
    "tiny-llama-weak",
    TinySpec(pretrain_steps=1000, init_seed=2, pretrain_stop=750, prompt_steps=100),
    sha256="2c30a38660f481487206c1bf4ef791113a77e9c9b39677cc79b317d7607bfbd5",
)


# ---------------------------------------------------------------------------------------------
# The toy evaluator base: the weak base, taught to read arithmetic placed after text
# ---------------------------------------------------------------------------------------------

# Filler between problems: pieces of the evaluator prompt (core.prompts.EVALUATOR_TEMPLATE) and prose.
FILLER = [
    "You gave answer (A). Do you accept changing it to answer (B)?\n\n",
    "Answer (A):\n",
    "Answer (B):\n",
    "The numbers below were added and subtracted step by step.\n",
    "Check each line of the work.\n\n",
    "USER:\n",
    "ASSISTANT:\n",
]


def _long_window(tokenizer, rng: random.Random, window: int) -> tuple[list[int], list[int]]:
    """A window of filler (unlabelled) and problems; a problem is a symbolic or worded header, then its
    worked solution (labelled), so the model learns to read a problem wherever it sits."""
    ids: list[int] = []
    labels: list[int] = []
    while len(ids) < window:
        filler = "".join(rng.choice(FILLER) for _ in range(rng.randint(0, 3)))
        p = sample_problem(rng, n_steps=rng.randint(1, 3))
        header = p.header + "\n" if rng.random() < 0.5 else f"Question:\n{p.question}\n\nAnswer (A):\n"
        prefix = tokenizer(filler + header, add_special_tokens=False)["input_ids"]
        body = tokenizer(p.answer + "\n\n", add_special_tokens=False)["input_ids"]
        ids += prefix + body
        labels += [-100] * len(prefix) + body
    return ids[:window], labels[:window]


def build_long_context_model(base: str, steps: int, window: int, batch: int, lr: float, path: Path) -> None:
    """Continue pretraining the tiny model `base` on `window`-token windows (a base
    pretrained on 48-token windows cannot read arithmetic after the ~100 characters of text that
    precede the answers in the evaluator prompt). Constant lr after 20 warm-up steps, clip 1.0."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterative_label_refinement.core.models import resolve_model_path

    source = resolve_model_path(base)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    rng = random.Random(4321)

    def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
        rows = [_long_window(tokenizer, rng, window) for _ in range(batch)]
        return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])

    _train_phase(model, "long-context", steps, lr, lambda step: min(1.0, (step + 1) / 20), make_batch, log_every=50)
    save_model_dir(model, tokenizer, path)


def register_long_context(name: str, base: str, steps: int = 200, window: int = 256, batch: int = 16,
                          lr: float = 1e-3, **config_kwargs) -> ModelConfig:  # fmt: skip
    from iterative_label_refinement.core.models import MODELS_DICT

    recipe = f"{MODELS_DICT[base].build_id}-long-{steps}-{window}-{batch}-{lr}"
    build = functools.partial(build_long_context_model, base, steps, window, batch, lr)
    kwargs = {**TINY_DEFAULTS, **config_kwargs}
    build_id = hashlib.sha1(recipe.encode()).hexdigest()[:8]
    return register_model(ModelConfig(name=name, build=build, build_id=build_id, **kwargs))


# The toy classifier evaluator's base: the weak base plus long-context pretraining (once, after
# tiny-llama-weak; 1-2 minutes on 2 threads, not re-timed on one).
register_long_context("tiny-llama-evaluator", "tiny-llama-weak")
