"""Run-dir names and experiment_config.json are how finished runs are found again: they are pinned.

The strings below were written by experiments.main as it was before its flags became one run config
(`git show 8b63958:iterative_label_refinement/experiments/main.py`). Any change to them moves existing
results folders and the demo's figures, so a refactor must reproduce every one byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from datasets import Dataset

from iterative_label_refinement.core.models import resolve_model_path
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import main as main_module

GRID = {  # flags on top of toy_arith + tiny-random; LABELS: on a weak run's labels, DPO: with --dpo_path
    "sft": {},
    "sft_gsm8k_gemma": dict(ds_name="gsm8k", model_size="google/gemma-2b"),
    "sft_bird": dict(ds_name="bird", model_size="google/gemma-2b"),
    "sft_options": dict(
        seed=3,
        data_seed=2,
        epochs=2.5,
        batch_size=16,
        n_docs=100,
        n_test_docs=20,
        lr=1e-4,
        optim="adafactor",
        train_with_dropout=True,
        lr_schedule="constant",
        warmup_ratio=0.1,
        lora_rank=0,
        max_len=64,
        sweep_subfolder="sweep",
    ),
    "sft_all_data": dict(train_with_all_data=True),
    "sft_save_frequency": dict(save_frequency=0.5),
    "saferpaca_mode": dict(ds_name="saferpaca", saferpaca_mode=2),
    "saferpaca_mode1": dict(ds_name="saferpaca", saferpaca_mode=1, model_size="google/gemma-2b"),
    "half1_ilr": dict(LABELS=1, method="ilr0.15", half_data=1),
    "half2_orailr": dict(LABELS=1, method="orailr0.15", half_data=2),
    "half1_cor": dict(LABELS=1, method="cororailr0.15", half_data=1),
    "round0_weak": dict(LABELS=1, method="ilr0.15"),
    "round0_corweak": dict(LABELS=1, method="corilr0.15"),
    "round0_cornaive": dict(LABELS=1, method="cornaive0.15"),
    "round1_ilr": dict(LABELS=1, method="ilr0.15", round_id=1),
    "round2_orailr": dict(LABELS=1, method="orailr0.15", round_id=2),
    "round1_cororailr": dict(LABELS=1, method="cororailr0.15", round_id=1),
    "round1_naive": dict(LABELS=1, method="naive0.15", round_id=1),
    "round1_cornaive": dict(LABELS=1, method="cornaive0.15", round_id=1),
    "round1_half_ilr": dict(LABELS=1, method="ilr0.15", round_id=1, half_data=2),
    "dpo_round0": dict(LABELS=1, method="dpo0.10.15", label_temp=0.7),
    "dpo_round0_oracle": dict(LABELS=1, method="oradpo0.10.15", label_temp=0.7),
    "dpo_round0_cor": dict(LABELS=1, method="cororadpo0.10.15", label_temp=0.7),
    "dpo_round1": dict(LABELS=1, method="dpo0.10.15", round_id=1, DPO=1, label_temp=0.7),
    "dpo_round1_beta_ipo": dict(
        LABELS=1, method="oradpo0.20.15", round_id=1, DPO=1, dpo_beta=0.2, dpo_loss_type="ipo", label_temp=0.7
    ),
    "dpo_round2_hinge": dict(
        LABELS=1, method="cororadpo0.10.15", round_id=2, DPO=1, dpo_loss_type="hinge", label_temp=0.7, lr=1e-6
    ),
    "do_dpo_flag": dict(do_dpo=True, label_temp=0.7),
    "weak_model_size_gsm8k": dict(
        LABELS=1,
        method="ilr0.15",
        round_id=1,
        ds_name="gsm8k",
        model_size="google/gemma-2b",
        save_frequency=0.25,
        train_with_all_data=True,
    ),
}

# fmt: off
DIRNAMES = {
    'sft': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05'
    ),
    'sft_gsm8k_gemma': (
        'default/bs=32-ds=0-dn=gsm8k-e=2-hd=0-lr=64-l=0.0005-ls=cosi_warm-ml=256-ms=gemma-2b-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05'
    ),
    'sft_bird': (
        'default/bs=32-ds=0-dn=bird-e=2-hd=0-lr=64-l=0.0005-ls=cosi_warm-ml=256-ms=gemma-2b-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05'
    ),
    'sft_options': (
        'sweep/bs=16-ds=2-dn=toy_arit-e=2.5-hd=0-lr=0-l=0.0001-ls=constant-ml=64-ms=tiny-random-nd=100-ntd=20-o=adafactor-ri=0-s=3-twd=1-wr=0.1'
    ),
    'sft_all_data': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twad=1-twd=0-wr=0.05'
    ),
    'sft_save_frequency': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-sf=0.5-s=0-twd=0-wr=0.05'
    ),
    'saferpaca_mode': (
        'default/bs=32-ds=0-dn=saferpaca-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=512-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-sm=2-s=0-twd=0-wr=0.05'
    ),
    'saferpaca_mode1': (
        'default/bs=32-ds=0-dn=saferpaca-e=2-hd=0-lr=64-l=0.0005-ls=cosi_warm-ml=512-ms=gemma-2b-nd=20000-ntd=10000-o=adamw-ri=0-sm=1-s=0-twd=0-wr=0.05'
    ),
    'half1_ilr': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=1-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05-wlt=weak-wms=tiny-random'
    ),
    'half2_orailr': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=2-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05-wlt=weak-wms=tiny-random'
    ),
    'half1_cor': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=1-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05-wlt=corweak-wms=tiny-random'
    ),
    'round0_weak': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05-wlt=weak-wms=tiny-random'
    ),
    'round0_corweak': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05-wlt=corweak-wms=tiny-random'
    ),
    'round0_cornaive': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05-wlt=corweak-wms=tiny-random'
    ),
    'round1_ilr': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=1-s=0-twd=0-wr=0.05-wlt=ilr0.15-wms=tiny-random'
    ),
    'round2_orailr': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=2-s=0-twd=0-wr=0.05-wlt=orailr0.15-wms=tiny-random'
    ),
    'round1_cororailr': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=1-s=0-twd=0-wr=0.05-wlt=cororailr0.15-wms=tiny-random'
    ),
    'round1_naive': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=1-s=0-twd=0-wr=0.05-wlt=naive0.15-wms=tiny-random'
    ),
    'round1_cornaive': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=1-s=0-twd=0-wr=0.05-wlt=cornaive0.15-wms=tiny-random'
    ),
    'round1_half_ilr': (
        'default/bs=32-ds=0-dn=toy_arit-e=2-hd=2-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=1-s=0-twd=0-wr=0.05-wlt=ilr0.15-wms=tiny-random'
    ),
    'dpo_round0': (
        'default/bs=32-ds=0-dd=1-db=0.1-dlt=sigmoid-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05-wlt=weak-wms=tiny-random'
    ),
    'dpo_round0_oracle': (
        'default/bs=32-ds=0-dd=1-db=0.1-dlt=sigmoid-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05-wlt=weak-wms=tiny-random'
    ),
    'dpo_round0_cor': (
        'default/bs=32-ds=0-dd=1-db=0.1-dlt=sigmoid-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05-wlt=corweak-wms=tiny-random'
    ),
    'dpo_round1': (
        'default/bs=32-ds=0-dd=1-db=0.1-dlt=sigmoid-dn=toy_arit-e=2-hd=0-lr=64-l=0.0001-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=rmsprop-ri=1-s=0-twd=0-wr=0.05-wlt=dpo0.10.15-wms=tiny-random'
    ),
    'dpo_round1_beta_ipo': (
        'default/bs=32-ds=0-dd=1-db=0.2-dlt=ipo-dn=toy_arit-e=2-hd=0-lr=64-l=0.0001-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=rmsprop-ri=1-s=0-twd=0-wr=0.05-wlt=oradpo0.20.15-wms=tiny-random'
    ),
    'dpo_round2_hinge': (
        'default/bs=32-ds=0-dd=1-db=0.1-dlt=hinge-dn=toy_arit-e=2-hd=0-lr=64-l=1e-06-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=rmsprop-ri=2-s=0-twd=0-wr=0.05-wlt=cororadpo0.10.15-wms=tiny-random'
    ),
    'do_dpo_flag': (
        'default/bs=32-ds=0-dd=1-db=0.1-dlt=sigmoid-dn=toy_arit-e=2-hd=0-lr=64-l=0.003-ls=cosi_warm-ml=96-ms=tiny-random-nd=20000-ntd=10000-o=adamw-ri=0-s=0-twd=0-wr=0.05'
    ),
    'weak_model_size_gsm8k': (
        'default/bs=32-ds=0-dn=gsm8k-e=2-hd=0-lr=64-l=0.0005-ls=cosi_warm-ml=256-ms=gemma-2b-nd=20000-ntd=10000-o=adamw-ri=1-sf=0.25-s=0-twad=1-twd=0-wr=0.05-wlt=ilr0.15-wms=tiny-random'
    ),
}
# fmt: on


def dirname(tmp: Path, flags: dict) -> str:
    flags = dict(flags)
    kw = dict(ds_name="toy_arith", model_size="tiny-random", results_folder=str(tmp / "results"), print_save_path=True)
    if flags.pop("LABELS", None):  # a dry run: the weak run dir need not exist, its model is named
        kw.update(weak_labels_path=str(tmp / "weak"), weak_model_size="tiny-random")
    if flags.pop("DPO", None):
        kw.update(dpo_path=str(tmp / "prev"))
    kw.update(flags)
    with contextlib.redirect_stdout(io.StringIO()):
        printed = main_module.main(**kw)
    return str(Path(printed).relative_to(tmp / "results"))


def test_the_grid_covers_every_pinned_name():
    assert set(GRID) == set(DIRNAMES)


@pytest.mark.parametrize("key", list(GRID))
def test_run_dir_names_are_unchanged(key, tmp_path):
    assert dirname(tmp_path, GRID[key]) == DIRNAMES[key]


CONFIG_GRID = {
    "sft": dict(n_docs=40, n_test_docs=8),
    "half1_corilr": dict(
        LABELS=1,
        method="corilr0.15",
        half_data=1,
        n_docs=40,
        n_test_docs=8,
        label_temp=0.5,
        top_k=5,
        top_p=0.9,
        num_beams=2,
        save_model=True,
    ),
    "round1_orailr": dict(LABELS=1, method="orailr0.15", round_id=1, n_docs=40, n_test_docs=8),
    "dpo_round1": dict(
        LABELS=1,
        DPO=1,
        method="oradpo0.10.15",
        round_id=1,
        label_temp=0.7,
        dpo_beta=0.2,
        dpo_loss_type="ipo",
        n_docs=40,
        n_test_docs=8,
    ),
}


class Stop(Exception):
    pass


def write_inputs(tmp: Path) -> None:
    """A weak run dir (config + labels for every round the grid reads) and a previous DPO adapter."""
    weak = tmp / "weak"
    weak.mkdir(parents=True)
    (weak / "experiment_config.json").write_text(json.dumps({"model_size": "tiny-random", "round_id": 0}))
    rows = [{"question": f"What is {i} plus 1?", "answer": f"#### {i + 1}", "gt_answer": f"#### {i + 1}", "acc": 1.0}
            for i in range(8)]  # fmt: skip
    Dataset.from_list(rows).save_to_disk(str(weak / "weak_labels"))
    Dataset.from_list(rows).save_to_disk(str(weak / "orailr0.15_0_weak_labels"))
    prefs = [dict(r, chosen=r["answer"], rejected="#### 0") for r in rows]
    Dataset.from_list(prefs).save_to_disk(str(weak / "oradpo0.10.15_0_weak_labels"))
    (tmp / "prev").mkdir()
    (tmp / "prev" / "adapter_config.json").write_text("{}")


def written_config(module, monkeypatch, tmp: Path, flags: dict) -> str:
    """experiment_config.json as main writes it (tmp paths as <tmp>); main stops before training."""

    def stop(seed):
        raise Stop

    monkeypatch.setattr(module, "seed_everything", stop)
    flags = dict(flags)
    kw = dict(ds_name="toy_arith", model_size="tiny-random", results_folder=str(tmp / "results"))
    if flags.pop("LABELS", None):
        kw.update(weak_labels_path=str(tmp / "weak"))
    if flags.pop("DPO", None):
        kw.update(dpo_path=str(tmp / "prev"))
    kw.update(flags)
    try:
        module.main(**kw)
    except Stop:
        pass
    (path,) = (tmp / "results").rglob("experiment_config.json")
    # The keys added after the pins were written, last: where the weights were loaded from, which
    # weights they are (the recipe-named build folder of a tiny model), and the run's commit point.
    config = json.loads(path.read_text())
    assert list(config)[-3:] == ["model_loaded_from", "model_weights", "commit_point"]
    loaded_from = config.pop("model_loaded_from")
    assert loaded_from == resolve_model_path(kw["model_size"])
    assert config.pop("model_weights") == Path(loaded_from).name
    assert config.pop("commit_point") == "done.json"
    return (json.dumps(config, indent=2) + "\n").replace(str(tmp), "<tmp>")


# fmt: off
CONFIGS = {
    'sft': (
        '{\n'
        '  "batch_size": 32,\n'
        '  "max_len": 96,\n'
        '  "ds_name": "toy_arith",\n'
        '  "n_docs": 40,\n'
        '  "n_test_docs": 8,\n'
        '  "model_size": "tiny-random",\n'
        '  "lr": 0.003,\n'
        '  "optim": "adamw",\n'
        '  "epochs": 2,\n'
        '  "seed": 0,\n'
        '  "train_with_dropout": false,\n'
        '  "lr_schedule": "cosine_warmup",\n'
        '  "half_data": 0,\n'
        '  "round_id": 0,\n'
        '  "warmup_ratio": 0.05,\n'
        '  "lora_rank": 64,\n'
        '  "data_seed": 0,\n'
        '  "method": null,\n'
        '  "num_samples": 1,\n'
        '  "label_temp": 0.0,\n'
        '  "minibatch_size_per_device": 8,\n'
        '  "save_model": false,\n'
        '  "weak_labels_path": null,\n'
        '  "dpo_path": null,\n'
        '  "num_beams": 4,\n'
        '  "top_k": 0,\n'
        '  "top_p": 1.0,\n'
        '  "eval_batch_size": 64,\n'
        '  "inference_backend": "hf",\n'
        '  "do_dpo": false,\n'
        '  "world_size": 1,\n'
        '  "weak_model": null,\n'
        '  "lora_target_modules": "all-linear",\n'
        '  "lora_alpha": 128,\n'
        '  "dtype": "float32",\n'
        '  "mixed_precision": "no",\n'
        '  "gradient_checkpointing": false\n'
        '}\n'
    ),
    'half1_corilr': (
        '{\n'
        '  "batch_size": 32,\n'
        '  "max_len": 96,\n'
        '  "ds_name": "toy_arith",\n'
        '  "n_docs": 40,\n'
        '  "n_test_docs": 8,\n'
        '  "model_size": "tiny-random",\n'
        '  "lr": 0.003,\n'
        '  "optim": "adamw",\n'
        '  "epochs": 2,\n'
        '  "seed": 0,\n'
        '  "train_with_dropout": false,\n'
        '  "lr_schedule": "cosine_warmup",\n'
        '  "half_data": 1,\n'
        '  "round_id": 0,\n'
        '  "warmup_ratio": 0.05,\n'
        '  "lora_rank": 64,\n'
        '  "data_seed": 0,\n'
        '  "weak_label_type": "corweak",\n'
        '  "weak_model_size": "tiny-random",\n'
        '  "method": "corilr0.15",\n'
        '  "num_samples": 1,\n'
        '  "label_temp": 0.5,\n'
        '  "minibatch_size_per_device": 8,\n'
        '  "save_model": true,\n'
        '  "weak_labels_path": "<tmp>/weak/weak_labels",\n'
        '  "dpo_path": null,\n'
        '  "num_beams": 2,\n'
        '  "top_k": 5,\n'
        '  "top_p": 0.9,\n'
        '  "eval_batch_size": 64,\n'
        '  "inference_backend": "hf",\n'
        '  "do_dpo": false,\n'
        '  "world_size": 1,\n'
        '  "weak_model": {\n'
        '    "model_size": "tiny-random",\n'
        '    "round_id": 0\n'
        '  },\n'
        '  "lora_target_modules": "all-linear",\n'
        '  "lora_alpha": 128,\n'
        '  "dtype": "float32",\n'
        '  "mixed_precision": "no",\n'
        '  "gradient_checkpointing": false\n'
        '}\n'
    ),
    'round1_orailr': (
        '{\n'
        '  "batch_size": 32,\n'
        '  "max_len": 96,\n'
        '  "ds_name": "toy_arith",\n'
        '  "n_docs": 40,\n'
        '  "n_test_docs": 8,\n'
        '  "model_size": "tiny-random",\n'
        '  "lr": 0.003,\n'
        '  "optim": "adamw",\n'
        '  "epochs": 2,\n'
        '  "seed": 0,\n'
        '  "train_with_dropout": false,\n'
        '  "lr_schedule": "cosine_warmup",\n'
        '  "half_data": 0,\n'
        '  "round_id": 1,\n'
        '  "warmup_ratio": 0.05,\n'
        '  "lora_rank": 64,\n'
        '  "data_seed": 0,\n'
        '  "weak_label_type": "orailr0.15",\n'
        '  "weak_model_size": "tiny-random",\n'
        '  "method": "orailr0.15",\n'
        '  "num_samples": 1,\n'
        '  "label_temp": 0.0,\n'
        '  "minibatch_size_per_device": 8,\n'
        '  "save_model": false,\n'
        '  "weak_labels_path": "<tmp>/weak/orailr0.15_0_weak_labels",\n'
        '  "dpo_path": null,\n'
        '  "num_beams": 4,\n'
        '  "top_k": 0,\n'
        '  "top_p": 1.0,\n'
        '  "eval_batch_size": 64,\n'
        '  "inference_backend": "hf",\n'
        '  "do_dpo": false,\n'
        '  "world_size": 1,\n'
        '  "weak_model": {\n'
        '    "model_size": "tiny-random",\n'
        '    "round_id": 0\n'
        '  },\n'
        '  "lora_target_modules": "all-linear",\n'
        '  "lora_alpha": 128,\n'
        '  "dtype": "float32",\n'
        '  "mixed_precision": "no",\n'
        '  "gradient_checkpointing": false\n'
        '}\n'
    ),
    'dpo_round1': (
        '{\n'
        '  "batch_size": 32,\n'
        '  "max_len": 96,\n'
        '  "ds_name": "toy_arith",\n'
        '  "n_docs": 40,\n'
        '  "n_test_docs": 8,\n'
        '  "model_size": "tiny-random",\n'
        '  "lr": 0.0001,\n'
        '  "optim": "rmsprop",\n'
        '  "epochs": 2,\n'
        '  "seed": 0,\n'
        '  "train_with_dropout": false,\n'
        '  "lr_schedule": "cosine_warmup",\n'
        '  "half_data": 0,\n'
        '  "round_id": 1,\n'
        '  "warmup_ratio": 0.05,\n'
        '  "lora_rank": 64,\n'
        '  "data_seed": 0,\n'
        '  "weak_label_type": "oradpo0.10.15",\n'
        '  "do_dpo": true,\n'
        '  "dpo_beta": 0.2,\n'
        '  "dpo_loss_type": "ipo",\n'
        '  "weak_model_size": "tiny-random",\n'
        '  "method": "oradpo0.10.15",\n'
        '  "num_samples": 6,\n'
        '  "label_temp": 0.7,\n'
        '  "minibatch_size_per_device": 8,\n'
        '  "save_model": false,\n'
        '  "weak_labels_path": "<tmp>/weak/oradpo0.10.15_0_weak_labels",\n'
        '  "dpo_path": "<tmp>/prev",\n'
        '  "num_beams": 4,\n'
        '  "top_k": 0,\n'
        '  "top_p": 1.0,\n'
        '  "eval_batch_size": 64,\n'
        '  "inference_backend": "hf",\n'
        '  "world_size": 1,\n'
        '  "weak_model": {\n'
        '    "model_size": "tiny-random",\n'
        '    "round_id": 0\n'
        '  },\n'
        '  "lora_target_modules": null,\n'
        '  "lora_alpha": null,\n'
        '  "dtype": "float32",\n'
        '  "mixed_precision": "no",\n'
        '  "gradient_checkpointing": false\n'
        '}\n'
    ),
}
# fmt: on


@pytest.mark.parametrize("key", list(CONFIG_GRID))
def test_experiment_config_json_is_unchanged(key, tmp_path, monkeypatch):
    write_inputs(tmp_path)
    written = written_config(main_module, monkeypatch, tmp_path, CONFIG_GRID[key])
    assert written == CONFIGS[key]
    assert json.loads(written)["ds_name"] == "toy_arith"


def test_eval_on_heldout_scores_training_prompts_no_run_of_that_size_sees(run_config):
    from iterative_label_refinement.core.run_data import load_run_data
    from iterative_label_refinement.toy.task import arith_rows

    toy = dict(ds_name="toy_arith", model_size="tiny-random")
    plain = run_config(**toy, n_docs=300, n_test_docs=50, seed=1)
    heldout = run_config(**toy, n_docs=300, n_test_docs=50, seed=1, eval_on="heldout")
    assert (
        heldout.dirname().replace("-eo=heldout-", "-") == plain.dirname() != heldout.dirname()
    )  # plain keeps its name
    data, plain_data = load_run_data(heldout), load_run_data(plain)
    train = arith_rows()["train"]
    expected = {r["question"] for r in train[300:350]}  # the 50 rows after the first 300
    assert {r["question"] for r in data.test} == expected and len(data.test) == 50
    seen = {r["question"] for r in train[:300]}
    assert seen == set(data.train["question"]) | set(data.label_targets["question"])
    assert not expected & seen and not expected & set(plain_data.test["question"])
    assert list(data.train["question"]) == list(plain_data.train["question"])  # training is untouched
    with pytest.raises(ConfigError, match="eval_on=heldout needs n_docs \\+ n_test_docs = 4001 training rows"):
        load_run_data(run_config(**toy, n_docs=3990, n_test_docs=11, eval_on="heldout"))
    with pytest.raises(ConfigError, match=r"Unknown eval_on 'validation'. Valid: \['test', 'heldout'\]"):
        run_config(**toy, eval_on="validation")


def test_a_half_run_labelling_every_prompt_is_a_run_of_its_own(tmp_path):
    """Round 0 trains every method on `weak` labels, so ilr's and ilragree's half runs had one name;
    ilragree's half runs label every prompt (its declaration says so), ilr's only the other half."""
    ilr = dirname(tmp_path, GRID["half1_ilr"])
    agree = dirname(tmp_path, dict(GRID["half1_ilr"], method="ilragree0.15"))
    assert ilr == DIRNAMES["half1_ilr"] and "hla=" not in ilr
    assert agree == ilr.replace("-hd=1-", "-hd=1-hla=1-")  # the one key, sorted in after half_data
    full = dirname(tmp_path, dict(GRID["half1_ilr"], method="ilragree0.15", half_data=0))
    assert full == dirname(tmp_path, dict(GRID["half1_ilr"], half_data=0))  # a full run labels nothing else
