"""The results report: method x round tables, a CSV, and the paper's accuracy-vs-round plot.

    python -m iterative_label_refinement.experiments.report --results_folder=results

Runs are found from their `experiment_config.json`. Per dataset (and strong/weak model pair) it
prints test accuracy per method and round, the accuracy of the labels each round trained on (when
correctness is known), and the weak-model baseline. Missing rounds show as "-", never invented.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.common import ConfigError, get_logger, get_save_path, read_json
from iterative_label_refinement.core.label_sets import first, is_label_set

logger = get_logger(__name__)


@dataclass(frozen=True)
class Cell:
    """One method at one round: test accuracy, and the accuracy of the labels it trained on."""

    dataset: str
    strong: str
    weak: str
    method: str
    round_id: int
    test_accuracy: float | None
    label_accuracy: float | None
    run_dir: str


def _short(name: str | None) -> str:
    return (name or "").rstrip("/").split("/")[-1]


def label_set_accuracy(path: str | None) -> float | None:
    """Mean correctness of a label set's `acc` column (first sample of each row), if known."""
    if not path or not is_label_set(Path(path)):
        return None
    from datasets import load_from_disk

    ds = load_from_disk(path)
    if "acc" not in ds.column_names:
        return None
    values = [first(a) for a in ds["acc"] if first(a) is not None]
    return sum(values) / len(values) if values else None


def _accuracy(run_dir: Path) -> float | None:
    summary = run_dir / "results_summary.json"
    return read_json(summary).get("accuracy") if summary.exists() else None


def _family(config: dict[str, Any]) -> list[str]:
    """Which method rows a run belongs to. Round 0 of ILR and naive is one shared SFT run, so it
    belongs to every non-DPO method trained on the same weak labels (filled in by `collect`)."""
    method = config.get("method") or ""
    if config["round_id"] >= 1:
        return [config["weak_label_type"]]
    if config.get("do_dpo"):
        return [method]
    return ["SFT (corweak)" if "cor" in (config.get("weak_label_type") or "") else "SFT"]


def find_runs(results_folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    runs = []
    for config_path in sorted(results_folder.rglob("experiment_config.json")):
        config = read_json(config_path)
        if "round_id" in config and "ds_name" in config:
            runs.append((config_path.parent, config))
    return runs


def collect(results_folder: Path) -> tuple[list[Cell], list[Cell]]:
    """(method cells, weak-model baselines) of every full-data run under `results_folder`."""
    cells: list[Cell] = []
    weak: list[Cell] = []
    for run_dir, config in find_runs(results_folder):
        if config.get("half_data"):
            continue  # cross-fitting models: a means, not a result
        dataset, strong = config["ds_name"], _short(config["model_size"])
        if not config.get("weak_model"):
            summary = read_json(run_dir / "results_summary.json") if (run_dir / "results_summary.json").exists() else {}
            if (run_dir / "weak_labels").exists():
                weak.append(Cell(dataset, strong, "-", "weak model", 0, summary.get("accuracy"),
                                 summary.get("label_accuracy"), str(run_dir)))  # fmt: skip
            continue
        label_acc = label_set_accuracy(config.get("weak_labels_path"))
        for method in _family(config):
            cells.append(Cell(dataset, strong, _short(config["weak_model"]["model_size"]), method, config["round_id"],
                              _accuracy(run_dir), label_acc, str(run_dir)))  # fmt: skip
    # The shared round-0 SFT run is every non-DPO method's round 0.
    for cell in list(cells):
        if cell.method.startswith("SFT"):
            correct = "corweak" in cell.method
            for method in {c.method for c in cells if c.round_id >= 1 and not c.method.startswith("SFT")}:
                if "dpo" not in method and method.startswith("cor") == correct:
                    cells.append(Cell(**{**cell.__dict__, "method": method}))
    return cells, weak


def table(cells: list[Cell], value: str) -> tuple[list[str], list[list[str]]]:
    """Rows: methods; columns: rounds; entries formatted, "-" where a run is missing or unscored."""
    rounds = sorted({c.round_id for c in cells})
    grid: dict[str, dict[int, Cell]] = defaultdict(dict)
    for c in cells:
        grid[c.method][c.round_id] = c
    header = ["method"] + [f"r{r}" for r in rounds]
    rows = []
    for method in sorted(grid, key=lambda m: (m.startswith("SFT"), "dpo" in m, m)):
        row = [method]
        for r in rounds:
            v = getattr(grid[method][r], value) if r in grid[method] else None
            row.append(f"{100 * v:.1f}" if v is not None else "-")
        rows.append(row)
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(cells: list[Cell], weak: list[Cell], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    by_method: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        if c.test_accuracy is not None and not c.method.startswith("SFT"):
            by_method[c.method].append(c)
    for method, cs in sorted(by_method.items()):
        cs.sort(key=lambda c: c.round_id)
        ax.plot([c.round_id for c in cs], [100 * c.test_accuracy for c in cs], marker="o", label=method)
    for w in weak:
        if w.test_accuracy is not None:
            ax.axhline(100 * w.test_accuracy, color="gray", linestyle="--", label=f"weak model ({w.strong})")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(results_folder: str | None = None, out_dir: str | None = None, sweep_subfolder: str | None = None) -> str:
    """Print the tables; write `report.csv` and one `accuracy_<dataset>_<strong>.png` per group."""
    root = get_save_path(results_folder)
    if sweep_subfolder:
        root = root / sweep_subfolder
    if not root.is_dir():
        raise ConfigError(f"results folder {root} does not exist")
    cells, weak = collect(root)
    if not cells and not weak:
        raise ConfigError(f"no runs (experiment_config.json) found under {root}")
    out = Path(out_dir) if out_dir else root
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        groups[(c.dataset, c.strong, c.weak)].append(c)
    text = []
    for (dataset, strong, weak_name), group in sorted(groups.items()):
        baselines = [w for w in weak if w.dataset == dataset and w.strong == weak_name]
        text.append(f"\n== {dataset}: strong {strong}, weak {weak_name} ==")
        for w in baselines:
            acc = f"{100 * w.test_accuracy:.1f}" if w.test_accuracy is not None else "-"
            lab = f"{100 * w.label_accuracy:.1f}" if w.label_accuracy is not None else "-"
            text.append(f"weak model: test accuracy {acc}, weak-label accuracy {lab}")
        text.append("\nTest accuracy (%) by round:")
        text.append(format_table(*table(group, "test_accuracy")))
        text.append("\nAccuracy (%) of the training labels each round used:")
        text.append(format_table(*table(group, "label_accuracy")))
        png = out / f"accuracy_{dataset}_{strong}.png"
        plot(group, baselines, f"{dataset}: {strong} supervised by {weak_name}", png)
        text.append(f"\nplot: {png}")
    csv_path = out / "report.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "strong", "weak", "method", "round", "test_accuracy", "label_accuracy", "run_dir"])
        for c in sorted(weak + cells, key=lambda c: (c.dataset, c.strong, c.method, c.round_id)):
            writer.writerow([c.dataset, c.strong, c.weak, c.method, c.round_id, c.test_accuracy, c.label_accuracy,
                             c.run_dir])  # fmt: skip
    text.append(f"csv: {csv_path}")
    print("\n".join(text))
    return str(csv_path)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
