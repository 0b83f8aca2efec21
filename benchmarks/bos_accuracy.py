"""Does a BOS token before every prompt change a real model's weak and strong runs? Test accuracy, switch off and on.

    python benchmarks/bos_accuracy.py --raw_path=<folder with GSM8K train.jsonl and test.jsonl> \
        [--model=HuggingFaceTB/SmolLM2-135M-Instruct --n_docs=256 --n_test_docs=150 --epochs=2 --lr=3e-4]

For each setting of the registry's `add_bos_token` switch (set through an $ILR_MODELS_FILE, as a
user would), the paper's two first runs through `experiments.main`, with greedy decoding: the weak
run (SFT on ground truth for half of the `n_docs` training rows, test accuracy, and labels for the
other half) and the strong run (SFT on those labels, test accuracy). The same model plays both
parts; what differs between the two settings is only the BOS. Prints a table; the run dirs stay in
`--out` (a temporary folder by default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_main(env: dict[str, str], **flags) -> Path:
    """One `experiments.main` run; its run dir (the last stdout line)."""
    args = [f"--{k}={v}" for k, v in flags.items()]
    cmd = [sys.executable, "-m", "iterative_label_refinement.experiments.main", *args]
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def main(raw_path: str, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct", n_docs: int = 256,
         n_test_docs: int = 150, epochs: float = 2, lr: float = 3e-4, out: str | None = None) -> None:  # fmt: skip
    root = Path(out or tempfile.mkdtemp(prefix="bos_accuracy-"))
    data = root / "data"
    env = {**os.environ, "ILR_DATA_PATH": str(data), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if not (data / "gsm8k").exists():
        subprocess.run([sys.executable, "-m", "iterative_label_refinement.experiments.prepare_data", "--ds_name=gsm8k",
                        f"--raw_path={raw_path}"], env=env, check=True)  # fmt: skip
    common = dict(ds_name="gsm8k", model_size=model, n_docs=n_docs, n_test_docs=n_test_docs, epochs=epochs, lr=lr,
                  num_beams=1, batch_size=16, lora_rank=16)  # fmt: skip
    rows = []
    for bos in (False, True):
        settings = root / f"models-bos-{bos}.json"
        settings.write_text(json.dumps({model: {"add_bos_token": bos}}))
        setting_env = dict(env, ILR_MODELS_FILE=str(settings))
        folder = root / f"bos-{bos}"
        start = time.time()
        weak = run_main(setting_env, results_folder=folder, **common)
        strong = run_main(setting_env, results_folder=folder, weak_labels_path=weak, generate_weak_labels=False,
                          **common)  # fmt: skip
        w = json.loads((weak / "results_summary.json").read_text())
        s = json.loads((strong / "results_summary.json").read_text())
        rows.append((bos, w, s, time.time() - start))
    print(f"model {model}; GSM8K, {n_docs} training rows (weak run: SFT on {n_docs // 2} gold answers, labels the "
          f"other {n_docs - n_docs // 2}; strong run: SFT on those labels), {n_test_docs} test questions, "
          f"{epochs} epochs, lr {lr}, LoRA r16, greedy decoding")  # fmt: skip
    print("| add_bos_token | weak run: test accuracy | weak labels correct | strong run: test accuracy | seconds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for bos, w, s, seconds in rows:
        print(
            f"| {bos} | {100 * w['accuracy']:.1f}% ± {100 * w['accuracy_stderr']:.1f} (n={w['n_test']}) | "
            f"{100 * w['label_accuracy']:.1f}% (n={w['n_labels']}) | "
            f"{100 * s['accuracy']:.1f}% ± {100 * s['accuracy_stderr']:.1f} (n={s['n_test']}) | {seconds:.0f} |"
        )


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
