"""The thin `fire` wrapper of every CLI: bad input becomes one clear line and exit status 2.

Before fire runs anything, the command line is checked against the function's signature: fire
itself would pass a mistyped flag (`--max_replac=0.5`) on to the function's result, after the step
had run with defaults, and treats a `--help` after other flags as just another argument. So an
unknown flag is refused with the closest valid one, and `--help`/`-h` anywhere shows the help and
runs nothing.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from collections.abc import Callable, Sequence

from iterative_label_refinement.core.common import ConfigError

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
    positional_slots = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
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
    free_slots = [name for name in positional_slots if name not in given]
    if positional and not takes_varargs and len(positional) > len(free_slots):
        stray = positional[len(free_slots)]
        raise ConfigError(f"unexpected argument {stray!r}: every value needs its flag (--name=value)")


def run_cli(fn: Callable, args: Sequence[str] | None = None) -> None:
    import fire

    args = list(sys.argv[1:] if args is None else args)
    try:
        if any(argument in HELP_FLAGS for argument in args):
            fire.Fire(fn, command=["--help"])  # prints the help and exits 0; runs nothing
            return
        check_command_line(fn, args)
        fire.Fire(fn, command=args, serialize=lambda result: None if isinstance(result, dict) else result)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
