"""experiments.query: what the scripts ask, answered from the declarations (kinds, tasks, main's naming)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iterative_label_refinement.core.datasets import get_dataset_config
from iterative_label_refinement.core.methods import kinds
from iterative_label_refinement.core.settings import ConfigError
from iterative_label_refinement.experiments import query


def test_pipelines_are_prefixes_and_a_declared_kind():
    answer = query.pipelines("ilr", "cororailr", "naive", "oradpo", rounds=3)
    assert answer == {
        "scripts": ["sft_ilr.sh", "sft_ilr.sh", "sft_ilr.sh", "sft_dpo.sh"],
        "envs": [
            "REFINER=ilr ORACLE=0 CORRECT=0",
            "REFINER=ilr ORACLE=1 CORRECT=1",
            "REFINER=naive ORACLE=0 CORRECT=0",
            "REFINER=dpo ORACLE=1 CORRECT=0",
        ],  # fmt: skip
        "steps": [2 + 4 * 3, 2 + 4 * 3, 2 + 4 * 3, 2 + 2 * 3],  # weak, SFT, then per round 4 (ILR) or 2 (DPO)
    }
    assert {"ilr", "naive", "dpo"} <= set(kinds())  # the paper's kinds; a researcher's may follow
    for bad in ("orailrx", "oranaive", "iloracle", "ilr0.3", ""):  # no such kind; naive takes no feedback
        with pytest.raises(ConfigError, match=f"PIPELINES must be .* got 'ilr,{bad}'"):
            query.pipelines("ilr", bad, rounds=1)


def test_refiner_names_the_method_from_the_settings_or_refuses_another_scripts_kind():
    ilr = query.refiner("ilr", "sft_ilr", rounds=6, max_replace=0.15, oracle=True, correct_start=True)
    assert ilr == {"method": "cororailr0.15", "refiner_command": ["experiments.ilr"], "takes_feedback": True,
                   "steps": 26}  # fmt: skip
    naive = query.refiner("naive", "sft_ilr", rounds=1, max_replace=0.3, beta=5)  # beta is not naive's: unread
    assert naive["method"] == "naive0.3" and not naive["takes_feedback"]
    assert query.refiner("dpo", "sft_dpo", rounds=2, beta=0.5, subsample=0.15)["method"] == "dpo0.50.15"
    assert query.refiner("dpo", "sft_ilr", rounds=1) == {
        "refusal": "REFINER must not be dpo: SFT+DPO is scripts/sft_dpo.sh"
    }


def test_the_evaluator_pipeline_has_one_ground_truth_run_per_mode():
    assert get_dataset_config("saferpaca").modes and not get_dataset_config("gsm8k").modes
    assert query.evaluator("saferpaca") == {"gt_runs": ["--mode=1", "--mode=2"],
                                            "evaluator_steps": 4}  # fmt: skip
    assert query.evaluator("gsm8k") == {"gt_runs": [""], "evaluator_steps": 3}


def test_shell_answers_survive_eval_whatever_they_hold():
    answer = {"run_dir": "/tmp/a b/it's $(touch x)", "run_done": False, "gt_runs": ["", "--m=1 --n=2"]}
    script = (
        f'{query.shell(answer)}\nprintf "%s|%s|%s|%s\\n" "$RUN_DIR" "$RUN_DONE" "${{#GT_RUNS[@]}}" "${{GT_RUNS[1]}}"'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == "/tmp/a b/it's $(touch x)|0|2|--m=1 --n=2\n"


def test_run_is_mains_run_dir_and_whether_main_would_skip_it(tmp_path):
    """The run dir is main's own --print_save_path; done is main's commit point with its outputs."""
    from iterative_label_refinement.core.files import write_json
    from iterative_label_refinement.core.saved_models import DONE

    flags = ["--ds_name=toy_arith", "--model_size=tiny-random", f"--results_folder={tmp_path}", "--n_docs=16"]
    main = subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.main", *flags,
                           "--print_save_path"], capture_output=True, text=True, check=True)  # fmt: skip
    run_dir = main.stdout.strip().splitlines()[-1]
    ask = [sys.executable, "-m", "iterative_label_refinement.experiments.query", "run", *flags]

    def answer() -> dict:
        return json.loads(subprocess.run(ask, capture_output=True, text=True, check=True).stdout)

    assert answer() == {"run_dir": run_dir, "run_done": False, "model_dir": run_dir}
    write_json(Path(run_dir) / DONE, {"outputs": ["weak_labels"]})
    assert not answer()["run_done"]  # committed, but an output it lists is gone: main would redo it
    (Path(run_dir) / "weak_labels").mkdir()
    assert answer()["run_done"]
    refused = subprocess.run([*ask, "--n_doc=3"], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("error: unknown flag '--n_doc'")
