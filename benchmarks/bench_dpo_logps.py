"""DPO's answer log-probs, every position vs answer positions only, and the reference pass's padding.

    .venv/bin/python benchmarks/bench_dpo_logps.py memory [--repeats=1] [--n_pairs=4] [--lora_rank=8]
    .venv/bin/python benchmarks/bench_dpo_logps.py padding [--n_pairs=1024] [--batch_sizes=4,8,16,32]

`memory`: SmolLM2-135M-Instruct (the packaged GGUF, 49,152-token vocabulary) with a LoRA adapter, on the
first `n_pairs` GSM8K training questions ($ILR_TEST_DATA/gsm8k, else ../shared/data/gsm8k): chosen = the
gold answer, rejected = the next question's gold answer. One forward and backward of the summed
log-probs per step, in four ways:

    dpo full:    the logits of every position, log-softmax over the vocabulary, masked (the code before)
    dpo answer:  `_pair_logps`: the logits of the answer positions only, logit - logsumexp
    sft full:    the chosen sequences through the model's own loss (`labels`: cross-entropy at every position)
    sft answer:  the same mean over the answer tokens, from the answer positions' logits only

Each way runs in a fresh process (memory a process freed stays with it, so ways run one after another
would hide each other's): two steps; the time of each, the peak resident memory of the first above
the memory before it (psutil, sampled every millisecond by a thread) and the tensors autograd kept for
its backward, weights excluded (`saved_tensors_hooks`, each storage once). `repeats` rounds, medians.
The largest difference of the summed log-probs (and of the SFT losses) is printed.

`padding`: positions the reference pass computes per real token (a pair's two sequences are padded to
the batch's widest) on `n_pairs` GSM8K pairs, in dataset order (before) and sorted (`reference_batches`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import fire
import psutil
import torch
from datasets import Dataset

from iterative_label_refinement.core.datasets import tokenize_dataset
from iterative_label_refinement.core.dpo import _pair_batch, _pair_logps, pair_width, reference_batches
from iterative_label_refinement.core.logps import labelled_logps, predicts_answer
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.core.train import add_lora

WAYS = ("dpo full", "dpo answer", "sft full", "sft answer")
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DATA = Path(os.environ.get("ILR_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def gsm8k_pairs(tok, n_pairs: int) -> Dataset:
    rows = [json.loads(line) for line in (DATA / "gsm8k" / "train.jsonl").open() if line.strip()][: n_pairs + 1]
    pairs = [{"question": r["question"], "chosen": r["answer"], "rejected": rows[i + 1]["answer"]}
             for i, r in enumerate(rows[:n_pairs])]  # fmt: skip
    return tokenize_dataset(Dataset.from_list(pairs), tok, preference=True)


def full_logps(model, batch):
    """The code before: a (batch, length, vocab) log-softmax, gathered, prompt and padding times 0."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    mask = labels != -100
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


def sft_answer_loss(model, batch):
    """The model's own SFT loss (mean over the answer tokens), from the answer positions' logits only."""
    keep = predicts_answer(batch["labels"])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    return -labelled_logps(logits, keep, batch["labels"], False).sum() / keep.sum()


def measured_step(model, compute) -> tuple[float, float, float, torch.Tensor]:
    """One forward and backward: (seconds, peak RSS above the RSS before in MB (psutil, sampled every
    millisecond), MB of tensors kept for backward besides the weights, the values)."""
    proc, peak, done = psutil.Process(), [0], threading.Event()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    model.zero_grad(set_to_none=True)
    before = proc.memory_info().rss
    thread = threading.Thread(target=sample)
    thread.start()
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        value = compute()
    value.sum().backward()
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    return seconds, (max(peak[0], proc.memory_info().rss) - before) / 2**20, sum(kept.values()) / 2**20, value.detach()


def one_way(way: str, n_pairs: int, lora_rank: int) -> None:
    """In a fresh process: one step, then a second one, timed; prints a JSON line."""
    tok = load_tokenizer(SMOL)
    torch.manual_seed(0)
    model = add_lora(load_model(SMOL, dropout=False), lora_rank)
    batch = _pair_batch(list(gsm8k_pairs(tok, n_pairs)), tok.pad_token_id)
    sft = {k: v[:n_pairs] for k, v in batch.items()}  # the chosen sequences
    compute = {
        "dpo full": lambda: full_logps(model, batch),
        "dpo answer": lambda: torch.cat(_pair_logps(model, batch, False)),
        "sft full": lambda: model(**sft).loss,
        "sft answer": lambda: sft_answer_loss(model, sft),
    }[way]
    first, rss, kept, value = measured_step(model, compute)
    second = measured_step(model, compute)[0]
    print(json.dumps({"way": way, "first_s": first, "second_s": second, "rss_mb": rss, "kept_mb": kept,
                      "positions": batch["input_ids"].numel(), "answer_tokens": int((batch["labels"] != -100).sum()),
                      "vocab": model.config.vocab_size, "value": value.tolist()}))  # fmt: skip


def memory(repeats: int = 1, n_pairs: int = 4, lora_rank: int = 8):
    runs: dict[str, list[dict]] = {w: [] for w in WAYS}
    for _ in range(repeats):
        for way in WAYS:
            out = subprocess.run([sys.executable, __file__, "one_way", way, f"--n_pairs={n_pairs}",
                                  f"--lora_rank={lora_rank}"], capture_output=True, text=True, check=True)  # fmt: skip
            runs[way].append(json.loads(out.stdout.strip().splitlines()[-1]))
    r = runs["dpo full"][0]
    print(f"{n_pairs} pairs: {r['positions']} positions, {r['answer_tokens']} answer tokens; vocabulary {r['vocab']}")
    for way, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("first_s", "second_s", "rss_mb", "kept_mb")}
        print(f"  {way:11s} step 1 {med['first_s']:6.2f} s, step 2 {med['second_s']:6.2f} s, peak RSS "
              f"+{med['rss_mb']:4.0f} MB, kept for backward {med['kept_mb']:4.0f} MB")  # fmt: skip
    dpo = [torch.tensor(runs[w][0]["value"]) for w in ("dpo answer", "dpo full")]
    sft = [runs[w][0]["value"] for w in ("sft answer", "sft full")]
    print(f"  max |dpo answer - dpo full| = {(dpo[0] - dpo[1]).abs().max().item():.2e} (of sums down to "
          f"{dpo[1].min().item():.1f}); |sft answer - sft full| = {abs(sft[0] - sft[1]):.2e}")  # fmt: skip


def padding(n_pairs: int = 1024, batch_sizes: str = "4,8,16,32"):
    ds = gsm8k_pairs(load_tokenizer(SMOL), n_pairs)
    widths = [pair_width(r) for r in ds]
    real = sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in ds)
    print(f"{len(ds)} GSM8K pairs, {real} real tokens: positions computed per real token")
    for bs in map(int, str(batch_sizes).split(",")):
        before = [list(range(s, min(s + bs, len(ds)))) for s in range(0, len(ds), bs)]
        after = reference_batches(widths, bs, 1, 0)[1]
        ratio = [sum(2 * len(b) * max(widths[i] for i in b) for b in batches) / real for batches in (before, after)]
        print(f"  batch {bs:3d}: dataset order {ratio[0]:.3f}, sorted {ratio[1]:.3f}")


if __name__ == "__main__":
    fire.Fire({"memory": memory, "one_way": one_way, "padding": padding})
