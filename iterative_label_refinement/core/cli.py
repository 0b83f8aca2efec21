"""The thin `fire` wrapper of every CLI: bad input becomes one clear line and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from iterative_label_refinement.core.common import ConfigError


def run_cli(fn: Callable) -> None:
    import fire

    try:
        fire.Fire(fn, serialize=lambda result: None if isinstance(result, dict) else result)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
