"""core.layout: every path is formatted and parsed in one place. Each kind of path round-trips
(formatted, then parsed back), and the names are today's, written out by hand: a results folder made
before this module must still be found."""

from __future__ import annotations

from pathlib import Path

import pytest

from iterative_label_refinement.core import layout
from iterative_label_refinement.core.settings import ConfigError

RUN = dict(batch_size=32, ds_name="toy_arith", lr=1e-06, model_size="tiny-random", round_id=2, saferpaca_mode=1,
           train_with_dropout=False, weak_labels_path="results/default/weak_run/ilr0.15_1_weak_labels",
           lr_schedule="cosine_warmup")  # fmt: skip
RUN_NAME = "bs=32-dn=toy_arit-l=1e-06-ls=cosi_warm-ms=tiny-random-ri=2-sm=1-twd=0-wlp=ilr0_1_weak_labe"


def test_todays_names_written_out_by_hand():
    results = Path("/r")
    assert layout.get_config_foldername(RUN) == RUN_NAME
    assert layout.refined_path("/r/w", "orailr0.15", 0) == Path("/r/w/orailr0.15_0_weak_labels")
    assert layout.current_labels_path("/r/w", "dpo0.10.15", 0) == Path("/r/w/weak_labels")
    assert layout.current_labels_path("/r/w", "dpo0.10.15", 3) == Path("/r/w/dpo0.10.15_2_weak_labels")
    assert layout.model_dir(Path("/r/run"), dpo_round=True) == Path("/r/run/train_adapter")
    assert layout.model_dir(Path("/r/run"), dpo_round=False) == Path("/r/run")
    assert layout.evaluator_data_dir(results, "gsm8k", "google/gemma-2b", 0) == Path(
        "/r/evaluator-data/d=gsm8k-ms=gemma-2b-s=0"
    )
    data = Path("/r/evaluator-data/d=gsm8k-ms=gemma-2b-s=0")
    assert layout.evaluator_dir(results, data, dict(model_size="google/gemma-2b", lr=1e-6, lora_rank=0)) == Path(
        "/r/evaluators/d=gsm8k-ms=gemma-2b-s=0/lr=0-l=1e-06-ms=gemma-2b"
    )
    assert layout.find_evaluator_data("d=gsm8k-ms=gemma-2b-s=0", results) == data  # a name: under evaluator-data
    assert layout.find_evaluator_data("elsewhere/pairs", results) == Path("elsewhere/pairs")  # a path: as given
    assert layout.report_plot(Path("/o"), "accuracy", "gsm8k", "gemma-2b") == Path("/o/accuracy_gsm8k_gemma-2b.png")
    assert layout.beside(Path("/moved/default/strong"), "old/default/weak/ilr0.1_0_weak_labels") == Path(
        "/moved/default/weak/ilr0.1_0_weak_labels")  # fmt: skip


def test_run_dir_names_round_trip():
    """Parsed back, a name gives each key's short form and value, in its order; values hold `-` and
    `=`-free text (`ms=tiny-random`, `l=1e-06`), which a split on `-` would cut."""
    entries = layout.parse_foldername(layout.get_config_foldername(RUN))
    assert entries == {layout.short_key(k): layout.short_value(RUN[k]) for k in sorted(RUN)}
    assert entries["ms"] == "tiny-random" and entries["l"] == "1e-06" and entries["ri"] == "2"
    assert layout.run_dir_round(RUN_NAME) == 2
    assert layout.name_value(Path(RUN_NAME), "saferpaca_mode") == "1"
    assert layout.name_value(Path(RUN_NAME), "half_data") is None
    # A sibling differs in the one entry only, the others kept byte for byte.
    sibling = layout.sibling_with(Path("/r/default") / RUN_NAME, "saferpaca_mode", 2)
    assert sibling == Path("/r/default") / RUN_NAME.replace("-sm=1-", "-sm=2-")
    assert layout.sibling_with(sibling, "saferpaca_mode", 1).name == RUN_NAME
    with pytest.raises(ConfigError, match="has no hd=<half_data> in its name"):
        layout.sibling_with(Path(RUN_NAME), "half_data", 1)


@pytest.mark.parametrize("name, round_id", [("ms=tiny-random-ri=12-s=0", 12), ("weak-ms=w-ri=0", 0), ("ri=3", 3),
                                            ("ms=tiny-ri-s=0", None), ("mri=3", None), ("ri=x", None)])  # fmt: skip
def test_the_round_a_run_dir_name_carries(name, round_id):
    assert layout.run_dir_round(name) == round_id


def test_label_set_names_round_trip():
    for method in ("ilr0.15", "orailr0.15", "dpo0.10.15", "naive0.3rd", "a_1_b"):
        for round_id in (0, 1, 12):
            path = layout.refined_path(Path("/w"), method, round_id)
            assert layout.parse_label_set(path) == (method, round_id + 1)  # the round it trains
            assert layout.current_labels_path(Path("/w"), method, round_id + 1) == path
    assert layout.parse_label_set(layout.current_labels_path(Path("/w"), None, 0)) == (None, 0)
    assert layout.parse_label_set(Path("/w/my_labels")) is None


def test_evaluator_data_names_round_trip(tmp_path):
    """Data written under its formatted name is found again by that name (`train_evaluator --pair_data`)."""
    for ds, model, seed in (("gsm8k", "google/gemma-2b", 0), ("toy_arith", "tiny-random", 12),
                            ("saferpaca", "models/my-model-v2/", 3)):  # fmt: skip
        made = layout.evaluator_data_dir(tmp_path, ds, model, seed)
        assert made.name == layout.evaluator_data_name(ds, model, seed)
        assert layout.find_evaluator_data(made.name, tmp_path) == made
        assert layout.find_evaluator_data(str(made), tmp_path / "other") == made
    assert layout.evaluator_data_name("saferpaca", "models/my-model-v2/", 3) == "d=saferpaca-ms=my-model-v2-s=3"


def test_evaluators_are_found_where_they_are_written(tmp_path):
    data = layout.evaluator_data_dir(tmp_path, "toy_arith", "tiny-random", 0)
    made = [layout.evaluator_dir(tmp_path, data, dict(model_size="tiny-random", lr=lr)) for lr in (0.1, 0.01)]
    unfinished = layout.evaluator_dir(tmp_path, data, dict(model_size="tiny-random", lr=1.0))
    for out in [*made, unfinished]:
        out.mkdir(parents=True)
    for out in made:
        (out / "results_summary.json").write_text("{}")
    assert layout.evaluator_dirs(tmp_path) == sorted(made)
