"""Sampling draws from the model's own distribution, and both backends get the same settings.

The reference is the model's full softmax over the vocabulary at the last prompt position, computed
here by a plain forward pass; the sampler's empirical distribution of the first answer token must be
within sampling noise of it (total variation), at temperature 1 and below, with and without top-k/top-p.
"""

from __future__ import annotations

import types
from collections import Counter

import pytest
import torch

from iterative_label_refinement.core.generation import VLLMModel, generate_answers, hf_sampling, vllm_sampling
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.prompts import format_prompt
from iterative_label_refinement.core.settings import ConfigError

QUESTION = "What is 2 plus 3?"
N = 20_000  # total-variation noise for ~100 tokens is about 0.03 at this many samples


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", dropout=False).eval(), load_tokenizer("tiny-random")


def next_token_probs(model, tok, temperature: float) -> torch.Tensor:
    ids = tok(format_prompt(QUESTION), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**ids).logits[0, -1].float()
    return torch.softmax(logits / temperature, -1)


def empirical(model, tok, temperature: float, **kwargs) -> torch.Tensor:
    gens = generate_answers(model, tok, [QUESTION], max_new_tokens=1, temperature=temperature, num_samples=N,
                            batch_size=1, seed=3, **kwargs)  # fmt: skip
    # An answer that is only EOS comes back empty (EOS is stripped).
    counts = Counter(ids[0] if ids else tok.eos_token_id for ids in gens.token_ids[0])
    freq = torch.zeros(model.config.vocab_size)
    for token, c in counts.items():
        freq[token] = c / N
    return freq


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


def truncate(p: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    out = torch.where(keep, p, torch.zeros_like(p))
    return out / out.sum()


def test_sampling_at_temperature_1_reaches_the_whole_vocabulary(tiny):
    model, tok = tiny
    p = next_token_probs(model, tok, 1.0)
    assert p.min() > 0.5 / len(p)  # a near-uniform model: every token is likely enough to be seen
    top50 = truncate(p, p >= p.topk(50).values[-1])
    assert tv(p, top50) > 0.3  # the library's default top-k of 50 would be far off

    freq = empirical(model, tok, 1.0)
    assert (freq > 0).all(), f"{int((freq == 0).sum())} tokens never sampled"
    assert tv(freq, p) < 0.05


def test_sampling_below_temperature_1_follows_the_tempered_softmax(tiny):
    model, tok = tiny
    peaked = load_model("tiny-random", dropout=False).eval()
    with torch.no_grad():
        peaked.lm_head.weight.mul_(15)  # logits spread over several units: temperature matters
    p07, p1 = next_token_probs(peaked, tok, 0.7), next_token_probs(peaked, tok, 1.0)
    assert tv(p07, p1) > 0.1
    freq = empirical(peaked, tok, 0.7)
    assert tv(freq, p07) < 0.05


def test_top_k_and_top_p_truncate_only_when_asked(tiny):
    model, tok = tiny
    p = next_token_probs(model, tok, 1.0)
    top5 = truncate(p, p >= p.topk(5).values[-1])
    freq = empirical(model, tok, 1.0, top_k=5)
    assert set(freq.nonzero().flatten().tolist()) == set(top5.nonzero().flatten().tolist())
    assert tv(freq, top5) < 0.03

    # Nucleus: the smallest set of most likely tokens whose mass reaches top_p.
    order = p.argsort(descending=True)
    cumulative = p[order].cumsum(0)
    n_keep = int((cumulative < 0.3).sum()) + 1
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order[:n_keep]] = True
    freq = empirical(model, tok, 1.0, top_p=0.3)
    assert set(freq.nonzero().flatten().tolist()) == set(keep.nonzero().flatten().tolist())
    assert tv(freq, truncate(p, keep)) < 0.05


@pytest.mark.parametrize("top_k, top_p", [(-1, 1.0), (2.5, 1.0), (0, 0.0), (0, 1.5), (True, 1.0)])
def test_bad_sampling_settings_are_refused(tiny, top_k, top_p):
    model, tok = tiny
    with pytest.raises(ConfigError, match="top_"):
        generate_answers(model, tok, [QUESTION], max_new_tokens=1, temperature=1.0, top_k=top_k, top_p=top_p)


def test_hf_settings_name_every_neutral_value():
    """Unset values would be filled from the checkpoint's generation config, then top_k=50."""
    sampled = hf_sampling(0.7)
    assert sampled == dict(do_sample=True, num_beams=1, temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
                           epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                           min_new_tokens=0)  # fmt: skip
    assert hf_sampling(0.0, num_beams=4) == dict(do_sample=False, num_beams=4, repetition_penalty=1.0,
                                                 no_repeat_ngram_size=0, min_new_tokens=0)  # fmt: skip
    assert hf_sampling(1.0, top_k=7, top_p=0.9)["top_k"] == 7


def test_vllm_backend_receives_the_same_settings(tiny, install_vllm, tmp_path):
    """A stand-in vLLM records what `SamplingParams` and `generate` get (vLLM itself needs a GPU)."""
    _, tok = tiny
    seen: dict = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            seen["params"] = kwargs

    class LLM:
        def __init__(self, **kwargs):
            seen["llm"] = kwargs

        def get_tokenizer(self):
            return tok

        def generate(self, inputs, params, lora_request=None):
            seen["inputs"], seen["lora"] = inputs, lora_request
            out = types.SimpleNamespace(text="#### 5", token_ids=[7, 8])
            return [types.SimpleNamespace(outputs=[out] * seen["params"]["n"]) for _ in inputs]

    install_vllm(LLM, SamplingParams)

    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    model = VLLMModel("base", str(tmp_path))
    gens = generate_answers(model, tok, [QUESTION, "q2"], max_new_tokens=9, temperature=0.7, num_samples=6, seed=4,
                            backend="vllm")  # fmt: skip
    assert seen["params"] == dict(n=6, max_tokens=9, seed=4, temperature=0.7, top_k=-1, top_p=1.0, min_p=0.0,
                                  repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, min_tokens=0)  # fmt: skip
    assert gens.texts == [["#### 5"] * 6] * 2
    # Prompts are tokenised as in training: the template, no special tokens added.
    assert seen["inputs"][0]["prompt_token_ids"] == tok(format_prompt(QUESTION), add_special_tokens=False)["input_ids"]
    assert seen["lora"].args == ("adapter", 1, str(tmp_path))

    # Same meaning on both backends: vLLM's "top-k off" is -1 where Hugging Face's is 0.
    for temperature, top_k, top_p in [(0.7, 0, 1.0), (1.0, 5, 0.9)]:
        hf, vl = hf_sampling(temperature, top_k, top_p), vllm_sampling(temperature, top_k, top_p)
        assert (hf["temperature"], hf["top_p"], hf["min_p"], hf["repetition_penalty"]) == (
            vl["temperature"], vl["top_p"], vl["min_p"], vl["repetition_penalty"])  # fmt: skip
        assert vl["top_k"] == (top_k if top_k else -1)

    with pytest.raises(ConfigError, match="beam search runs on the 'hf' backend only"):
        generate_answers(model, tok, [QUESTION], max_new_tokens=9, num_beams=4, backend="vllm")


def test_generation_prompts_follow_the_models_bos_policy(tiny, monkeypatch):
    """With the BOS switch on, generation sees [BOS] + prompt ids, as training did (left-padded)."""
    from iterative_label_refinement.core.models import BOS_FLAG

    model, _ = tiny
    tok = load_tokenizer("tiny-random")
    seen = []
    real_generate = model.generate

    def spy(**kwargs):
        seen.append((kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()))
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    questions = [QUESTION, "another, longer question?"]
    for bos in (False, True):
        tok.init_kwargs[BOS_FLAG] = bos
        seen.clear()
        generate_answers(model, tok, questions, max_new_tokens=2)
        ((ids, mask),) = seen
        for q in questions:
            expected = [tok.bos_token_id] * bos + tok(format_prompt(q), add_special_tokens=False)["input_ids"]
            rows = [[t for t, m in zip(r, k) if m] for r, k in zip(ids, mask)]
            assert expected in rows
        assert all(k[-1] == 1 for k in mask)  # left padding: every prompt ends at the last position


def test_generation_in_one_batch_shows_its_progress_bar(tiny, capsys):
    """All prompts in one batch: the bar still shows, counted in prompts (it once showed nothing then)."""
    model, tok = tiny
    generate_answers(model, tok, [QUESTION, "What is 4 plus 1?"], max_new_tokens=2, batch_size=8, desc="labels")
    err = capsys.readouterr().err
    assert "labels: 100%" in err and "2/2" in err, err
