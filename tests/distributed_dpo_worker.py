"""One process of tests/test_distributed.py's DPO checks, run alone or under `torchrun` (gloo, CPU).

`trainer OUT`: train_dpo on 21 pairs. Rank 0 saves the reference log-probs the trainer computed, the
trained policy adapter and the log history; every rank saves which adapter was active in each forward that went
through DistributedDataParallel (the Trainer's wrapper on several CPU processes).

`fsdp2 OUT`: `reference_logps` on 11 pairs, through torch's FSDP2 (`fully_shard`, what accelerate's
fsdp_version 2 applies on GPUs) under several processes, through the bare model alone. The reference
adapter differs from the policy's; a single process also saves the policy's log-probs, to tell them apart.
Then `save_trained` writes the policy adapter to OUT/saved.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset

from iterative_label_refinement.core import dpo, train
from iterative_label_refinement.core.datasets import tokenize_dataset
from iterative_label_refinement.core.models import load_model, load_tokenizer
from iterative_label_refinement.plugins import load_plugins

load_plugins()  # the tiny models

ROWS = [{"question": f"{a} plus {b}", "chosen": f"#### {a + b}", "rejected": f"{a}+{b}={a + b + 7}\n#### {a + b + 7}"}
        for a, b in [(10, 12), (31, 40), (25, 25), (60, 11), (18, 19), (44, 45), (70, 2), (13, 80), (5, 6),
                     (9, 90), (27, 3), (8, 64), (15, 51), (33, 7), (2, 29), (48, 16), (61, 30), (4, 77),
                     (36, 36), (21, 12), (50, 9)]]  # fmt: skip


def sft_adapter(path: Path, seed: int) -> None:
    """A LoRA adapter with random lora_B (a fresh one is zero, so every adapter would agree)."""
    torch.manual_seed(seed)
    model = train.add_lora(load_model("tiny-random", dropout=False), 4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(str(path))


def run_trainer(out: Path, rank: int) -> None:
    sft_adapter(out / f"sft{rank}", seed=0)  # every rank builds the same adapter; no shared writes
    model = dpo.load_dpo_policy("tiny-random", str(out / f"sft{rank}"))
    active: list[str] = []
    ddp_forward = torch.nn.parallel.DistributedDataParallel.forward

    def spy_forward(self, *args, **kwargs):
        active.append(model.active_adapter)
        return ddp_forward(self, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel.forward = spy_forward
    computed = []
    reference_logps = dpo.reference_logps
    dpo.reference_logps = lambda *a, **k: computed.append(reference_logps(*a, **k)) or computed[-1]
    tok = load_tokenizer("tiny-random")
    ds = tokenize_dataset(Dataset.from_list(ROWS), tok, preference=True)
    # 21 pairs in steps of 8: the last step's 5 pairs are minibatches of 2, 2 and 1, so on 2 processes
    # one gets 2 + (1 and a padding pair), the other 2 + (2 padding pairs).
    # AdamW: RMSprop (DPO's default) divides each gradient by its own running magnitude, which grows
    # the float-noise differences of 1 vs 2 processes (measured here: 2e-6 after one step, 1e-3 after
    # six, on today's code and before; AdamW: 6e-8 after six).
    cfg = train.TrainConfig(output_dir=str(out / "dpo"), lr=1e-2, epochs=2, batch_size=8,
                            minibatch_size_per_device=2, optim="adamw", warmup_ratio=0)  # fmt: skip
    history = dpo.train_dpo(model, tok, ds, cfg, beta=0.1)
    (out / f"active{rank}.json").write_text(json.dumps(active))
    if rank == 0:
        policy = {n: p.detach() for n, p in model.named_parameters() if "lora" in n and f".{dpo.POLICY}." in n}
        torch.save({"reference": computed[0], "policy": policy, "history": history}, out / "result.pt")


def run_fsdp2(out: Path, rank: int, world: int) -> None:
    from peft import PeftModel

    sft_adapter(out / f"policy{rank}", seed=0)
    sft_adapter(out / f"reference{rank}", seed=1)
    base = load_model("tiny-random", dropout=False)
    model = PeftModel.from_pretrained(base, str(out / f"policy{rank}"), adapter_name=dpo.POLICY, is_trainable=True)
    model.load_adapter(str(out / f"reference{rank}"), adapter_name=dpo.REFERENCE, is_trainable=False)
    model.set_adapter(dpo.POLICY)
    tok = load_tokenizer("tiny-random")
    ds = tokenize_dataset(Dataset.from_list(ROWS[:11]), tok, preference=True)  # 11 rows: rank 1 gets a pad row
    wrapped = model
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.base_model.model.model.layers:
            fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
        assert isinstance(wrapped, FSDPModule)
        # Sharded for real: each rank holds a part of every wrapped weight.
        assert all(p.to_local().numel() < p.numel() for p in model.parameters() if p.numel() >= world)
    reference = dpo.reference_logps(wrapped, model, ds, tok.pad_token_id, 4, False, torch.device("cpu"))
    train.save_trained(wrapped, tok, out / "saved")  # every rank: under FSDP2 saving gathers the shards
    if rank == 0:
        result = {"reference": reference}
        if world == 1:  # the policy adapter's values, to show the reference adapter was the one used
            with torch.no_grad():
                chosen, rejected = dpo._pair_logps(model, dpo._pair_batch(list(ds), tok.pad_token_id), False)
            result["policy"] = torch.stack([chosen, rejected], dim=1)
        torch.save(result, out / "result.pt")


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if mode == "trainer":
        run_trainer(out, rank)
    else:
        if world > 1:
            torch.distributed.init_process_group("gloo")
        run_fsdp2(out, rank, world)
        if world > 1:
            # Both ranks finish every collective before either tears its gloo threads down: rank 1,
            # with nothing to write, once reached teardown first and aborted (SIGABRT, seen once in CI).
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
