"""Check, before its first step, that every step of a pipeline fits the GPUs (`core.memory`).

    bash scripts/...sh                 # runs this first; DRY_RUN=1 prints the plan of every step
    PLAN_GPUS=1 PLAN_GPU_MEM=80 DRY_RUN=1 bash scripts/evaluator-training/train-evaluator-gsm8k-7b.sh
    python -m iterative_label_refinement.experiments.plan --table          # the table of docs/scaling.md
    python -m iterative_label_refinement.experiments.plan --table --write  # into docs/scaling.md

A pipeline script sends its shell variables on stdin (as `write_manifest` does), so the settings are
read here, never parsed in bash. A step that cannot fit is refused in one line (exit 2) naming the
step, its need, the GPU size and the fixes. With no GPU visible and no --gpus/--gpu_mem, there is
nothing to check: one line says so and the pipeline goes on (the CPU demo and CI).
"""

from __future__ import annotations

import glob
import inspect
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated

from iterative_label_refinement.core.cli import POSITIVE, Valid
from iterative_label_refinement.core.memory import (
    GB,
    MAX_GPUS,
    Arch,
    Hardware,
    Step,
    arch_of,
    describe,
    fits,
    refusal,
    step_memory,
)
from iterative_label_refinement.core.methods import method_kind
from iterative_label_refinement.core.run_config import DPO_NUM_SAMPLES
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import ilr

PIPELINES = ("evaluator", "sft_ilr", "sft_dpo")
# Tokens of a prompt, the longest the planner assumes (the answer adds the task's max_len): GSM8K
# questions run to about 200 tokens; BIRD's prompt holds the database schema; SaferPaca's are
# instructions; the toy task's are one line.
PROMPT_TOKENS = {"gsm8k": 256, "bird": 1024, "saferpaca": 256, "toy_arith": 32}
# Pairs per forward of the evaluator in `ilr` and `dpo`: their --batch_size, which the scripts leave at its default.
FEEDBACK_BATCH = inspect.signature(ilr.main).parameters["batch_size"].default
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
PAPER_GPU_BYTES = 80 * GB  # the paper's GPUs: 80 GB A100/H100


def flag_values(text: str) -> dict[str, str]:
    """The `--name=value` flags of a pipeline's flag string (EXTRA_FLAGS, WEAK_FLAGS...), by name."""
    out = {}
    for word in shlex.split(text):
        if word.startswith("--") and "=" in word:
            name, value = word[2:].split("=", 1)
            out[name] = value
    return out


def number(flags: dict[str, str], name: str, default: float | None, kind: type = int) -> float | None:
    """Flag `name`'s value as `kind`, or `default` when not given; ConfigError for a value that is not
    one (the CLI would refuse it too, but the plan is asked first)."""
    if not flags.get(name):
        return default
    try:
        return kind(flags[name])
    except ValueError:
        raise ConfigError(f"--{name}={flags[name]} in the pipeline's flags must be {_NAMES[kind]}") from None


_NAMES = {int: "an integer", float: "a number"}


def _tokens(ds_name: str, flags: dict[str, str], answers: int = 1) -> tuple[int, int]:
    """(prompt tokens, answer tokens) of a step on `ds_name`."""
    from iterative_label_refinement.core.datasets import get_dataset_config

    if ds_name not in PROMPT_TOKENS:
        get_dataset_config(ds_name)  # an unknown task: its own one line
        raise ConfigError(f"the planner knows no prompt length for task {ds_name!r}; add it to PROMPT_TOKENS")
    return PROMPT_TOKENS[ds_name], answers * number(flags, "max_len", get_dataset_config(ds_name).max_len)


def _placement(model: str, parallel: str) -> str:
    from iterative_label_refinement.core.models import get_model_config

    if parallel != "auto":
        return parallel
    return "device_map" if get_model_config(model).model_parallel else "single"


def run_steps(name: str, model: str, ds_name: str, flags: dict[str, str], parallel: str,
              dpo_round: bool = False, samples: int = 1, processes: int = 1) -> list[Step]:  # fmt: skip
    """An experiments.main run: its training step, then its generation (test answers, labels)."""
    from iterative_label_refinement.core.models import get_model_config

    cfg = get_model_config(model)
    prompt, answer = _tokens(ds_name, flags)
    lora_rank = number(flags, "lora_rank", 64)
    where = _placement(model, parallel)
    train = Step(f"{name}: train" + (" (DPO)" if dpo_round else ""), model, "train", tokens=prompt + answer,
                 rows=number(flags, "minibatch_size_per_device", cfg.minibatch_size_per_device) * (
                     2 if dpo_round else 1),  # a pair is two sequences
                 lora_rank=lora_rank, optim=flags.get("optim") or (cfg.dpo_optimizer if dpo_round else
                                                                   cfg.default_optimizer),
                 gradient_checkpointing=cfg.gradient_checkpointing, reference_adapter=dpo_round, parallel=where,
                 processes=processes)  # fmt: skip
    beams = number(flags, "num_beams", 4)
    eval_batch = number(flags, "eval_batch_size", cfg.eval_batch_size)
    gen_name = f"{name}: generate"
    if flags.get("inference_backend") == "vllm":
        gen = Step(gen_name, model, "vllm", tokens=prompt, new_tokens=answer,
                   gpu_usage=number(flags, "gpu_usage", 0.9, float), tensor_parallel=cfg.tensor_parallel_size,
                   processes=processes)  # fmt: skip
    else:
        gen = Step(gen_name, model, "generate", tokens=prompt, new_tokens=answer, rows=eval_batch * max(beams, samples),
                   parallel=where, weights_fp32=lora_rank == 0, processes=processes)  # fmt: skip
    return [train, gen]


def pipeline_steps(pipeline: str, env: dict[str, str], parallel: str = "auto") -> list[Step]:
    """The steps of a pipeline script run with the shell variables `env` (its settings)."""
    from iterative_label_refinement.core.models import get_model_config

    if pipeline not in PIPELINES:
        raise ConfigError(f"Unknown pipeline {pipeline!r}. Valid: {list(PIPELINES)}")
    ds = env.get("DS_NAME", "gsm8k")
    common = flag_values(env.get("EXTRA_FLAGS", "")) | {"lora_rank": env.get("LORA_RANK", "64"),
                                                        "num_beams": env.get("NUM_BEAMS", "4")}  # fmt: skip
    evaluator = env.get("EVALUATOR_MODEL", "")

    def flags(name: str) -> dict[str, str]:
        return common | flag_values(env.get(name, ""))

    if pipeline == "evaluator":
        steps = run_steps("ground truth", evaluator, ds, flags("GT_FLAGS"), parallel)
        ev = flag_values(env.get("EVALUATOR_FLAGS", ""))
        cfg = get_model_config(evaluator)
        # generate_evaluator_data: one answer per question from each checkpoint, a batch of eval_batch_size
        prompt, answer = _tokens(ds, flags("GT_FLAGS"))
        steps.append(Step("evaluator data: sample answers", evaluator, "generate", tokens=prompt, new_tokens=answer,
                          rows=cfg.eval_batch_size, parallel=_placement(evaluator, parallel),
                          weights_fp32=number(flags("GT_FLAGS"), "lora_rank", 64) == 0))  # fmt: skip
        classifier = ev.get("evaluator_kind", "classifier") == "classifier"
        prompt, answers = _tokens(ds, ev, answers=2 if classifier else 1)  # a classifier reads both answers
        return steps + [
            Step(
                "evaluator: train",
                evaluator,
                "train",
                tokens=prompt + answers,
                rows=number(ev, "minibatch_size_per_device", cfg.minibatch_size_per_device),
                lora_rank=number(ev, "lora_rank", cfg.evaluator_lora_rank),
                optim=ev.get("optim", "adamw"),
                gradient_checkpointing=cfg.gradient_checkpointing,
                parallel=_placement(evaluator, parallel),
                classifier=classifier,
            )
        ]
    weak, strong = env.get("WEAK_MODEL", ""), env.get("STRONG_MODEL", "")
    halves_at_once = 2 if pipeline == "sft_ilr" and env.get("PARALLEL", "0") == "1" else 1
    steps = run_steps("weak model", weak, ds, flags("WEAK_FLAGS"), parallel)
    steps += run_steps("strong model", strong, ds, flags("STRONG_FLAGS"), parallel,
                       samples=DPO_NUM_SAMPLES if pipeline == "sft_dpo" else 1, processes=halves_at_once)  # fmt: skip
    kind = method_kind(env.get("REFINER", "ilr" if pipeline == "sft_ilr" else "dpo"))  # the scripts' default
    feedback = env.get("ORACLE", "0") != "1" and kind.takes_feedback
    if feedback:
        prompt, answers = _tokens(ds, {}, answers=2)
        steps.append(Step("feedback: evaluator scores pairs", evaluator, "forward", tokens=prompt + answers,
                          rows=FEEDBACK_BATCH, parallel=_placement(evaluator, parallel),
                          classifier=True))  # fmt: skip
    if pipeline == "sft_dpo":
        steps += run_steps("strong model", strong, ds, flags("STRONG_FLAGS") | flag_values(env.get("DPO_FLAGS", "")),
                           parallel, dpo_round=True)[:1]  # fmt: skip
    return steps


_ARCHS: dict[tuple[str, bool], Arch] = {}


def _arch(step: Step) -> Arch:
    """The step's model's `Arch`, built once per model and kind."""
    key = (step.model, step.classifier)
    if key not in _ARCHS:
        _ARCHS[key] = arch_of(step.model, "classifier" if step.classifier else "causal_lm")
    return _ARCHS[key]


def plan_rows(steps: list[Step], hw: Hardware) -> list[tuple[Step, float, bool]]:
    """Each step with its need per GPU (GB) and whether it fits."""
    return [(s, step_memory(_arch(s), s, hw)["total"] / GB, fits(_arch(s), s, hw)) for s in steps]


def gpu_device_files() -> bool:
    """Whether Linux shows an NVIDIA or AMD (ROCm) GPU device; elsewhere True (only torch can tell)."""
    return sys.platform != "linux" or bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def visible_gpus() -> Hardware | None:
    """The GPUs this process sees (the smallest one's memory), or None without CUDA. Without a GPU
    device file torch is not even imported: every pipeline asks once per script, and it takes seconds."""
    if not gpu_device_files():
        return None
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    n = torch.cuda.device_count()
    smallest = min(torch.cuda.get_device_properties(i).total_memory for i in range(n))
    return Hardware(n, float(smallest), bf16=torch.cuda.is_bf16_supported())


def read_env(stream) -> dict[str, str]:
    """NAME=value pairs separated by NUL bytes (lib.sh sends its shell variables so)."""
    out = {}
    for item in stream.read().split("\0"):
        if "=" in item:
            name, value = item.split("=", 1)
            out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# The table of docs/scaling.md: every paper script's steps on 80 GB GPUs
# ---------------------------------------------------------------------------------------------

_DEFAULT = re.compile(r"^(?:export )?(\w+)=\$\{\1:-([^}$]*)\}", re.MULTILINE)
BEGIN = "<!-- GPU table: generated by python -m iterative_label_refinement.experiments.plan --table --write -->"
END = "<!-- end of GPU table -->"
TABLE_DOC = SCRIPTS.parent / "docs" / "scaling.md"


def script_settings(script: Path) -> tuple[str, dict[str, str]]:
    """(pipeline, settings) of a paper script: its `export X=${X:-value}` lines over those of the
    wrapper it runs (a parallel/ variant runs its twin), over its pipeline script's and lib.sh's
    `X=${X:-value}` defaults (tests/test_scripts.py holds the wrappers to that form)."""
    target = (script.parent / re.search(r'exec bash "\$\(dirname "\$0"\)/([^"]+)"', script.read_text())[1]).resolve()
    if target.parent == SCRIPTS:
        pipeline, env = target.stem, dict(_DEFAULT.findall((SCRIPTS / "lib.sh").read_text()))
        env.update(_DEFAULT.findall(target.read_text()))
    else:
        pipeline, env = script_settings(target)
    env.update(_DEFAULT.findall(script.read_text()))
    return pipeline, env


def gpus_needed(pipeline: str, env: dict[str, str], gpu_bytes: float) -> tuple[int | None, float]:
    """The fewest GPUs of `gpu_bytes` that every step fits (None: more than a node's `MAX_GPUS`), and
    the largest need per GPU (GB) on them."""
    steps = pipeline_steps(pipeline, env)
    for n in range(1, MAX_GPUS + 1):
        rows = plan_rows(steps, Hardware(n, gpu_bytes))
        if all(ok for _, _, ok in rows):
            return n, max(need for _, need, _ in rows)
    return None, max(need for _, need, _ in rows)


def gpu_table() -> str:
    lines = ["| script | 80 GB GPUs needed | largest step per GPU (GB) |", "| --- | --- | --- |"]
    for script in sorted(p for p in SCRIPTS.rglob("*.sh") if p.parent != SCRIPTS):  # the paper's scripts
        pipeline, env = script_settings(script)
        n, need = gpus_needed(pipeline, env, PAPER_GPU_BYTES)
        lines.append(f"| `{script.relative_to(SCRIPTS)}` | {n if n else 'more than 8'} | {need:.1f} |")
    return "\n".join(lines)


def print_plan(rows: list[tuple[Step, float, bool]], hw: Hardware | None) -> None:
    where = f"{hw.gpus} x {hw.gpu_bytes / GB:.1f} GB" if hw else "no GPU"
    print(f"memory plan ({where}):", file=sys.stderr)
    for step, need, ok in rows:
        mark = "" if hw is None else ("  fits" if ok else "  DOES NOT FIT")
        print(f"  {step.name:<34} {step.model:<36} {need:7.1f} GB/GPU  {describe(step)}{mark}", file=sys.stderr)


def check(pipeline: str, env: dict[str, str], hw: Hardware, parallel: str = "auto", show: bool = False) -> None:
    """Refuse (ConfigError, one line) the first step that cannot fit `hw`; print the plan when `show`."""
    rows = plan_rows(pipeline_steps(pipeline, env, parallel), hw)
    if show:
        print_plan(rows, hw)
    for step, _, ok in rows:
        if not ok:
            raise ConfigError(refusal(_arch(step), step, hw))


def hardware(gpus: int | None, gpu_mem: float | None) -> Hardware | None:
    """The GPUs to plan for: the visible ones, with --gpus/--gpu_mem in place of their number and
    size; None when none is visible and neither is given."""
    seen = visible_gpus()
    if seen is None:
        if gpus is None and gpu_mem is None:
            return None
        if gpu_mem is None:
            raise ConfigError(f"--gpus={gpus} without --gpu_mem: no GPU is visible to tell their size; give both")
        return Hardware(gpus or 1, gpu_mem * GB)
    return Hardware(gpus or seen.gpus, gpu_mem * GB if gpu_mem else seen.gpu_bytes, seen.bf16)


def main(
    pipeline: Annotated[str | None, Valid(choices=(*PIPELINES, None))] = None,
    gpus: Annotated[int | None, POSITIVE] = None,
    gpu_mem: Annotated[float | None, POSITIVE] = None,
    parallel: Annotated[str, Valid(choices=("auto", "ddp", "fsdp"))] = "auto",
    show: bool = False,
    table: bool = False,
    write: bool = False,
) -> None:
    """Check a pipeline's steps against the GPUs, its settings on stdin (NUL-separated NAME=value);
    or print (`table`) docs/scaling.md's table, or put it there (`write`).

    gpus, gpu_mem (GB): plan for these GPUs instead of the visible ones. parallel: auto (what the
    scripts do: device_map over the GPUs for a model registered with model_parallel, else one GPU),
    or every step under DDP or FSDP (torchrun). show: print every step's need (DRY_RUN=1).
    """
    if write and not table:
        raise ConfigError("--write puts the table in docs/scaling.md: give it with --table")
    if table:
        text = gpu_table()
        if not write:
            print(text)
            return
        head, rest = TABLE_DOC.read_text().split(BEGIN + "\n", 1)
        TABLE_DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")
        return
    if pipeline is None:
        raise ConfigError(f"--pipeline is required (one of {', '.join(PIPELINES)}), or --table")
    hw = hardware(gpus, gpu_mem)
    if hw is None:
        print("memory plan: no GPU visible and no --gpus/--gpu_mem (PLAN_GPUS/PLAN_GPU_MEM): nothing to check",
              file=sys.stderr)  # fmt: skip
        return
    check(pipeline, read_env(sys.stdin), hw, parallel, show)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
