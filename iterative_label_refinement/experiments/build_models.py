"""Put the named models into the cache now, or rebuild tiny models from their recipes.

    python -m iterative_label_refinement.experiments.build_models tiny-llama-weak tiny-llama-strong
    python -m iterative_label_refinement.experiments.build_models tiny-llama-weak --rebuild [--out=DIR]

Every CLI fills the cache on first use anyway (shipped tiny bases are installed from the package,
the others built); this lets a script do it up front. `--rebuild` pretrains each tiny model from its
recipe into DIR (default: a temporary folder, deleted after), never into the cache, and compares the
weights with the shipped ones: bit for bit on the machine that built them, while another CPU's float
rounding may give other weights. To ship new weights, copy `DIR/<name>/model.safetensors` to
`toy/weights/<name>-<recipe id>.safetensors` and register its sha256.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from iterative_label_refinement.core.models import resolve_model_path
from iterative_label_refinement.core.settings import ConfigError


def main(*model_sizes: str, rebuild: bool = False, out: str | None = None) -> None:
    """Print the path `from_pretrained` gets for each model; with `rebuild`, compare rebuilt weights."""
    if not rebuild:
        for name in model_sizes:
            print(resolve_model_path(name))
        return
    from iterative_label_refinement.toy import tiny_models

    unknown = [n for n in model_sizes if n not in tiny_models.TINY_SPECS]
    if unknown or not model_sizes:
        raise ConfigError(f"--rebuild needs tiny model names, got {list(model_sizes)}; valid: "
                          f"{sorted(tiny_models.TINY_SPECS)}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out else Path(tmp)
        differ = []
        for name in model_sizes:
            target = root / name
            if target.exists():
                raise ConfigError(f"--out: {target} exists; rebuilds never overwrite a model dir")
            sha = tiny_models.rebuild(name, tiny_models.TINY_SPECS[name], target)
            shipped = tiny_models.SHIPPED.get(name)
            if shipped is None:
                verdict = "no shipped weights to compare with"
            elif sha == shipped.sha256:
                verdict = "identical to the shipped weights"
            else:
                verdict = f"differs from the shipped weights ({shipped.sha256})"
                differ.append(name)
            print(f"{name}: rebuilt{' into ' + str(target) if out else ''}, sha256 {sha}: {verdict}")
    if differ:
        print(f"rebuilt weights differ from the shipped ones for {differ} (another CPU's float rounding "
              "changes pretraining; the shipped weights are what docs/toy_world.md's figures used)", file=sys.stderr)  # fmt: skip
        sys.exit(1)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
