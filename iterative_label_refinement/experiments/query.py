"""What the pipelines, the demo and the report ask the project, answered from its declarations.

    python -m iterative_label_refinement.experiments.query QUESTION [--format=json|shell] FLAGS...

The scripts in scripts/ match no method or dataset name, parse no path and repeat no check: they
ask here. One question, one function; the answer is a JSON object, or with `--format=shell` one
`NAME=value` line per key (upper-cased; a list becomes a bash array, a bool 1 or 0), every value
quoted for `eval`. Nothing is read but records and the registries; no model is loaded.

* `pipelines ilr orailr dpo --rounds=2`: for each pipeline name ([cor][ora]<kind>, the kind
  declared in `core.methods`) its script, its environment and its number of train/refine steps;
* `refiner --kind=ilr --pipeline=sft_ilr --rounds=6 --max_replace=0.15 ...`: the method these settings
  name (the strong runs' --method), the command of its step, whether it takes feedback, the
  pipeline's step count, or the refusal when the kind runs in another pipeline;
* `run <experiments.main flags>`: the run dir main would write (main's own --print_save_path, with its
  checks), whether main would find it finished, and the trained model's dir (a DPO round's adapter);
* `evaluator --ds_name=saferpaca`: the evaluator pipeline's step count and the extra flags of each of
  its ground-truth runs (one per mode of the task's registry entry, else one).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import json
import shlex
import sys
from typing import Annotated, Any

from iterative_label_refinement.core.cli import FRACTION, NON_NEGATIVE, POSITIVE
from iterative_label_refinement.core.datasets import get_dataset_config
from iterative_label_refinement.core.methods import Method, kinds, method_kind, split_name
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import main as main_cli

FORMATS = ("json", "shell")
# Train/refine steps of each pipeline script (its progress total, the demo's sum); a test counts
# the steps of the scripts' dry runs against them.
STEPS = {
    "sft_ilr": lambda rounds: 2 + 4 * rounds,  # weak, SFT; per round: two halves, refinement, full
    "sft_dpo": lambda rounds: 2 + 2 * rounds,  # weak, SFT; per round: preference pairs, DPO
}


def pipelines(*names: str, rounds: Annotated[int, NON_NEGATIVE]) -> dict[str, Any]:
    """Each pipeline of `names` ([cor][ora]<kind>, e.g. ilr orailr cornaive dpo): its script
    (scripts/<script>), its environment, its steps for `rounds` rounds."""
    answer: dict[str, list[Any]] = {"scripts": [], "envs": [], "steps": []}
    for name in names:
        match = split_name(name)  # a pipeline is a method name without its parameters
        spec = match and not match["rest"] and method_kind(match["kind"])
        if not spec or (match["ora"] and not spec.takes_feedback):
            raise ConfigError(f"PIPELINES must be a comma-separated list of [cor][ora]<kind>, the kind one of "
                              f"{list(kinds())} (ora: kinds that take feedback), e.g. ilr,naive,dpo,orailr,oradpo; "
                              f"got {','.join(names)!r}")  # fmt: skip
        answer["scripts"].append(f"{spec.pipeline}.sh")
        answer["envs"].append(f"REFINER={spec.name} ORACLE={int(bool(match['ora']))} CORRECT={int(bool(match['cor']))}")
        answer["steps"].append(STEPS[spec.pipeline](rounds))
    return answer


def refiner(kind: str, pipeline: str, rounds: Annotated[int, NON_NEGATIVE], oracle: bool = False,
            correct_start: bool = False, max_replace: Annotated[float, FRACTION] = 0.1,
            beta: Annotated[float, POSITIVE] = 0.1, subsample: Annotated[float, FRACTION] = 1.0,
            neutral_ties: bool = False, redraw_each_round: bool = False) -> dict[str, Any]:  # fmt: skip
    """The refinement step of a pipeline script (`pipeline`: sft_ilr or sft_dpo) run with these settings
    (the parameters the kind takes are read, with the refinement CLIs' defaults): the method they
    name (the strong runs' --method), the command running the step (module and flags), whether it
    takes feedback (the evaluator's or the oracle's), the script's step count; or, for a kind
    another script runs, only the line refusing it (`refusal`)."""
    spec = method_kind(kind)
    if spec.pipeline != pipeline:
        return {"refusal": f"REFINER must not be {kind}: SFT+{kind.upper()} is scripts/{spec.pipeline}.sh"}
    settings = dict(max_replace=max_replace, beta=beta, subsample=subsample, neutral_ties=neutral_ties,
                    redraw_each_round=redraw_each_round)  # fmt: skip
    method = Method(kind, oracle=oracle, correct_start=correct_start,
                    **{k: v for k, v in settings.items() if k in spec.parameters})  # fmt: skip
    return {"method": str(method), "refiner_command": spec.command, "takes_feedback": spec.takes_feedback,
            "steps": STEPS[pipeline](rounds)}  # fmt: skip


@functools.wraps(main_cli.main)  # main's flags, declarations and checks
def run(*args: Any, **flags: Any) -> dict[str, Any]:
    """The run dir `experiments.main` would write with these flags (its `plan`, with its own
    checks), whether main would find it finished and skip it (`run_done`), and the dir of the model
    it trains (`model_dir`: a DPO round's adapter is `train_adapter` inside it)."""
    from iterative_label_refinement.core.layout import model_dir
    from iterative_label_refinement.core.run_config import RunConfig

    bound = inspect.signature(main_cli.main).bind(*args, **flags)
    bound.apply_defaults()
    settings = {k: v for k, v in bound.arguments.items() if k != "print_save_path"}
    cfg = RunConfig.from_flags(dry_run=True, **settings)  # resolved once, as main resolves it
    with contextlib.redirect_stdout(io.StringIO()):  # main's plan prints the path: stdout is the answer's
        run_dir, _ = main_cli.plan(cfg, print_save_path=True)
    return {"run_dir": str(run_dir), "run_done": main_cli.finished(cfg, run_dir),
            "model_dir": str(model_dir(run_dir, cfg.dpo_round))}  # fmt: skip


def evaluator(ds_name: str) -> dict[str, Any]:
    """The evaluator pipeline of a task: its ground-truth runs' extra flags (one run per mode of the
    registry entry, e.g. SaferPaca's general-only and safety-only models; else one run), then the
    evaluator data and the evaluator: its step count."""
    modes = get_dataset_config(ds_name).modes
    gt_runs = [f"--mode={mode}" for mode in modes] or [""]
    return {"gt_runs": gt_runs, "evaluator_steps": len(gt_runs) + 2}


QUESTIONS = {"pipelines": pipelines, "refiner": refiner, "run": run, "evaluator": evaluator}


def shell(answer: dict[str, Any]) -> str:
    """`NAME=value` lines bash can `eval`: names upper-cased, lists as arrays, bools as 1/0, all quoted."""

    def word(value: Any) -> str:
        return shlex.quote(str(int(value)) if isinstance(value, bool) else str(value))

    lines = []
    for key, value in answer.items():
        value = f"({' '.join(word(v) for v in value)})" if isinstance(value, list) else word(value)
        lines.append(f"{key.upper()}={value}")
    return "\n".join(lines)


def answer(args: list[str]) -> None:
    """Run the question `args[0]` with the flags that follow, printing its answer in --format."""
    from iterative_label_refinement.core.cli import run_cli

    formats = [a for a in args if a.startswith("--format=")]
    rest = [a for a in args if not a.startswith("--format=")]
    fmt = formats[-1].removeprefix("--format=") if formats else "json"
    if not rest or rest[0] not in QUESTIONS or fmt not in FORMATS:
        print(f"error: usage: query {{{','.join(QUESTIONS)}}} [--format={'|'.join(FORMATS)}] FLAGS...; got {args}",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    question = QUESTIONS[rest[0]]

    @functools.wraps(question)
    def printed(*a: Any, **kw: Any) -> None:
        result = question(*a, **kw)
        print(shell(result) if fmt == "shell" else json.dumps(result))

    run_cli(printed, rest[1:])


if __name__ == "__main__":
    answer(sys.argv[1:])
