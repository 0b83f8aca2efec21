"""The toy world: an offline arithmetic task and tiny Llama bases, so the whole pipeline runs on a CPU.

`arithmetic` generates the task (registered as `toy_arith` in `core.datasets`); `tiny_models`
builds and registers the tiny bases (registered in `core.models`), whose shipped weights live in
`toy/weights`. Nothing of the paper's experiments depends on it.
"""
