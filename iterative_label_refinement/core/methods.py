"""What a refinement method is: each kind declared once (`MethodKind`), each method a value parsed
once from its name and formatted back in one place.

A kind declares everything the CLIs, the runs, the pipelines and the report ask of it: its
parameters (and so its name format), whether it takes comparisons, the runs whose answers it
judges (and whether the half models must label every prompt), the pipeline it runs in, and the
function deciding its rows. The paper's kinds (ilr, naive, dpo) are declared in
`core.refinement_step` beside their rows; a new kind is one more `register_kind(MethodKind(...))`.

A method's name is part of every file name it touches: the label sets a refinement step writes
(`<weak run>/<method>_<round>_weak_labels`), the `--method` that trains on them, and the run dir's
`wlt=` key. Names are `cor`? + `ora`? + kind + parameters:

* `cor`: the round starts from the correct demonstrations only (`--start_with_correct_labels`);
* `ora`: comparisons come from ground truth instead of the evaluator (`--use_oracle_feedback`);
* the kind's numbers back to back, then the suffix of each of its flags that is set:
  `ilr0.15` (max_replace), `naive0.15rd` (max_replace, then `rd` for `--redraw_each_round`: each round
  draws other rows), `dpo0.10.15` (beta 0.1, subsample 0.15), `oradpo0.10.15nt` (`nt`: neutral oracle ties).

Numbers are spelled as Python's `str()` spells the value the CLI received (`0.15`, `1`, `1.0`),
so a name is found again only when spelled that way: a name that does not parse is an error,
never a substring match (`dpo_something` does not switch DPO on).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iterative_label_refinement.core.settings import ConfigError

HALF_RUNS = ("model1_path", "model2_path")  # cross-fitted proposals: each half model labelled the other half
PIPELINES = ("sft_ilr", "sft_dpo")  # label sets refined between SFT rounds; preference pairs between DPO rounds


def check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"--{name} must be in (0, 1], got {value!r}")


def check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"--{name} must be a positive number, got {value!r}")


# The parameters a kind may take (the fields of `Method`): numbers with their check, and flags with
# the suffix naming them and their CLI flag.
NUMBERS: dict[str, Callable[[str, float], None]] = {
    "max_replace": check_fraction,
    "beta": check_positive,
    "subsample": check_fraction,
}
FLAGS = {"neutral_ties": ("nt", "--neutral_oracle_ties"), "redraw_each_round": ("rd", "--redraw_each_round")}


@dataclass(frozen=True)
class MethodKind:
    """One kind of refinement method, declared once.

    rows: `core.refinement_step.StepInputs` -> the rows of the label set (or preference pairs) it writes.
    numbers, flags: its parameters (of NUMBERS, FLAGS), in the order its name spells them.
    judges: the `experiments.refine` flags naming the runs whose answers it judges, all of the round.
    half_runs_label_all: the half models label every prompt, not only the half they did not train on.
    pipeline: the script that runs it (scripts/<pipeline>.sh); sft_dpo kinds write preference pairs.
    cli: the module running its step: the paper's kinds keep the reference's CLIs, others `refine --kind`.
    """

    name: str
    rows: Callable[[Any], list[dict[str, Any]]]
    numbers: tuple[str, ...] = ("max_replace",)
    flags: tuple[str, ...] = ()
    takes_feedback: bool = True
    judges: tuple[str, ...] = HALF_RUNS
    half_runs_label_all: bool = False
    pipeline: str = "sft_ilr"
    cli: str = "refine"

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.numbers + self.flags

    @property
    def command(self) -> list[str]:
        """The module and flags that run its step (`python -m iterative_label_refinement.<command>`)."""
        return [f"experiments.{self.cli}"] + ([f"--kind={self.name}"] if self.cli == "refine" else [])


_KINDS: dict[str, MethodKind] = {}


def register_kind(kind: MethodKind) -> MethodKind:
    """Declare a kind of method (a new name of lowercase letters, not starting with a prefix, cor or ora)."""
    if not re.fullmatch(r"[a-z]+", kind.name) or kind.name.startswith(("cor", "ora")):
        raise ConfigError(f"method kind {kind.name!r}: a kind is lowercase letters, not starting with cor or ora")
    if kind.name in _KINDS:
        raise ConfigError(f"method kind {kind.name!r} is declared twice")
    if not kind.numbers or set(kind.numbers) - set(NUMBERS) or set(kind.flags) - set(FLAGS):
        raise ConfigError(f"method kind {kind.name!r}: numbers must be some of {list(NUMBERS)} (at least one), "
                          f"flags some of {list(FLAGS)}; got {kind.numbers}, {kind.flags}")  # fmt: skip
    if kind.pipeline not in PIPELINES:
        raise ConfigError(
            f"method kind {kind.name!r}: pipeline must be one of {list(PIPELINES)}, got {kind.pipeline!r}"
        )
    _KINDS[kind.name] = kind
    return kind


def kinds() -> dict[str, MethodKind]:
    """Every declared kind by name: the paper's (declared in `core.refinement_step`) and those registered since."""
    import iterative_label_refinement.core.refinement_step  # noqa: F401  (the paper's kinds declare themselves)

    return _KINDS


def method_kind(name: str) -> MethodKind:
    if name not in kinds():
        raise ConfigError(f"Unknown method kind {name!r}. Valid: {list(kinds())}")
    return _KINDS[name]


@dataclass(frozen=True)
class Method:
    """One refinement method: its kind, the prefixes, and the parameters its kind takes (the others
    stay None or False). A kind without feedback is never `oracle`."""

    kind: str
    oracle: bool = False
    correct_start: bool = False
    max_replace: float | None = None
    beta: float | None = None
    subsample: float | None = None
    neutral_ties: bool = False
    redraw_each_round: bool = False

    def __post_init__(self) -> None:
        spec = method_kind(self.kind)
        article = "an" if self.kind[0] in "aeiou" else "a"
        for name in (*NUMBERS, *FLAGS):
            if name not in spec.parameters and getattr(self, name) not in (None, False):
                if name in NUMBERS:
                    raise ConfigError(
                        f"{article} {self.kind} method has no {name} (it takes {', '.join(spec.parameters)})"
                    )
                owners = ", ".join(k.name for k in kinds().values() if name in k.flags)
                raise ConfigError(f"{FLAGS[name][1]} belongs to {owners}, not {self.kind}")
        for name in spec.numbers:
            NUMBERS[name](name, getattr(self, name))
        if self.neutral_ties and not self.oracle:
            raise ConfigError("--neutral_oracle_ties changes oracle scores only: pass --use_oracle_feedback=True too")
        if not spec.takes_feedback and self.oracle:
            raise ConfigError(f"{self.kind} takes no feedback, so no oracle feedback either")

    @property
    def spec(self) -> MethodKind:
        return method_kind(self.kind)

    @property
    def is_dpo(self) -> bool:
        """It writes preference pairs for DPO rounds, not labels."""
        return self.spec.pipeline == "sft_dpo"

    @property
    def takes_feedback(self) -> bool:
        """ilr and dpo spend comparisons (evaluator or oracle); naive replaces at random."""
        return self.spec.takes_feedback

    def __str__(self) -> str:
        return format_method(self)


def format_method(method: Method) -> str:
    """The method's name, e.g. `ilr0.15`, `cororailr0.15`, `cornaive0.15`, `naive0.15rd`, `oradpo0.10.15`."""
    spec = method.spec
    numbers = "".join(str(getattr(method, name)) for name in spec.numbers)
    flags = "".join(FLAGS[name][0] for name in spec.flags if getattr(method, name))
    return ("cor" if method.correct_start else "") + ("ora" if method.oracle else "") + method.kind + numbers + flags


def _number(text: str) -> float | None:
    """The number `text` spells the way `str()` does (an int or a float), else None."""
    try:
        value: float = int(text) if re.fullmatch(r"[0-9]+", text) else float(text)
    except ValueError:
        return None
    return value if str(value) == text else None


def _readings(text: str, names: tuple[str, ...]) -> list[tuple[float, ...]]:
    """Every way `text` reads as the numbers `names`, back to back, each canonical and in range."""
    if len(names) == 1:
        value = _number(text)
        try:
            NUMBERS[names[0]](names[0], value)
        except ConfigError:
            return []
        return [(value,)]
    return [(head[0], *tail) for i in range(1, len(text))
            for head in _readings(text[:i], names[:1]) for tail in _readings(text[i:], names[1:])]  # fmt: skip


def parse_method(name: str) -> Method:
    """The method a name spells; ConfigError in one line, naming it, when it spells none."""
    try:
        return _parse(name)
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if message.startswith("method ") else f"method {name!r}: {message}") from None


def _kind_names() -> str:
    """The declared kinds as regex alternatives, the longest first (`ilrx` before `ilr`)."""
    return "|".join(sorted(kinds(), key=len, reverse=True))


def split_name(name: str) -> re.Match | None:
    """The parts `cor`, `ora`, `kind` and `rest` (the parameters) of a name spelled [cor][ora]<kind><rest>,
    the longest kind tried first (`ilrx` before `ilr`); None when it starts with no declared kind."""
    names = _kind_names()
    return (
        re.fullmatch(rf"(?P<cor>cor)?(?P<ora>ora)?(?P<kind>{names})(?P<rest>.*)", name)
        if isinstance(name, str)
        else None
    )


def _parse(name: str) -> Method:
    match = split_name(name)
    if match is None:
        raise ConfigError(f"method {name!r} is not a method name: expected [cor][ora]({_kind_names()})<parameters>, "
                          "e.g. ilr0.15, cornaive0.15, oradpo0.10.15")  # fmt: skip
    spec, rest = _KINDS[match["kind"]], match["rest"]
    values: dict[str, Any] = {}
    for flag in reversed(spec.flags):  # the suffixes come last, in the declared order
        suffix = FLAGS[flag][0]
        values[flag] = rest.endswith(suffix)
        rest = rest.removesuffix(suffix)
    readings = _readings(rest, spec.numbers)
    if len(readings) != 1:  # two canonical spellings meet only one way: `0.10.15` is 0.1 then 0.15
        reason = "has no" if not readings else f"has {len(readings)} readings of its"
        raise ConfigError(f"method {name!r} {reason} <{'><'.join(spec.numbers)}> after {spec.name} "
                          "(e.g. ilr0.15, dpo0.10.15: beta 0.1, subsample 0.15)")  # fmt: skip
    values.update(zip(spec.numbers, readings[0]))
    return Method(spec.name, oracle=bool(match["ora"]), correct_start=bool(match["cor"]), **values)
