"""The toy world: an offline arithmetic task and tiny Llama bases, so the whole pipeline runs on a CPU.

`arithmetic` generates the task and `task` registers it (`toy_arith`, in `core.datasets`); `tiny_models`
builds and registers the tiny bases (in `core.models`), whose shipped weights live in `toy/weights`.
Both are plug-ins (`iterative_label_refinement.plugins`): core never imports the toy world, and
nothing of the paper's experiments depends on it.
"""
