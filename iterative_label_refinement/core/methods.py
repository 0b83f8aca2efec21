"""What a refinement method is, as a value: parsed once from its name, formatted back in one place.

A method's name is part of every file name it touches: the label sets a refinement step writes
(`<weak run>/<method>_<round>_weak_labels`), the `--method` that trains on them, and the run dir's
`wlt=` key. Names are `cor`? + `ora`? + kind + parameter:

* `cor`: the round starts from the correct demonstrations only (`--start_with_correct_labels`);
* `ora`: comparisons come from ground truth instead of the evaluator (`--use_oracle_feedback`);
* `ilr<max_replace>`, `naive<max_replace>` (and any kind added to KINDS but dpo): the fraction of
  labels a round may replace, then for naive `rd` when each round draws other rows
  (`--redraw_each_round`; without it every round replaces the same questions, as in the reference);
* `dpo<beta><subsample>`: the DPO beta, then the fraction of preference pairs kept, written
  back to back (`dpo0.10.15` is beta 0.1, subsample 0.15), then `nt` for neutral oracle ties.

Numbers are spelled as Python's `str()` spells the value the CLI received (`0.15`, `1`, `1.0`),
so a name is found again only when spelled that way: a name that does not parse is an error,
never a substring match (`dpo_something` does not switch DPO on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from iterative_label_refinement.core.common import ConfigError

# A new method adds its kind here (dpo's parameters are its own; every other kind takes
# `max_replace`), then its rows in `core.refinement_step.STEPS`; `experiments.refine` runs it.
KINDS = ("ilr", "naive", "dpo")
NO_FEEDBACK = ("naive",)  # kinds that replace labels without asking for comparisons
NEUTRAL_TIES = "nt"
REDRAW = "rd"


def check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"--{name} must be in (0, 1], got {value!r}")


@dataclass(frozen=True)
class Method:
    """One refinement method. `max_replace` belongs to ilr and naive, `redraw_each_round` to naive;
    `beta`, `subsample` and `neutral_ties` to dpo. naive takes no feedback, so it is never `oracle`."""

    kind: str
    oracle: bool = False
    correct_start: bool = False
    max_replace: float | None = None
    beta: float | None = None
    subsample: float | None = None
    neutral_ties: bool = False
    redraw_each_round: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Unknown method kind {self.kind!r}. Valid: {list(KINDS)}")
        if self.redraw_each_round and self.kind != "naive":
            raise ConfigError(f"--redraw_each_round belongs to naive, not {self.kind}: only naive draws rows at random")
        if self.kind == "dpo":
            if self.max_replace is not None:
                raise ConfigError("a dpo method has no max_replace (it keeps a `subsample` of pairs)")
            if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta > 0:
                raise ConfigError(f"--beta must be a positive number, got {self.beta!r}")
            check_fraction("subsample", self.subsample)
            if self.neutral_ties and not self.oracle:
                raise ConfigError(
                    "--neutral_oracle_ties changes oracle scores only: pass --use_oracle_feedback=True too"
                )
        else:
            if self.beta is not None or self.subsample is not None or self.neutral_ties:
                raise ConfigError(f"an {self.kind} method has no beta, subsample or neutral ties")
            check_fraction("max_replace", self.max_replace)
            if not self.takes_feedback and self.oracle:
                raise ConfigError(f"{self.kind} takes no feedback, so no oracle feedback either")

    @property
    def is_dpo(self) -> bool:
        return self.kind == "dpo"

    @property
    def takes_feedback(self) -> bool:
        """ilr and dpo spend comparisons (evaluator or oracle); naive replaces at random."""
        return self.kind not in NO_FEEDBACK

    def __str__(self) -> str:
        return format_method(self)


def format_method(method: Method) -> str:
    """The method's name, e.g. `ilr0.15`, `cororailr0.15`, `cornaive0.15`, `naive0.15rd`, `oradpo0.10.15`."""
    if method.is_dpo:
        parameter = f"{method.beta}{method.subsample}" + (NEUTRAL_TIES if method.neutral_ties else "")
    else:
        parameter = str(method.max_replace) + (REDRAW if method.redraw_each_round else "")
    return ("cor" if method.correct_start else "") + ("ora" if method.oracle else "") + method.kind + parameter


def _number(text: str) -> float | None:
    """The number `text` spells the way `str()` does (an int or a float), else None."""
    try:
        value: float = int(text) if re.fullmatch(r"[0-9]+", text) else float(text)
    except ValueError:
        return None
    return value if str(value) == text else None


def parse_method(name: str) -> Method:
    """The method a name spells; ConfigError in one line, naming it, when it spells none."""
    try:
        return _parse(name)
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if message.startswith("method ") else f"method {name!r}: {message}") from None


def _parse(name: str) -> Method:
    kinds = "|".join(sorted(KINDS, key=len, reverse=True))  # the longest kind first: `ilrx` before `ilr`
    match = (
        re.fullmatch(rf"(?P<cor>cor)?(?P<ora>ora)?(?P<kind>{kinds})(?P<rest>.*)", name)
        if isinstance(name, str)
        else None
    )
    if match is None:
        raise ConfigError(f"method {name!r} is not a method name: expected [cor][ora]({kinds})<parameter>, "
                          "e.g. ilr0.15, cornaive0.15, oradpo0.10.15")  # fmt: skip
    kind, rest = match["kind"], match["rest"]
    flags = dict(kind=kind, oracle=bool(match["ora"]), correct_start=bool(match["cor"]))
    if kind != "dpo":
        redraw = rest.endswith(REDRAW)  # Method refuses it for every kind but naive
        max_replace = _number(rest.removesuffix(REDRAW))
        if max_replace is None:
            raise ConfigError(f"method {name!r}: {kind} takes its max_replace after the name (e.g. {kind}0.15)")
        return Method(**flags, max_replace=max_replace, redraw_each_round=redraw)
    neutral_ties = rest.endswith(NEUTRAL_TIES)
    rest = rest.removesuffix(NEUTRAL_TIES)
    # beta and subsample are written back to back: keep the one split where both read as numbers
    # in range (two canonical spellings can meet only one way: `0.10.15` is 0.1 then 0.15).
    splits = []
    for i in range(1, len(rest)):
        beta, subsample = _number(rest[:i]), _number(rest[i:])
        if beta is not None and subsample is not None and beta > 0 and 0 < subsample <= 1:
            splits.append((beta, subsample))
    if len(splits) != 1:
        reason = "has no" if not splits else f"has {len(splits)} readings of its"
        raise ConfigError(f"method {name!r} {reason} <beta><subsample> (e.g. dpo0.10.15: beta 0.1, subsample 0.15)")
    return Method(**flags, beta=splits[0][0], subsample=splits[0][1], neutral_ties=neutral_ties)
