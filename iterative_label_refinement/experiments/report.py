"""The results report: method x round tables over seeds, a CSV, and the paper's accuracy-vs-round plot.

    python -m iterative_label_refinement.experiments.report --results_folder=results

Runs are found from their `experiment_config.json`. Per dataset (and strong/weak model pair) it
prints test accuracy per method and round, the accuracy of the labels each round trained on (when
correctness is known), what each refinement step's replacements did to the labels, and the
weak-model baseline. Runs that differ only by seed are one cell: the mean over seeds, with the
standard error of the mean when there are several, and `[2/3]` when only 2 of the row's 3 seeds
have the cell. Runs of one method that differ in anything else (a learning rate, the weights, ...)
are rows side by side, named by the settings that differ: `ilr0.15 [lr=0.0001]`. Missing rounds
show as "-", never invented; run dirs without results (a failed or unfinished run) are listed as
skipped. The pipelines' manifests (scripts/lib.sh: settings, commit, library versions) are printed
and copied into `report_provenance.json`.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from iterative_label_refinement.core.cli import INSIDE
from iterative_label_refinement.core.eval import mean_and_stderr
from iterative_label_refinement.core.files import read_json, write_json
from iterative_label_refinement.core.label_sets import first, is_label_set, label_accuracy
from iterative_label_refinement.core.layout import (
    REPORT_CSV,
    REPORT_PAGE,
    REPORT_PROVENANCE,
    WEAK_LABELS,
    beside,
    current_labels_path,
    evaluator_dirs,
    refined_path,
    report_plot,
)
from iterative_label_refinement.core.methods import Method, parse_method
from iterative_label_refinement.core.saved_models import recorded_weights
from iterative_label_refinement.core.settings import ConfigError, get_logger, get_save_path
from iterative_label_refinement.experiments import report_page
from iterative_label_refinement.experiments.manifest import MANIFESTS

logger = get_logger(__name__)

# Config entries that name where a run's inputs came from: they differ between seeds by construction.
_SEED_KEYS = ("seed", "weak_labels_path", "dpo_path")
_WEIGHTS_KEYS = ("model_loaded_from", "model_weights")
# Config entries added after runs were already recorded: a record without one is unknown there, not different.
_LATER_KEYS = ("lora_target_modules", "lora_alpha", "dtype", "mixed_precision", "gradient_checkpointing")


@dataclass(frozen=True)
class Replacements:
    """What one refinement step did to the labels: how many it changed, and which way each went."""

    changed: int
    wrong_to_right: int
    right_to_wrong: int

    @property
    def precision(self) -> float | None:
        """Of the changes that altered a label's correctness, the share that fixed it."""
        moved = self.wrong_to_right + self.right_to_wrong
        return self.wrong_to_right / moved if moved else None


@dataclass(frozen=True)
class Cell:
    """One run: a method at one round for one seed."""

    dataset: str
    strong: str
    weak: str
    method: str
    round_id: int
    seed: int | None
    settings: dict[str, Any]  # the run's config without its seed, flattened (`weak_model.lr`)
    test_accuracy: float | None
    label_accuracy: float | None
    replacements: Replacements | None
    run_dir: str
    weak_dir: str | None  # name of the weak run whose labels this run trained on (of itself for a weak run)
    setting: str = ""  # the settings that tell this run's row from the method's other rows (`label_rows`)


@dataclass(frozen=True, order=True)
class Row:
    """One row of the tables: a method, and the settings that tell it from the method's other rows."""

    method: str
    setting: str = ""

    @property
    def name(self) -> str:
        return f"{self.method} [{self.setting}]" if self.setting else self.method


@dataclass(frozen=True)
class Summary:
    """A method at one round over the seeds that have it."""

    seeds: tuple[Any, ...]
    of: int  # how many seeds the group has
    test: tuple[float | None, float | None]  # (mean, standard error)
    labels: tuple[float | None, float | None]
    replacements: Replacements | None  # summed over seeds
    precision: tuple[float | None, float | None]  # per-seed replacement precision: (mean, standard error)
    run_dirs: tuple[str, ...]


def _short(name: str | None) -> str:
    return (name or "").rstrip("/").split("/")[-1]


def _load(path: Path, columns: tuple[str, ...]) -> dict[str, list[Any]] | None:
    """The named columns of a label set, or None when it is absent or lacks one of them."""
    if not is_label_set(path):
        return None
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    if any(c not in ds.column_names for c in columns):
        return None
    return {c: ds[c] for c in columns}


def _label_rows(path: Path) -> list[tuple[str, str, Any]] | None:
    """(question, answer, acc) of a label set's rows, or None when it is absent or has no `acc`."""
    cols = _load(path, ("question", "answer", "acc"))
    if cols is None:
        return None
    return [(q, first(a), first(c)) for q, a, c in zip(cols["question"], cols["answer"], cols["acc"])]


def label_set_accuracy(path: str | Path | None) -> float | None:
    """Mean correctness of a label set's `acc` column (first sample of each row; for a preference
    set, the chosen answers), if known."""
    cols = _load(Path(path), ("acc",)) if path else None
    return label_accuracy(cols["acc"]) if cols else None


def replacement_counts(before: list[tuple[str, str, Any]], after: list[tuple[str, str, Any]]) -> Replacements | None:
    """Compare two label sets row by row (matched by question): the answers that changed, and whether
    each went from wrong to right or right to wrong. A question asked twice is compared as a multiset:
    its net change in correct labels counts. None when a changed label's correctness is unknown."""
    old: dict[str, Counter] = defaultdict(Counter)
    new: dict[str, Counter] = defaultdict(Counter)
    for q, a, c in before:
        old[q][(a, c)] += 1
    for q, a, c in after:
        new[q][(a, c)] += 1
    changed = up = down = 0
    for q, answers in new.items():
        added, removed = answers - old[q], old[q] - answers
        if not added:
            continue
        if any(c is None for _, c in list(added) + list(removed)):
            return None
        net = sum(c * n for (_, c), n in added.items()) - sum(c * n for (_, c), n in removed.items())
        changed += sum(added.values())
        up += max(0, round(net))
        down += max(0, -round(net))
    return Replacements(changed, up, down)


def labels_path(run_dir: Path, config: dict[str, Any]) -> Path | None:
    """The label set a run trained on. The config holds the path as given on its command line, often
    relative to where the scripts ran; label sets live in the weak run dir, which sits beside the run
    in its sweep folder, so a path that does not resolve from here is looked for there."""
    given = config.get("weak_labels_path")
    if not given:
        return None
    path = Path(given)
    if path.exists():
        return path
    moved = beside(run_dir, path)
    if moved.exists():
        return moved
    logger.warning("%s: its labels %s are not found (nor at %s)", run_dir, given, moved)
    return path


def _replacements(config: dict[str, Any], path: Path | None) -> Replacements | None:
    """What the refinement step before this round did: its labels against the ones it started from."""
    if config["round_id"] < 1 or config.get("do_dpo") or path is None:
        return None
    after = _label_rows(path)
    before = _label_rows(current_labels_path(path.parent, config["method"], config["round_id"] - 1))
    if after is None or before is None:
        return None
    return replacement_counts(before, after)


def _accuracy(run_dir: Path) -> float | None:
    summary = run_dir / "results_summary.json"
    return read_json(summary).get("accuracy") if summary.exists() else None


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config without what differs between seeds by construction, flattened: the weak run's
    entries as `weak_model.<key>`. The shared round-0 SFT run drops `method`: it names only the
    pipeline that happened to train it first."""

    def strip(c: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in c.items():
            if k == "weak_model" and isinstance(v, dict):
                out.update(strip(v, f"{prefix}{k}."))
            elif k not in _SEED_KEYS + _WEIGHTS_KEYS:
                out[prefix + k] = v
        # Which weights, not where they were loaded from (a cache folder differs between machines),
        # nor whether the record predates `model_weights`.
        if "model_size" in c:
            out[prefix + "model_weights"] = recorded_weights(c) or c["model_size"]
        return out

    out = strip(config, "")
    if config.get("weak_model") and config["round_id"] == 0 and not config.get("do_dpo"):
        out.pop("method", None)
    return out


def differing(settings: list[dict[str, Any]]) -> list[str]:
    """The keys on which these runs' settings differ (a key some lack counts as differing, as such
    keys are recorded only away from their default), except keys added to the record later
    (`_LATER_KEYS`) that an older record lacks: those are unknown, not different."""
    keys = sorted({k for s in settings for k in s})
    later = [k for k in keys if k.rsplit(".", 1)[-1] in _LATER_KEYS and any(k not in s for s in settings)]
    return [k for k in keys if k not in later and len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1]


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def label_rows(cells: list[Cell]) -> list[Cell]:
    """Each cell with its row's `setting`: its values of the keys on which its method's runs differ
    at some round. Runs of one method that differ only by seed share a row; the keys are found per
    round, since settings such as DPO's learning rate differ between rounds by design."""
    by_round: dict[tuple[str, int], list[Cell]] = defaultdict(list)
    for c in cells:
        by_round[(c.method, c.round_id)].append(c)
    keys: dict[str, set[str]] = defaultdict(set)
    for (method, _), cs in by_round.items():
        keys[method].update(differing([c.settings for c in cs]))
    return [replace(c, setting=", ".join(f"{k}={_value(c.settings.get(k))}" for k in sorted(keys[c.method])))
            for c in cells]  # fmt: skip


def _family(config: dict[str, Any]) -> list[str]:
    """Which method rows a run belongs to. Round 0 of ILR and naive is one shared SFT run, so it
    belongs to every non-DPO method trained on the same weak labels (filled in by `collect`)."""
    method = config.get("method") or ""
    if config["round_id"] >= 1:
        return [config["weak_label_type"]]
    if config.get("do_dpo"):
        return [method]
    return ["SFT (corweak)" if config.get("weak_label_type") == "corweak" else "SFT"]


def _method(row: str) -> Method | None:
    """The refinement method a table row is, or None for the round-0 SFT rows and the weak model."""
    return None if row.startswith("SFT") or row == "weak model" else parse_method(row)


def _row_order(row: Row) -> tuple[bool, bool, str, str]:
    """Refinement methods first, then DPO, then the SFT and weak-model rows; by name within each."""
    method = _method(row.method)
    return method is None, method is not None and method.is_dpo, row.method, row.setting


def find_runs(results_folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    runs = []
    for config_path in sorted(results_folder.rglob("experiment_config.json")):
        config = read_json(config_path)
        if "round_id" in config and "ds_name" in config:
            runs.append((config_path.parent, config))
    return runs


def collect(results_folder: Path) -> tuple[list[Cell], list[Cell], list[tuple[str, str]]]:
    """(method cells, weak-model baselines, skipped run dirs with why) of the full-data runs under
    `results_folder`. A run dir without `results_summary.json` (a failed or unfinished run) is
    skipped, not reported: it has no result, and it must not stand for its setting."""
    cells: list[Cell] = []
    weak: list[Cell] = []
    runs = find_runs(results_folder)
    # An empty folder beside run dirs is a run dir that died before its config (not an emptied one inside a run).
    sweeps = sorted({run_dir.parent for run_dir, _ in runs})
    skipped = [(str(d), "empty") for s in sweeps for d in sorted(s.iterdir()) if d.is_dir() and not any(d.iterdir())]
    for run_dir, config in runs:
        if config.get("half_data"):
            continue  # cross-fitting models: a means, not a result
        if not (run_dir / "results_summary.json").exists():
            skipped.append((str(run_dir), "no results_summary.json"))
            continue
        dataset, strong, seed = config["ds_name"], _short(config["model_size"]), config.get("seed")
        if not config.get("weak_model"):
            summary = read_json(run_dir / "results_summary.json")
            if (run_dir / WEAK_LABELS).exists():
                weak.append(Cell(dataset, strong, "-", "weak model", 0, seed, run_settings(config),
                                 summary.get("accuracy"), summary.get("label_accuracy"), None, str(run_dir),
                                 run_dir.name))  # fmt: skip
            continue
        trained_on = labels_path(run_dir, config)
        weak_dir = trained_on.parent.name if trained_on else None
        label_acc = label_set_accuracy(trained_on)
        replaced = _replacements(config, trained_on)
        for method in _family(config):
            cells.append(Cell(dataset, strong, _short(config["weak_model"]["model_size"]), method, config["round_id"],
                              seed, run_settings(config), _accuracy(run_dir), label_acc, replaced, str(run_dir),
                              weak_dir))  # fmt: skip
    # The shared round-0 SFT run is every non-DPO method's round 0.
    for cell in list(cells):
        if cell.method.startswith("SFT"):
            correct = cell.method == "SFT (corweak)"
            for name in {c.method for c in cells if c.round_id >= 1 and _method(c.method) is not None}:
                method = _method(name)
                if not method.is_dpo and method.correct_start == correct:
                    cells.append(replace(cell, method=name))
    return cells, weak, skipped


def describe_feedback(record: dict[str, Any] | None) -> str:
    """The feedback source a label set's provenance names (`core.refinement_step.step_record`)."""
    source = (record or {}).get("inputs", {}).get("feedback")
    if source is None:
        return "not recorded"
    if source == "oracle":
        return "oracle (ground truth)"
    if "judge" in source:
        judge = source["judge"]
        return f"LLM judge {judge['model']} at {judge['base_url']} (template {judge['template']})"
    if "human_verdicts" in source:
        return f"human verdicts {source['human_verdicts']['name']} (sha256 {source['human_verdicts']['sha256']})"
    return f"evaluator {source.get('name')}"


def feedback_lines(cells: list[Cell]) -> list[str]:
    """Per method, the feedback sources of the label sets its rounds trained on."""
    from iterative_label_refinement.core.provenance import read_record

    sources: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        method = _method(c.method)
        if c.round_id >= 1 and method is not None and method.takes_feedback and c.weak_dir:
            label_set = refined_path(Path(c.run_dir).parent / c.weak_dir, method, c.round_id - 1)
            sources[c.method].add(describe_feedback(read_record(label_set)))
    return [f"{name}: {'; '.join(sorted(found))}" for name, found in sorted(sources.items())]


def summarize(cells: list[Cell], seeds: tuple[Any, ...]) -> Summary:
    """One row's round over seeds (`label_rows` put runs that differ in anything but the seed in
    different rows). Two runs of one seed there are the same experiment twice, e.g. in two sweep
    folders: which one counts is not for the report to guess."""
    by_seed: dict[Any, Cell] = {}
    for c in cells:
        if c.seed in by_seed:
            raise ConfigError(f"two runs of {Row(c.method, c.setting).name} round {c.round_id} seed {c.seed} with the "
                              f"same settings: {by_seed[c.seed].run_dir} and {c.run_dir}; report one of them "
                              "(--sweep_subfolder, or move one away)")  # fmt: skip
        by_seed[c.seed] = c
    ordered = [by_seed[s] for s in sorted(by_seed, key=str)]
    reps = [c.replacements for c in ordered if c.replacements is not None]
    total = Replacements(*(sum(getattr(r, f) for r in reps) for f in ("changed", "wrong_to_right", "right_to_wrong")))
    return Summary(
        seeds=tuple(c.seed for c in ordered),
        of=len(seeds),
        test=mean_and_stderr(c.test_accuracy for c in ordered),
        labels=mean_and_stderr(c.label_accuracy for c in ordered),
        replacements=total if reps else None,
        precision=mean_and_stderr(r.precision for r in reps),
        run_dirs=tuple(c.run_dir for c in ordered),
    )


def grid(cells: list[Cell]) -> dict[Row, dict[int, Summary]]:
    """row -> round -> summary over the seeds of these cells (a row's seeds: those of any of its rounds)."""
    groups: dict[tuple[Row, int], list[Cell]] = defaultdict(list)
    for c in label_rows(cells):
        groups[(Row(c.method, c.setting), c.round_id)].append(c)
    seeds: dict[Row, set[Any]] = defaultdict(set)
    for (row, _), cs in groups.items():
        seeds[row].update(c.seed for c in cs)
    out: dict[Row, dict[int, Summary]] = defaultdict(dict)
    for (row, round_id), cs in groups.items():
        out[row][round_id] = summarize(cs, tuple(sorted(seeds[row], key=str)))
    return out


def fmt_pct(mean_and_se: tuple[float | None, float | None], digits: int = 1) -> str:
    mean, se = mean_and_se
    if mean is None:
        return "-"
    return f"{100 * mean:.{digits}f}" + (f"±{100 * se:.{digits}f}" if se is not None else "")


def _coverage(s: Summary) -> str:
    return f"[{len(s.seeds)}/{s.of}]" if len(s.seeds) < s.of else ""


def fmt_replacements(s: Summary) -> str:
    r = s.replacements
    if r is None:
        return "-"
    return f"{r.wrong_to_right}/{r.right_to_wrong} {fmt_pct(s.precision, 0)}%" + _coverage(s)


def table(summaries: dict[Row, dict[int, Summary]], entry: Callable[[Summary], str],
          keep: Callable[[Row], bool] = lambda row: True) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    """Rows: methods (and their settings); columns: rounds; `entry` formats a cell, "-" where a run is missing."""
    rounds = sorted({r for by_round in summaries.values() for r in by_round})
    header = ["method"] + [f"r{r}" for r in rounds]
    rows = []
    for row in sorted(summaries, key=_row_order):
        if keep(row):
            rows.append([row.name] + [entry(summaries[row][r]) if r in summaries[row] else "-" for r in rounds])
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(summaries: dict[Row, dict[int, Summary]], weak: dict[Row, Summary], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for row, by_round in sorted(summaries.items()):
        points = [(r, s.test) for r, s in sorted(by_round.items()) if s.test[0] is not None]
        if row.method.startswith("SFT") or not points:
            continue
        errors = [100 * se if se is not None else 0.0 for _, (_, se) in points]
        ax.errorbar([r for r, _ in points], [100 * m for _, (m, _) in points], yerr=errors, marker="o", capsize=3,
                    label=row.name)  # fmt: skip
    for row, baseline in sorted(weak.items()):
        if baseline.test[0] is not None:
            ax.axhline(100 * baseline.test[0], color="gray", linestyle="--", label=row.name)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # tight: a long title is not clipped
    plt.close(fig)


def page_figures(dataset: str, strong: str, summaries: dict[Row, dict[int, Summary]], accuracy_png: Path,
                 out: Path) -> list[report_page.Figure]:  # fmt: skip
    """The report page's plots of one dataset and model pair, each also written as a PNG beside the page.
    The shared round-0 SFT rows are left out: each method's row has that run as its round 0."""
    rows = {row: by_round for row, by_round in summaries.items() if not row.method.startswith("SFT")}
    test = {row.name: report_page.per_round(by_round, lambda s: s.test) for row, by_round in rows.items()}
    accuracy = report_page.round_panels("", [("test accuracy (%)", 100, test)])
    figures = [report_page.Figure("Test accuracy by round (mean ± standard error over seeds)",
                                  accuracy_png.read_bytes(), accuracy.rows if accuracy else [])]  # fmt: skip
    labels = {row.name: report_page.per_round(by_round, lambda s: s.labels) for row, by_round in rows.items()}
    precision = {row.name: report_page.per_round(by_round, lambda s: s.precision) for row, by_round in rows.items()}
    dpo = {row: by_round for row, by_round in rows.items() if _method(row.method).is_dpo}
    made = {
        "labels": report_page.round_panels(
            f"{dataset}: training labels and what refinement did to them",
            [("training labels correct (%)", 100, labels), ("precision of replacements (%)", 100, precision)]),
        "dpo": report_page.round_panels(
            f"{dataset}: DPO's reward margin and implicit KL (last logged step of each round) beside its test accuracy",
            [("test accuracy (%)", 100, {row.name: test[row.name] for row in dpo}),
             ("reward margin", 1, {row.name: report_page.logged_per_round(b, report_page.MARGIN) for row, b in dpo.items()}),
             ("implicit KL", 1, {row.name: report_page.logged_per_round(b, report_page.KL) for row, b in dpo.items()})]),
        # DPO's loss is another objective than SFT's: its panel has its DPO rounds, not round 0's SFT run.
        "losses": report_page.loss_curves(
            f"{dataset}: training loss of every round's run ({strong})",
            {row.name + (" (DPO loss, rounds 1+)" if row in dpo else ""):
             {r: [report_page.loss_curve(report_page.read_log(d)) for d in s.run_dirs]
              for r, s in by_round.items() if not (row in dpo and r == 0)} for row, by_round in rows.items()}),
    }  # fmt: skip
    for kind, figure in made.items():
        if figure is not None:
            report_plot(out, kind, dataset, strong).write_bytes(figure.png)
            figures.append(figure)
    return figures


CSV_COLUMNS = ["dataset", "strong", "weak", "method", "settings", "round", "seeds", "n_seeds", "test_accuracy", "test_accuracy_se",
               "label_accuracy", "label_accuracy_se", "replaced", "wrong_to_right", "right_to_wrong",
               "replacement_precision", "replacement_precision_se", "run_dirs"]  # fmt: skip


def _csv_row(dataset: str, strong: str, weak: str, row: Row, round_id: int, s: Summary) -> list[Any]:
    r = s.replacements
    return [dataset, strong, weak, row.method, row.setting, round_id, ";".join(str(x) for x in s.seeds), len(s.seeds), *s.test,
            *s.labels, r and r.changed, r and r.wrong_to_right, r and r.right_to_wrong, *s.precision,
            ";".join(s.run_dirs)]  # fmt: skip


def read_manifests(root: Path) -> list[dict[str, Any]]:
    """The pipelines' manifests under `root` (scripts/lib.sh writes one per pipeline run), oldest first;
    one that cannot be read is kept as its path and the error, not dropped."""
    found = []
    for path in sorted(root.rglob(f"{MANIFESTS}/*.json")):
        try:
            found.append({"path": str(path), **read_json(path)})
        except (OSError, ValueError) as e:
            found.append({"path": str(path), "error": f"unreadable: {e}"})
    return sorted(found, key=lambda m: str(m.get("recorded", "")))


def format_manifests(manifests: list[dict[str, Any]]) -> list[str]:
    """One line per distinct (commit, library versions): the pipeline runs made with it."""
    if not manifests:
        return ["pipelines: no manifests (runs made without scripts/, or before they wrote them)"]
    runs: dict[str, Counter] = defaultdict(Counter)
    unreadable = []
    for m in manifests:
        if "error" in m:
            unreadable.append(f"  {m['path']}: {m['error']}")
            continue
        git, versions = m.get("git") or {}, m.get("versions") or {}
        commit = (git.get("commit") or "no git checkout")[:12] + (" (dirty)" if git.get("dirty") else "")
        made_with = ", ".join([f"commit {commit}"] + [f"{k} {v}" for k, v in versions.items()])
        runs[made_with][str(m.get("pipeline"))] += 1
    lines = [f"  {made_with}: " + ", ".join(f"{p} x{n}" for p, n in sorted(c.items())) for made_with, c in runs.items()]
    return ["pipeline runs (manifests: settings, commit, versions in report_provenance.json):", *lines, *unreadable]


def main(results_folder: str | None = None, out_dir: str | None = None,
         sweep_subfolder: Annotated[str | None, INSIDE] = None) -> str:  # fmt: skip
    """Print the tables; write `report.csv`, one `accuracy_<dataset>_<strong>.png` per group,
    `report_provenance.json` (the pipelines' manifests and the skipped run dirs) and `report.html`
    (`report_page`: the tables, every plot, the evaluators and the pipelines' settings)."""
    root = get_save_path(results_folder)
    if sweep_subfolder:
        root = root / sweep_subfolder
    if not root.is_dir():
        raise ConfigError(f"results folder {root} does not exist")
    cells, weak, skipped = collect(root)
    if not cells and not weak:
        raise ConfigError(f"no runs with results (experiment_config.json and results_summary.json) under {root}"
                          + (f"; {len(skipped)} without: {skipped[0][0]}, ..." if skipped else ""))  # fmt: skip
    out = Path(out_dir) if out_dir else root
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out_dir={out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    manifests = read_manifests(root)
    text = format_manifests(manifests)
    if skipped:
        text.append(f"skipped {len(skipped)} run dir(s) without results (a failed or unfinished run):")
        text += [f"  {path} ({why})" for path, why in skipped]
    groups: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        groups[(c.dataset, c.strong, c.weak)].append(c)
    csv_rows, baselines_written = [], set()
    sections: list[tuple[str, str, list[report_page.Figure]]] = []
    for (dataset, strong, weak_name), group in sorted(groups.items()):
        summaries = grid(group)
        weak_dirs = {c.weak_dir for c in group}
        baselines = {row: by_round[0] for row, by_round in
                     grid([w for w in weak if w.dataset == dataset and w.weak_dir in weak_dirs]).items()}  # fmt: skip
        n_seeds = len({c.seed for c in group})
        first = len(text)
        text.append(f"\n== {dataset}: strong {strong}, weak {weak_name}" + (f", {n_seeds} seeds" if n_seeds > 1 else "")
                    + " ==")  # fmt: skip
        for row, baseline in sorted(baselines.items()):
            text.append(f"{row.name}: test accuracy {fmt_pct(baseline.test)}, weak-label accuracy "
                        f"{fmt_pct(baseline.labels)}{_coverage(baseline)}")  # fmt: skip
            if baseline.run_dirs not in baselines_written:
                baselines_written.add(baseline.run_dirs)
                csv_rows.append(_csv_row(dataset, weak_name, "-", row, 0, baseline))
        if n_seeds > 1:
            text.append("(mean±standard error over seeds; [k/n]: only k of the row's n seeds have that cell)")
        text.append("\nTest accuracy (%) by round:")
        text.append(format_table(*table(summaries, lambda s: fmt_pct(s.test) + _coverage(s))))
        text.append("\nAccuracy (%) of the training labels each round used:")
        text.append(format_table(*table(summaries, lambda s: fmt_pct(s.labels) + _coverage(s))))
        refined = {row for row, by_round in summaries.items() if any(s.replacements for s in by_round.values())}
        if refined:
            text.append("\nLabels the refinement step before each round replaced: wrong->right/right->wrong, and "
                        "precision (the share of those that fixed a label):")  # fmt: skip
            text.append(format_table(*table(summaries, fmt_replacements, keep=refined.__contains__)))
        feedback = feedback_lines(group)
        if feedback:
            text += ["\nFeedback source of each method's label sets (their provenance.json):", *feedback]
        png = report_plot(out, "accuracy", dataset, strong)
        plot(summaries, baselines, f"{dataset}: {strong} supervised by {weak_name}", png)
        sections.append((f"{dataset}: strong {strong}, weak {weak_name}", "\n".join(text[first + 1 :]),
                         page_figures(dataset, strong, summaries, png, out)))  # fmt: skip
        text.append(f"\nplot: {png}")
        for row, by_round in sorted(summaries.items()):
            csv_rows += [_csv_row(dataset, strong, weak_name, row, r, s) for r, s in sorted(by_round.items())]
    csv_path = out / REPORT_CSV
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_rows)
    provenance = out / REPORT_PROVENANCE
    write_json(provenance, {"manifests": manifests, "skipped": [{"path": p, "why": w} for p, w in skipped]})
    evaluators = [report_page.evaluator_figure(p) for p in evaluator_dirs(get_save_path(results_folder))]
    page = out / REPORT_PAGE
    report_page.write_page(page, f"Report: {root}", sections, evaluators, manifests)
    text += [f"csv: {csv_path}", f"provenance: {provenance}", f"page: {page}"]
    print("\n".join(text))
    return str(csv_path)


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
