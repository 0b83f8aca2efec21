"""The GPU paths, simulated on a CPU: a fake `torch.cuda` (compute capability, memory) and a stand-in vLLM.

No GPU runs these paths in CI; each test here fails on code that would fail on the first GPU run:
vLLM started while the trained model still holds its memory, with a fixed share of it; bf16 on
cards before Ampere (which `torch.cuda.is_bf16_supported` accepts by emulation, and vLLM refuses);
a classifier's trained `score` head left in bf16; LoRA ranks vLLM cannot serve, and beam search
with vLLM, found only once the model is trained; a full fine-tune served as a LoRA adapter over the
untrained base; a GPU check that installed vLLM at run time and passed without it.
"""

from __future__ import annotations

import gc
import os
import subprocess
import types
import weakref
from pathlib import Path

import pytest
import torch

from iterative_label_refinement.core import devices, generation, models
from iterative_label_refinement.core.generation import GIB, VLLMModel, vllm_memory_share, vllm_need
from iterative_label_refinement.core.models import get_model_config, load_model, resolve_model_path
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import main as main_module

VLLM_RANKS = [1, 8, 16, 32, 64, 128, 256, 320, 512]  # vllm.config.lora's MaxLoRARanks


class FakeGPU:
    """One CUDA card as `torch.cuda` shows it. Its free memory is `total` less the CUDA context, the
    objects `hold` registers while they live, and, once they die, PyTorch's cache of their memory
    until `empty_cache` returns it (as PyTorch's caching allocator does)."""

    def __init__(self, capability: tuple[int, int], total: int = 16 * GIB, context: int = 2 * GIB):
        self.capability, self.total, self.context = capability, total, context
        self.live = self.cached = 0

    def hold(self, obj, nbytes: int) -> None:
        self.live += nbytes
        weakref.finalize(obj, self._died, nbytes)

    def _died(self, nbytes: int) -> None:
        self.live -= nbytes
        self.cached += nbytes

    def mem_get_info(self, device=None) -> tuple[int, int]:
        return self.total - self.context - self.live - self.cached, self.total

    def empty_cache(self) -> None:
        self.cached = 0

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: self.capability)
        # True on every card, as torch says (by emulation) on a V100: what capability 7.0 must not be taken for.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(torch.cuda, "mem_get_info", self.mem_get_info)
        monkeypatch.setattr(torch.cuda, "empty_cache", self.empty_cache)
        monkeypatch.setattr(models, "default_device", lambda: torch.device("cpu"))  # the weights stay on the CPU


# Weak references to the objects a stand-in vLLM engine checks for at its start (the trained model).
WATCHED: list[weakref.ref] = []


@pytest.fixture
def fake_vllm(install_vllm):
    """A stand-in `vllm` package; `seen` gets each engine's arguments and what it found at its start: the
    free GPU memory, and whether an object of WATCHED was still alive."""
    seen: list[dict] = []
    WATCHED.clear()

    class LLM:
        def __init__(self, **kwargs):
            alive = any(ref() is not None for ref in WATCHED)
            seen.append(dict(kwargs=kwargs, free=torch.cuda.mem_get_info()[0], alive=alive, requests=[]))

        def generate(self, inputs, params, lora_request=None):
            seen[-1]["requests"].append(lora_request.args[2] if lora_request else None)
            out = types.SimpleNamespace(text="#### 5", token_ids=[7, 8])
            return [types.SimpleNamespace(outputs=[out] * params.kwargs["n"]) for _ in inputs]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    install_vllm(LLM, SamplingParams)
    return seen


# ---------------------------------------------------------------------------------------------
# The hand-off to vLLM: the trained model released, the share of memory chosen from what is free
# ---------------------------------------------------------------------------------------------

TINY = dict(ds_name="toy_arith", model_size="tiny-random", n_docs=16, n_test_docs=4, batch_size=8, epochs=1,
            minibatch_size_per_device=8, num_beams=1, inference_backend="vllm")  # fmt: skip


@pytest.mark.parametrize(("capability", "lora_rank", "dtype"), [((8, 0), 8, "bfloat16"), ((7, 0), 0, "float16")])
def test_vllm_starts_on_the_memory_the_trained_model_held(tmp_path, monkeypatch, fake_vllm, capability, lora_rank,
                                                          dtype):  # fmt: skip
    """The run trains on the CPU; then a 16 GiB card appears, on which the trained model held 6 GiB
    and the CUDA context 2 GiB. At the engine's start the model is gone and its memory back on the
    card: 14 GiB free, so the share is floor(100 x (14 - 1) / 16) / 100 = 0.81 (1 GiB kept for the
    engine's own process), not --gpu_usage's 0.9, which vLLM would refuse (0.9 x 16 = 14.4 > 14)."""
    gpu = FakeGPU(capability)
    real_train_or_load = main_module._train_or_load

    def train_then_gpu(*args, **kwargs):
        model, tokenizer = real_train_or_load(*args, **kwargs)
        WATCHED.append(weakref.ref(model))
        gpu.install(monkeypatch)
        gpu.hold(model, 6 * GIB)
        return model, tokenizer

    monkeypatch.setattr(main_module, "_train_or_load", train_then_gpu)
    out = main_module.main(results_folder=str(tmp_path), lora_rank=lora_rank, **TINY)
    run_dir = Path(out["save_path"])
    (engine,) = fake_vllm
    assert engine["alive"] is False  # no reference kept the trained model alive
    assert engine["free"] == 14 * GIB and engine["kwargs"]["gpu_memory_utilization"] == 0.81
    assert engine["kwargs"]["dtype"] == dtype
    if lora_rank:  # the base with the run's adapter, of the run's rank
        assert engine["kwargs"]["model"] == resolve_model_path("tiny-random")
        assert engine["kwargs"]["enable_lora"] is True and engine["kwargs"]["max_lora_rank"] == 8
        assert set(engine["requests"]) == {str(run_dir)}
    else:  # the fully trained weights are the model: no adapter over the untrained base
        assert engine["kwargs"]["model"] == str(run_dir) and not engine["kwargs"].get("enable_lora")
        assert set(engine["requests"]) == {None}
    assert out["n_test"] == 4


def test_the_share_of_memory_by_hand():
    m = generation.VLLM_START_MARGIN
    assert m == GIB
    assert vllm_memory_share(14 * GIB, 16 * GIB, GIB, cap=0.9) == 0.81  # 13/16 = 0.8125, rounded down
    assert vllm_memory_share(79.5 * GIB, 80 * GIB, GIB, cap=0.9) == 0.9  # 78.5/80 = 0.98: --gpu_usage caps it
    # The edge: 16 GiB + the margin free on 64 GiB gives 0.25 x 64 = 16 GiB, exactly a 16 GiB need.
    assert vllm_memory_share(17 * GIB, 64 * GIB, 16 * GIB, cap=0.9) == 0.25
    with pytest.raises(ConfigError) as refused:  # one byte less: 0.24 x 64 = 15.36 GiB
        vllm_memory_share(17 * GIB - 1, 64 * GIB, 16 * GIB, cap=0.9)
    with pytest.raises(ConfigError) as refused:
        vllm_memory_share(10 * GIB, 80 * GIB, 15 * GIB, cap=0.9)
    line = str(refused.value)
    assert "\n" not in line and "10.0 GiB free of 80.0 GiB" in line and "needs 15.0 GiB" in line, line


def test_the_free_memory_is_measured_after_the_collector_and_the_cache(monkeypatch):
    """A model kept alive only by a reference cycle (a trainer and its callbacks) is freed by the collector;
    its memory then sits in PyTorch's cache until `empty_cache`. Both come before the measurement."""
    gpu = FakeGPU((9, 0), total=80 * GIB, context=GIB)
    gpu.install(monkeypatch)

    class Trainer:
        pass

    trainer = Trainer()
    trainer.me = trainer  # a cycle: only the collector frees it
    gpu.hold(trainer, 60 * GIB)
    gc.disable()  # the collector runs when the hand-off calls it, not on its own
    try:
        del trainer
        assert gpu.mem_get_info()[0] == 19 * GIB
        assert generation.vllm_gpu_usage(GIB, cap=0.9) == 0.9  # (79 - 1) / 80 = 0.975, capped at 0.9
    finally:
        gc.enable()


def test_a_cpu_refuses_the_vllm_hand_off(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        generation.vllm_gpu_usage(GIB, cap=0.9)


def test_vllm_need_by_hand(monkeypatch):
    """A Llama of hidden 64, 2 layers, 4 heads of dim 16 (2 KV heads), MLP 128, vocabulary 100, untied:
    embeddings 100x64 = 6,400; per layer q 64x64 + k, v 64x32 each + o 64x64 + gate, up, down 64x128
    each + 2 norms of 64 = 36,992; a final norm of 64; the head 6,400: 86,848 weights. The KV cache of
    one 256-token sequence: 2 x 2 layers x 2 heads x 16 x 256 = 32,768 values. LoRA's are not vLLM's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from iterative_label_refinement.core.train import add_lora

    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=100, max_position_embeddings=256,
                         tie_word_embeddings=False)  # fmt: skip
    model = add_lora(LlamaForCausalLM(config), 8)
    assert vllm_need(model) == 86_848 * 4 + 32_768 * 4  # a CPU: float32
    FakeGPU((8, 0)).install(monkeypatch)
    assert vllm_need(model) == 86_848 * 2 + 32_768 * 2  # bfloat16


# ---------------------------------------------------------------------------------------------
# One dtype policy, by compute capability
# ---------------------------------------------------------------------------------------------

# capability -> (autocast, frozen LoRA base, vLLM): trained weights are float32 everywhere.
POLICY = {
    (7, 0): ("fp16", torch.float32, "float16"),  # V100: no native bf16
    (8, 0): ("bf16", torch.bfloat16, "bfloat16"),  # A100
    (9, 0): ("bf16", torch.bfloat16, "bfloat16"),  # H100
}


@pytest.mark.parametrize("capability", sorted(POLICY))
def test_the_dtype_policy_by_capability(monkeypatch, fake_vllm, tmp_path, capability):
    from iterative_label_refinement.core import train_evaluator
    from iterative_label_refinement.core.train import add_lora

    autocast, frozen, served = POLICY[capability]
    FakeGPU(capability).install(monkeypatch)
    assert devices.mixed_precision() == autocast
    # The HF backend: a LoRA base loads frozen in its dtype, a full fine-tune in float32.
    lora = add_lora(load_model("tiny-random"), 4)
    assert lora.base_model.model.dtype == frozen
    assert {p.dtype for p in lora.parameters() if p.requires_grad} == {torch.float32}
    assert load_model("tiny-random", full_finetune=True).dtype == torch.float32
    # The LoRA evaluator: adapters and its new score head float32; a full fine-tune float32 throughout.
    evaluator = train_evaluator._model(get_model_config("tiny-random"), "classifier", 4, 2)
    trained = {n: p.dtype for n, p in evaluator.named_parameters() if p.requires_grad}
    assert any(".score." in n for n in trained) and set(trained.values()) == {torch.float32}, trained
    assert {
        p.dtype for p in train_evaluator._model(get_model_config("tiny-random"), "classifier", 0, 2).parameters()
    } == {torch.float32}
    # vLLM serves in the autocast dtype.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    VLLMModel("base", str(adapter))
    assert fake_vllm[-1]["kwargs"]["dtype"] == served


def test_the_dtype_policy_on_a_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.mixed_precision() == "no" and devices.vllm_dtype() == "float32"
    assert devices.default_dtype() == devices.default_dtype(full_finetune=True) == torch.float32


# ---------------------------------------------------------------------------------------------
# LoRA ranks vLLM can serve, refused at the door
# ---------------------------------------------------------------------------------------------


def test_the_lora_ranks_vllm_cannot_serve_are_refused_at_the_door(run_config, tmp_path):
    """Every rank vLLM takes passes, and 0 (a full fine-tune: no adapter); the others are refused, in one
    line naming the rank and the valid ones, before anything is written. The HF backend takes any rank."""
    flags = dict(ds_name="toy_arith", model_size="tiny-random", results_folder=str(tmp_path), num_beams=1)
    for rank in [0, 1, 2, 4, 7, 8, 9, 12, 16, 32, 48, 64, 100, 128, 256, 300, 320, 512, 513, 1024]:
        run_config(inference_backend="hf", lora_rank=rank, **flags)
        if rank == 0 or rank in VLLM_RANKS:
            run_config(inference_backend="vllm", lora_rank=rank, **flags)
            continue
        with pytest.raises(ConfigError) as refused:
            run_config(inference_backend="vllm", lora_rank=rank, **flags)
        line = str(refused.value)
        assert f"--lora_rank={rank} with --inference_backend=vllm" in line and str(VLLM_RANKS) in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_dpo_round_is_checked_on_the_rank_of_the_adapter_it_continues(run_config, tmp_path):
    adapter = tmp_path / "r0"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 12}')
    with pytest.raises(ConfigError, match=r"--dpo_path=.*r0 \(a rank-12 adapter\) with --inference_backend=vllm"):
        run_config(ds_name="toy_arith", model_size="tiny-random", do_dpo=True, round_id=1, dpo_path=str(adapter),
                   weak_labels_path=str(tmp_path / "weak"), lora_rank=64, label_temp=0.7, inference_backend="vllm")  # fmt: skip


def test_the_engine_refuses_an_adapter_of_another_rank(fake_vllm, tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 48}')
    with pytest.raises(ConfigError, match="not 48"):
        VLLMModel("base", str(tmp_path))
    assert fake_vllm == []  # refused before the engine starts


def test_beam_search_with_vllm_is_refused_at_the_door(run_config, tmp_path):
    """vLLM has no beam search: refused before training, not when the trained model first generates."""
    flags = dict(ds_name="toy_arith", model_size="tiny-random", results_folder=str(tmp_path), inference_backend="vllm")
    refusal = r"--num_beams=4: beam search runs on the 'hf' backend only; .* pass --num_beams=1"
    with pytest.raises(ConfigError, match=refusal):
        run_config(**flags)  # test evaluation decodes with the default 4 beams
    with pytest.raises(ConfigError, match=refusal):
        run_config(**flags, force_eval=False)  # and so do temperature-0 labels
    run_config(**flags, force_eval=False, label_temp=0.7)  # sampled labels alone use no beams
    run_config(**flags, num_beams=1)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The GPU check runs on a node without registry access, from pinned requirements
# ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all("==" in line for line in lines), [line for line in lines if "==" not in line]
    return {name.lower().replace("_", "-"): version for name, version in (line.split("==") for line in lines)}


def test_the_gpu_requirements_pin_vllm_over_the_tested_set():
    gpu, tested = pins(REPO / "requirements-gpu.txt"), pins(REPO / "requirements.txt")
    assert gpu["vllm"] == "0.30.0" and '"vllm==0.30.0"' in (REPO / "setup.py").read_text()
    # The tested set, but numpy: vLLM's mistral_common needs numpy < 2.4 on Python <= 3.12.
    assert {k: v for k, v in tested.items() if k != "numpy"} == {k: gpu[k] for k in tested if k != "numpy"}
    assert tuple(int(part) for part in gpu["numpy"].split(".")[:2]) < (2, 4)


def test_the_gpu_check_installs_nothing_and_fails_without_vllm(tmp_path):
    """A node without registry access once skipped the vLLM step (installed at run time) and passed."""
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    assert "pip install" not in script and "SKIP" not in script
    no_vllm = tmp_path / "python"
    no_vllm.write_text("#!/bin/sh\nexit 1\n")  # a Python where `import vllm` fails
    no_vllm.chmod(0o755)
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PY": str(no_vllm), "OUT_DIR": str(tmp_path / "out")})  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert (tmp_path / "out" / "summary.txt").read_text().startswith("FAIL: ") and "make gpu-setup" in run.stdout
