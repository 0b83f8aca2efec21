"""`python tests/killed_run.py KILL_AT <experiments.main flags>`: experiments.main for tests/test_resume.py.

KILL_AT > 0: SIGKILLed while saving checkpoint-KILL_AT, after the weights and the optimizer state
are written, before the RNG state and trainer_state.json: what a preemption in the middle of a
save leaves. 0: never killed.

The tiny models' configs have no dropout, so --train_with_dropout alone draws no random numbers:
here a model loaded with dropout gets attention dropout 0.1, so that a resumed run matches an
uninterrupted one only if the RNG state is restored too.
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import Trainer

from iterative_label_refinement.core import models
from iterative_label_refinement.core.cli import run_cli
from iterative_label_refinement.experiments.main import main

KILL_AT = int(sys.argv[1])
save_rng_state, load_model = Trainer._save_rng_state, models.load_model


def _save_rng_state(self, output_dir: str) -> None:
    if self.state.global_step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    save_rng_state(self, output_dir)


def _load_model(*args, dropout: bool = True, **kwargs):
    model = load_model(*args, dropout=dropout, **kwargs)
    for module in model.modules() if dropout else []:
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.1
    return model


Trainer._save_rng_state, models.load_model = _save_rng_state, _load_model

if __name__ == "__main__":
    run_cli(main, sys.argv[2:])
