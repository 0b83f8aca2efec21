"""Toy-world evaluator research: does a trained evaluator beat chance on the pairs ILR meets?

    .venv/bin/python benchmarks/evaluator_toy_world.py --kind=likelihood --model=tiny-llama-weak --lr=1e-3
    .venv/bin/python benchmarks/evaluator_toy_world.py --kind=classifier --model=tiny-llama-evaluator \
        --lr=3e-4 --head_lr=3e-3

The evaluator pipeline (ground-truth run with checkpoints -> pair data -> evaluator) on `toy_arith`, each step skipped when its output exists (under
--results_folder, default /tmp/ilr-evaluator-toy):
1. a ground-truth weak model: tiny-llama-weak, full fine-tune on half A (1,000 rows), 3 epochs,
   lr 1e-3, a checkpoint every 10% of the steps;
2. evaluator data from its checkpoints (temperature 0.6), 90/10 split by question;
3. the evaluator (`core.train_evaluator`);
4. held-out pair accuracy, position-debiased: all held-out pairs, by pair kind, and the hard pairs:
   the final checkpoint's wrong answers (well-formed mistakes, like weak labels) against gold.
Results go in README.md and the issue note.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fire
import numpy as np
from datasets import load_from_disk

from iterative_label_refinement.core.evaluator import debiased_scores, load_evaluator
from iterative_label_refinement.core.evaluator_pairs import is_correct
from iterative_label_refinement.core.train_evaluator import main as train_evaluator
from iterative_label_refinement.experiments import generate_evaluator_data as ged
from iterative_label_refinement.experiments.main import main as run_main

GT_RUN = dict(ds_name="toy_arith", model_size="tiny-llama-weak", n_docs=2000, n_test_docs=400, epochs=3, lr=1e-3,
              batch_size=32, lora_rank=0, save_frequency=0.1, generate_weak_labels=False)  # fmt: skip


def hard_pairs(run_dir: Path, data_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """(question, wrong answer of the last checkpoint, gold) on the held-out questions."""
    test_questions = set(load_from_disk(str(data_dir))["test"]["question"])
    cached = json.loads((ged.find_checkpoints(run_dir)[-1] / ged.ANSWERS_FILE).read_text())
    rows = ged.training_questions("toy_arith", 0, GT_RUN["n_docs"], GT_RUN["n_test_docs"], None, False)
    gold = dict(zip(rows["question"], rows["answer"]))
    rows = [(q, a, gold[q]) for q, a, acc in zip(cached["questions"], cached["answers"], cached["acc"])
            if q in test_questions and not is_correct(acc)]  # fmt: skip
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def main(kind: str = "likelihood", model: str = "tiny-llama-weak", lr: float = 1e-3, head_lr: float | None = None,
         epochs: float = 3, batch_size: int = 16, lora_rank: int = 0, results_folder: str = "/tmp/ilr-evaluator-toy"):  # fmt: skip
    t0 = time.time()
    run_dir = Path(run_main(results_folder=results_folder, force_eval=True, **GT_RUN)["save_path"])
    summary = json.loads((run_dir / "results_summary.json").read_text())
    print(f"GT weak run: test accuracy {summary['accuracy']:.3f} ({time.time() - t0:.0f} s) {run_dir}")
    t0 = time.time()
    data = ged.main(save_path=str(run_dir), results_folder=results_folder)
    data_dir = Path(data["save_path"])
    kinds = json.loads((data_dir / "experiment_config.json").read_text())["pair_kinds"]
    print(f"evaluator data: {data['n_pairs']} pairs {kinds} ({time.time() - t0:.0f} s)")
    t0 = time.time()
    out = train_evaluator(ds_name=str(data_dir), model_size=model, evaluator_kind=kind, lr=lr, head_lr=head_lr,
                          epochs=epochs, batch_size=batch_size, lora_rank=lora_rank, results_folder=results_folder)  # fmt: skip
    print(f"{kind} evaluator from {model}, lr {lr}, head_lr {head_lr}, {out.get('epochs_run')} of {epochs} epochs, "
          f"train {out.get('train_seconds')} s (total {time.time() - t0:.0f} s)")  # fmt: skip
    print(f"  held-out pair accuracy {out['pair_accuracy']:.3f} over {out['n_test_pairs']} pairs, "
          f"by kind {out['pair_accuracy_by_kind']}, row accuracy {out['row_accuracy']:.3f}")  # fmt: skip
    questions, wrong, gold = hard_pairs(run_dir, data_dir)
    scores = debiased_scores(load_evaluator(out["save_path"]), questions, wrong, gold)
    print(f"  hard pairs (final checkpoint's wrong answer vs gold, both orders): accuracy "
          f"{float((scores > 0.5).mean()):.3f} over {len(scores)} pairs, mean score {float(np.mean(scores)):.3f}")  # fmt: skip


if __name__ == "__main__":
    fire.Fire(main)
