"""Shipped tiny bases: hashes, installation into the cache, checks on every load, and rebuilds."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from iterative_label_refinement.core import models
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import build_models
from iterative_label_refinement.toy import tiny_models

# A reduced recipe: a few pretraining steps of a 2-layer model, seconds to build.
SPEC = tiny_models.TinySpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, pretrain_steps=6,
                            pretrain_stop=5, prompt_steps=2, init_seed=7)  # fmt: skip
NAME = "tiny-test-shipped"


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ILR_CACHE_PATH", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def shipped(tmp_path):
    """NAME registered with shipped weights built here from the reduced recipe."""
    tiny_models.build_tiny_model(SPEC, tmp_path / "built")
    weights = tmp_path / "weights"
    weights.mkdir()
    file = weights / f"{NAME}-{tiny_models.recipe_id(SPEC)}.safetensors"
    file.write_bytes((tmp_path / "built" / "model.safetensors").read_bytes())
    tiny_models.register_tiny(NAME, SPEC, sha256=sha256(file), weights_dir=weights)
    yield file
    for registry in (models.MODELS_DICT, tiny_models.TINY_SPECS, tiny_models.SHIPPED):
        registry.pop(NAME, None)


def test_every_shipped_base_is_its_recipe_and_its_registered_hash():
    assert set(tiny_models.SHIPPED) == {"tiny-llama-weak", "tiny-llama-strong"}
    for name, s in tiny_models.SHIPPED.items():
        # The file is named by the recipe it was built from: editing a recipe without reshipping breaks this.
        assert s.file.name == f"{name}-{tiny_models.recipe_id(tiny_models.TINY_SPECS[name])}.safetensors"
        assert sha256(s.file) == s.sha256
        assert s.file.stat().st_size < 5_000_000


def test_the_real_bases_install_from_the_package_into_an_empty_cache(cache):
    for name, s in tiny_models.SHIPPED.items():
        path = type(cache)(models.resolve_model_path(name))
        assert path.parent == cache / "tiny"
        assert sha256(path / "model.safetensors") == s.sha256  # the shipped bytes, not a rebuild


def test_install_loads_the_shipped_tensors_and_checks_them_on_every_load(shipped, cache):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path = type(cache)(models.resolve_model_path(NAME))
    assert (path / "model.safetensors").read_bytes() == shipped.read_bytes()
    model = AutoModelForCausalLM.from_pretrained(path)
    for key, tensor in load_file(str(shipped)).items():
        assert torch.equal(model.state_dict()[key], tensor), key

    # A corrupted cache copy is refused, naming the file, on the next load.
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"cached weights {path / 'model.safetensors'} of {NAME} is corrupted"):
        models.resolve_model_path(NAME)


def test_a_corrupted_or_missing_shipped_file_is_refused_before_anything_is_installed(shipped, cache):
    data = bytearray(shipped.read_bytes())
    data[100] ^= 1
    shipped.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"shipped weights {shipped} of {NAME} is corrupted: sha256 [0-9a-f]{{64}}"):
        models.resolve_model_path(NAME)
    assert not any((cache / "tiny").glob(f"{NAME}-*/config.json"))
    shipped.unlink()
    with pytest.raises(ConfigError, match=f"shipped weights {shipped} of {NAME} is missing"):
        models.resolve_model_path(NAME)


def test_rebuild_reproduces_the_shipped_weights_bit_for_bit(shipped, tmp_path, capsys):
    build_models.main(NAME, rebuild=True, out=str(tmp_path / "out"))
    assert (
        f"{NAME}: rebuilt into {tmp_path / 'out' / NAME}, sha256 {sha256(shipped)}: identical"
        in capsys.readouterr().out
    )
    with pytest.raises(ConfigError, match="exists; rebuilds never overwrite"):
        build_models.main(NAME, rebuild=True, out=str(tmp_path / "out"))
    # Weights from another machine: the rebuild says so and fails.
    tiny_models.SHIPPED[NAME] = tiny_models.Shipped(NAME, shipped, "0" * 64)
    with pytest.raises(SystemExit) as exit_info:
        build_models.main(NAME, rebuild=True)
    assert exit_info.value.code == 1
    assert "differs from the shipped weights (" + "0" * 64 in capsys.readouterr().out


def test_rebuild_needs_tiny_model_names():
    with pytest.raises(ConfigError, match=r"--rebuild needs tiny model names, got \['google/gemma-2b'\]; valid: "):
        build_models.main("google/gemma-2b", rebuild=True)


def test_a_corrupted_cache_copy_is_one_clear_line_from_the_command_line(cache):
    path = type(cache)(models.resolve_model_path("tiny-llama-weak"))
    (path / "model.safetensors").write_bytes(b"not weights")
    env = {**os.environ, "ILR_CACHE_PATH": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.build_models",
                           "tiny-llama-weak"], capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"cached weights {path / 'model.safetensors'} of tiny-llama-weak is corrupted: sha256 "
            f"{hashlib.sha256(b'not weights').hexdigest()}, expected {tiny_models.SHIPPED['tiny-llama-weak'].sha256}; "
            "delete its folder to reinstall it"
        )
    )
