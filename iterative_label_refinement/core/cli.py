"""The thin `fire` wrapper of every CLI: bad input becomes one clear line and exit status 2.

Before fire runs anything, the command line is checked against the function's signature: fire
itself would pass a mistyped flag (`--max_replac=0.5`) on to the function's result, after the step
had run with defaults, and treats a `--help` after other flags as just another argument. So an
unknown flag is refused with the closest valid one, and `--help`/`-h` anywhere shows the help and
runs nothing.

Every flag's type and valid values are declared once, in the CLI function's signature
(`lr: Annotated[float | None, Valid(gt=0)] = None`) or, for a set of flags several CLIs share or
too many for a signature, as the fields of a flags dataclass (`flag(default, help)`) that
`expand_flags` spreads into the signature. Every flag is checked against its declaration before
the function runs, so before anything is written: fire hands over whatever its parser made of the
text (`--seed=1.5` a float, `--force=maybe` a string, `--lr=1e400` infinity). `flag_table` writes
the declarations out as the table in docs/components.md.
"""

from __future__ import annotations

import difflib
import errno
import functools
import inspect
import math
import re
import shutil
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path, PurePath
from typing import Any

from iterative_label_refinement.core.files import disk_full
from iterative_label_refinement.core.settings import ConfigError

HELP_FLAGS = ("--help", "-h")
# fire's own flags, allowed after a lone `--` (e.g. `-- --trace`)
FIRE_FLAGS = ("help", "interactive", "i", "separator", "completion", "trace", "t", "verbose", "v")


def _is_flag(argument: str) -> bool:
    """fire's rule: `--anything`, or `-` then a letter (so `-1.5` is a value, not a flag)."""
    return argument.startswith("--") or re.match(r"^-[a-zA-Z]", argument) is not None


def check_command_line(fn: Callable, args: Sequence[str]) -> None:
    """ConfigError naming the first flag `fn` does not take (with the closest valid one), or a stray argument."""
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    given: set[str] = set()
    positional: list[str] = []
    skip_next = False
    for index, argument in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if argument == "--":  # what follows is fire's own flags
            for extra in args[index + 1 :]:
                if not _is_flag(extra) or extra.lstrip("-").split("=")[0] not in FIRE_FLAGS:
                    raise ConfigError(f"unknown fire flag {extra!r} after '--'. Valid: --{', --'.join(FIRE_FLAGS)}")
            break
        if not _is_flag(argument):
            positional.append(argument)
            continue
        key = argument.lstrip("-").split("=", 1)[0].replace("-", "_")
        bool_syntax = "=" not in argument and (index + 1 == len(args) or _is_flag(args[index + 1]))
        if len(key) == 1 and key not in names:  # fire's shortcut: the one parameter starting with that letter
            matches = [name for name in names if name.startswith(key)]
            key = matches[0] if len(matches) == 1 else key
        if key in names:
            given.add(key)
        elif bool_syntax and key.startswith("no") and key[2:] in names:
            given.add(key[2:])
        else:
            closest = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"did you mean --{closest[0]}? " if closest else ""
            raise ConfigError(f"unknown flag {argument.split('=')[0]!r}: {hint}Valid flags: --{', --'.join(names)}")
        skip_next = "=" not in argument and not bool_syntax  # `--flag value`
    # A bare value would fill the first free parameter (`main 3` sets --seed): every value names its
    # flag, except the names a CLI takes as a list (`build_models tiny-llama-weak`).
    if positional and not takes_varargs:
        raise ConfigError(f"unexpected argument {positional[0]!r}: every value needs its flag (--name=value)")


# ---------------------------------------------------------------------------------------------
# Flag values: types and valid ranges, declared in the signature
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Valid:
    """The values a flag takes beyond its type: bounds on a number, or a fixed set of choices."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    inside: bool = False  # a name under a folder the project writes in: it must stay inside that folder

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.inside:
            parts = PurePath(value).parts
            return bool(parts) and not PurePath(value).is_absolute() and ".." not in parts
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.inside:
            return "a relative path that stays inside its folder (no '..')"
        low = f"({self.gt:g}" if self.gt is not None else f"[{self.ge:g}" if self.ge is not None else None
        high = f"{self.lt:g})" if self.lt is not None else f"{self.le:g}]" if self.le is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>' if low[0] == '(' else '>='} {low[1:]}"
        return f"{'<' if high[-1] == ')' else '<='} {high[:-1]}" if high else ""


POSITIVE = Valid(gt=0)
NON_NEGATIVE = Valid(ge=0)
FRACTION = Valid(gt=0, le=1)  # a share of rows or pairs: some, at most all
UNIT = Valid(ge=0, le=1)  # a probability or a share that may be 0
INSIDE = Valid(inside=True)
# Where the training CLIs also send their logs (core.run_config.report_target); train_log.jsonl is always kept.
REPORT_TO = Valid(choices=("tensorboard", "wandb", "none"))


@dataclass(frozen=True)
class FlagType:
    """A flag's declaration, read from its annotation: the plain types it takes, None or not, and `Valid`."""

    types: tuple[type, ...]
    optional: bool
    valid: Valid | None

    def describe(self) -> str:
        if self.valid is not None and (self.valid.choices is not None or self.valid.inside):
            text = self.valid.describe()
        else:
            text = " or ".join(_NAMES[t] for t in self.types)
            if self.valid is not None:
                text += " " + self.valid.describe()
        return text + (" or None" if self.optional else "")

    def check(self, name: str, value: Any) -> Any:
        """The value to pass on (a number given for a text flag becomes its text), or ConfigError."""
        if value is None and self.optional:
            return value
        if str in self.types and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # fire reads `--sweep_subfolder=2024` as a number
        ok = any(_is_a(value, t) for t in self.types)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if ok and self.valid is not None and not isinstance(value, bool):
            ok = self.valid.admits(value)
        if not ok:
            raise ConfigError(f"--{name} must be {self.describe()}, got {value!r}")
        return value


_NAMES = {bool: "True or False", int: "an integer", float: "a finite number", str: "text"}


def _is_a(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def flag_types(fn: Callable) -> dict[str, FlagType]:
    """Every parameter's declaration; a parameter without a plain type (`*names`) has none."""
    hints = typing.get_type_hints(fn, include_extras=True)
    out = {}
    for name, hint in hints.items():
        if name == "return":
            continue
        valid = None
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            valid = next((e for e in extras if isinstance(e, Valid)), None)
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        plain = tuple(t for t in members if t in (bool, int, float, str))
        if plain:
            out[name] = FlagType(plain, type(None) in members, valid)
    return out


def checked(fn: Callable) -> Callable:
    """`fn` that first checks every flag, given or default, against its declaration; fire's help
    shows each flag's declaration as its type."""
    declared = flag_types(fn)
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            if name not in declared:
                continue
            if signature.parameters[name].kind == inspect.Parameter.VAR_POSITIONAL:  # `*names`: each one
                bound.arguments[name] = tuple(declared[name].check(name, v) for v in value)
            else:
                bound.arguments[name] = declared[name].check(name, value)
        return fn(*bound.args, **bound.kwargs)

    shown = {name: types.SimpleNamespace(__qualname__=flag.describe()) for name, flag in declared.items()}
    run.__signature__ = signature.replace(
        parameters=[p.replace(annotation=shown.get(p.name, p.annotation)) for p in signature.parameters.values()]
    )
    return run


# ---------------------------------------------------------------------------------------------
# Flags dataclasses: each flag a field with its type, default and one-line help
# ---------------------------------------------------------------------------------------------


REQUIRED: Any = MISSING  # the default of a flag that has none: it must be given


def flag(default: Any, help: str) -> Any:
    """A field of a flags dataclass: its default and its one-line help (`--help` shows it); its type
    and valid values are the field's annotation, as in a signature."""
    return field(default=default, metadata={"help": help})


def alias(of: str, help: str) -> Any:
    """A field that is another flag's second name (the reference's spelling): None unless given."""
    return field(default=None, metadata={"help": help, "alias_of": of})


def merge_aliases(flags: Any) -> Any:
    """`flags` with each given alias's value on the flag it names, and each alias then equal to it.
    Both given with different values: ConfigError (neither silently wins)."""
    aliases = {f.name: f.metadata["alias_of"] for f in fields(flags) if "alias_of" in f.metadata}
    merged = {target: getattr(flags, target) for target in aliases.values()}
    for name, target in aliases.items():
        value = getattr(flags, name)
        if value is None:
            continue
        if merged[target] is not None and merged[target] != value:
            raise ConfigError(f"--{name}={value} contradicts --{target}={merged[target]}: {name} is {target}'s alias")
        merged[target] = value
    return replace(flags, **merged, **{name: merged[target] for name, target in aliases.items()})


def _is_flags(hint: Any) -> bool:
    return isinstance(hint, type) and is_dataclass(hint)


def expand_flags(fn: Callable) -> Callable:
    """`fn` with each parameter annotated by a flags dataclass spread into that dataclass's fields, in
    its place: the result takes them as flags (for fire, `checked` and `flag_table`, each with its
    field's annotation and default) and calls `fn` with one instance per dataclass. Each field's help
    joins the `Args:` section of the docstring (which, if `fn` has one, ends it), where fire's help
    shows it beside the flag."""
    hints = typing.get_type_hints(fn, include_extras=True)
    own = inspect.signature(fn)
    params, annotations, helps, groups = [], {}, [], {}
    for p in own.parameters.values():
        if not _is_flags(hints.get(p.name)):
            params.append(p)
            annotations[p.name] = hints.get(p.name, p.annotation)
            continue
        groups[p.name] = hints[p.name]
        field_hints = typing.get_type_hints(hints[p.name], include_extras=True)
        for f in fields(hints[p.name]):
            default = inspect.Parameter.empty if f.default is MISSING else f.default
            params.append(inspect.Parameter(f.name, p.kind, default=default, annotation=field_hints[f.name]))
            annotations[f.name] = field_hints[f.name]
            helps.append(f"    {f.name}: {f.metadata.get('help', '')}")
    signature = own.replace(parameters=params)

    def cli(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        call = {name: values[name] for name in own.parameters if name not in groups}
        for name, cls in groups.items():
            call[name] = cls(**{f.name: values[f.name] for f in fields(cls)})
        return fn(**call)

    doc = inspect.cleandoc(fn.__doc__ or "")
    if "\nArgs:\n" not in f"\n{doc}\n":
        doc += "\n\nArgs:"
    cli.__doc__ = doc + "\n" + "\n".join(helps)
    cli.__name__, cli.__qualname__, cli.__module__ = fn.__name__, fn.__qualname__, fn.__module__
    cli.__signature__ = signature  # type: ignore[attr-defined]
    cli.__annotations__ = annotations
    return cli


def flag_table(fn: Callable, module: str) -> list[str]:
    """The Markdown rows of `fn`'s flags: CLI module, flag, type and valid values, default."""
    params = inspect.signature(fn).parameters
    rows = []
    for name, flag in flag_types(fn).items():
        if params[name].kind == inspect.Parameter.VAR_POSITIONAL:  # bare values, each declared alike
            rows.append(f"| `{module}` | `{name}...` (values) | {flag.describe()}, each | none |")
            continue
        default = params[name].default
        shown = "required" if default is inspect.Parameter.empty else f"`{default!r}`"
        rows.append(f"| `{module}` | `--{name}` | {flag.describe()} | {shown} |")
    return rows


def run_cli(fn: Callable, args: Sequence[str] | None = None) -> None:
    import fire

    args = list(sys.argv[1:] if args is None else args)
    try:
        command = checked(fn)
        if any(argument in HELP_FLAGS for argument in args):
            fire.Fire(command, command=["--help"])  # prints the help and exits 0; runs nothing
            return
        check_command_line(fn, args)
        fire.Fire(command, command=args, serialize=lambda result: None if isinstance(result, dict) else result)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a full disk or a folder that cannot be written is the user's to fix, not a bug
        line = storage_error(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


def storage_error(e: BaseException) -> str | None:
    """One line for a write the disk refused: full (with what is free where), or read-only.

    safetensors reports a full disk as a SafetensorError whose text holds the OS error; every write of
    this project goes to a temporary name first, so what was refused was never taken for a result."""
    full = disk_full(e)
    denied = getattr(e, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM)
    if not (full or denied):
        return None
    target = getattr(e, "filename", None)
    if full:
        folder = Path(target).parent if target else Path.cwd()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free / 2**20
        reason = getattr(e, "strerror", None) or str(e)
        return (f"the disk is full writing {target or '(unknown)'}: {reason}; {free:.0f} MiB free in {folder}; "
                "free space there, or choose a results folder on a larger disk")  # fmt: skip
    return f"cannot write {target}: {e.strerror}; choose a folder you can write to"
