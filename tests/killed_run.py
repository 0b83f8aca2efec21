"""`python tests/killed_run.py STEP <experiments.main flags>`: experiments.main, SIGKILLed while it saves
checkpoint-STEP, after the weights and the optimizer state are written, before the RNG state and
trainer_state.json: what a preemption in the middle of a save leaves (tests/test_resume.py)."""

from __future__ import annotations

import os
import signal
import sys

from transformers import Trainer

from iterative_label_refinement.core.cli import run_cli
from iterative_label_refinement.experiments.main import main

KILL_AT = int(sys.argv[1])
save_rng_state = Trainer._save_rng_state


def _save_rng_state(self, output_dir: str) -> None:
    if self.state.global_step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    save_rng_state(self, output_dir)


Trainer._save_rng_state = _save_rng_state

if __name__ == "__main__":
    run_cli(main, sys.argv[2:])
