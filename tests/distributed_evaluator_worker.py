"""One process of tests/test_distributed.py's evaluator check, run alone or under `torchrun` (gloo, CPU).

`DATA OUT`: `core.train_evaluator` trains the classifier, then the likelihood evaluator, on the pair data
in DATA (tiny-random, full fine-tune, effective batch 8 in minibatches of 2); rank 0 saves them under OUT.
"""

from __future__ import annotations

import sys

from iterative_label_refinement.core import train_evaluator
from iterative_label_refinement.plugins import load_plugins

load_plugins()  # the tiny models

if __name__ == "__main__":
    data, out = sys.argv[1], sys.argv[2]
    for kind in ("classifier", "likelihood"):
        train_evaluator.main(ds_name=data, model_size="tiny-random", evaluator_kind=kind, epochs=1, batch_size=8,
                             minibatch_size_per_device=2, lr=1e-3, warmup_ratio=0, results_folder=out)  # fmt: skip
