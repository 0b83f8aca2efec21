"""The plug-ins: the modules that register tasks and models into core's registries.

Core names no task and no toy model: `core.datasets` and `core.models` hold registries, and each
task (`tasks.<name>`, `toy.task`) and the toy world's models (`toy.tiny_models`) register themselves
when imported. Every entry point imports them through `load_plugins` before it looks anything up:
`iterative_label_refinement.experiments` on import (every experiment CLI), the CLIs in core with a
`__main__`, and the tests' conftest. A new task is one module that calls `register_dataset`, added
to `PLUGINS`.
"""

from __future__ import annotations

import importlib

PLUGINS = (
    "iterative_label_refinement.tasks.gsm8k",
    "iterative_label_refinement.tasks.bird",
    "iterative_label_refinement.tasks.saferpaca",
    "iterative_label_refinement.toy.task",
    "iterative_label_refinement.toy.tiny_models",
)


def load_plugins() -> None:
    """Import every plug-in (once: a module registers when it is first imported)."""
    for name in PLUGINS:
        importlib.import_module(name)
