"""Build the named tiny models into the cache now (each once; later calls only print the path).

    python -m iterative_label_refinement.experiments.build_models tiny-llama-weak tiny-llama-strong

Every CLI builds a tiny model on first use anyway; this lets a script build them up front, e.g. two
at once on two cores (`scripts/demo.sh`). Registered hub models and local dirs need no build.
"""

from __future__ import annotations

from iterative_label_refinement.core.models import resolve_model_path


def main(*model_sizes: str) -> None:
    """Print the path `from_pretrained` gets for each model, building the tiny ones first."""
    for name in model_sizes:
        print(resolve_model_path(name))


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
