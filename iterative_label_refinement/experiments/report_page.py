"""The report page: `report.html`, one self-contained page per results folder (its plots embedded as PNG).

`experiments.report` writes it beside `report.csv`. Per dataset and model pair: the printed tables; test
accuracy against round per method (mean and standard error over seeds); the training labels' accuracy
and the precision of the replacements per round; DPO's reward margin and implicit KL per round beside
its test accuracy; every round's training-loss curve, overlaid per method. Then each evaluator's
training curve and held-out pair accuracy, and the pipelines' settings (their manifests). Under each
plot, the numbers it draws.

The curves come from each run's `train_log.jsonl` (core.train.keep_curves). A DPO round's margin and KL
are those of its last logged training step (the policy it ends with); a run without them shows none.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterative_label_refinement.core.files import read_json
from iterative_label_refinement.core.train_options import TRAIN_LOG

MARGIN, KL = "rewards/margins", "kl"  # DPO's diagnostics, as core.dpo logs them (TRL's names)

# One point of a per-round plot: (round, mean over seeds, standard error or None, seeds it has).
Point = tuple[int, float, float | None, int]


@dataclass(frozen=True)
class Figure:
    """A plot with the numbers it draws: `rows`, a table under it (header first)."""

    title: str
    png: bytes
    rows: list[list[str]]


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's log history (`train_log.jsonl`), [] for a run without one (made before they were kept)."""
    path = Path(run_dir) / TRAIN_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_logged(log: list[dict[str, Any]], key: str) -> float | None:
    """The value of `key` at the last record that has it (the run's last logged training step)."""
    values = [r[key] for r in log if key in r]
    return values[-1] if values else None


def loss_curve(log: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(optimizer step, training loss) of every logged training step (not evaluation or summary records)."""
    return [(r["step"], r["loss"]) for r in log if "loss" in r and "step" in r]


def per_round(by_round: dict[int, Any], value: Callable[[Any], tuple[float | None, float | None]]) -> list[Point]:
    """The rounds where `value(summary)` (a mean and its standard error) is known, in order."""
    points = []
    for r, s in sorted(by_round.items()):
        mean, se = value(s)
        if mean is not None:
            points.append((r, mean, se, len(s.seeds)))
    return points


def logged_per_round(by_round: dict[int, Any], key: str) -> list[Point]:
    """`key`'s last logged value in each round's runs: mean and standard error over the seeds that logged it."""
    from iterative_label_refinement.core.eval import mean_and_stderr

    points = []
    for r, s in sorted(by_round.items()):
        values = [v for v in (last_logged(read_log(d), key) for d in s.run_dirs) if v is not None]
        if values:
            mean, se = mean_and_stderr(values)
            points.append((r, mean, se, len(values)))
    return points


def fmt(mean: float, se: float | None, scale: float = 1, digits: int = 1) -> str:
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * se:.{digits}f}" if se is not None else "")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # tight: no title or legend clipped
    _pyplot().close(fig)
    return buffer.getvalue()


def _rounds_axis(ax, ylabel: str) -> None:
    import matplotlib.ticker

    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def round_panels(title: str, panels: list[tuple[str, float, dict[str, list[Point]]]]) -> Figure | None:
    """Side-by-side plots against round: each panel (y label, scale, series name -> points) draws every
    series with its standard errors. The table: one row per series and panel, one column per round
    (percentages, scale 100, to 0.1; other values to 0.001)."""
    panels = [(label, scale, {k: v for k, v in series.items() if v}) for label, scale, series in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False, sharex=True)
    rounds = sorted({p[0] for _, _, series in panels for points in series.values() for p in points})
    rows = [["", "series"] + [f"r{r}" for r in rounds]]
    # One color per series in every panel: a panel that lacks a series must not shift the others' colors.
    names = sorted({name for _, _, series in panels for name in series})
    color = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for ax, (label, scale, series) in zip(axes[0], panels):
        for name, points in sorted(series.items()):
            ax.errorbar([p[0] for p in points], [scale * p[1] for p in points],
                        yerr=[scale * p[2] if p[2] is not None else 0.0 for p in points],
                        marker="o", capsize=3, label=name, color=color[name])  # fmt: skip
            at = {p[0]: p for p in points}
            digits = 1 if scale == 100 else 3
            rows.append([label, name] + [fmt(at[r][1], at[r][2], scale, digits) if r in at else "-" for r in rounds])
        _rounds_axis(ax, label)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:  # one legend for the figure: every series of every panel, once
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=min(len(labels), 4), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return Figure(title, _png(fig), rows)


def loss_curves(title: str, curves: dict[str, dict[int, list[list[tuple[int, float]]]]]) -> Figure | None:
    """One panel per method: the training loss against optimizer step of each round's run (one line per
    seed), colored by round. The table: per method and round, the first and last logged loss (mean over seeds)."""
    curves = {m: by_round for m, by_round in curves.items() if any(c for cs in by_round.values() for c in cs)}
    if not curves:
        return None
    plt = _pyplot()
    import matplotlib.ticker

    n = len(curves)
    cols = min(n, 3)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(4.6 * cols, 3.4 * -(-n // cols)), squeeze=False)
    colors = plt.get_cmap("viridis")
    last_round = max(r for by_round in curves.values() for r in by_round) or 1
    rows = [["method", "round", "runs", "first loss", "last loss"]]
    for ax, (method, by_round) in zip(axes.flat, sorted(curves.items())):
        for r, runs in sorted(by_round.items()):
            runs = [c for c in runs if c]
            for i, curve in enumerate(runs):
                ax.plot([s for s, _ in curve], [v for _, v in curve], color=colors(0.85 * r / last_round),
                        linewidth=1, alpha=0.8, label=f"round {r}" if i == 0 else None)  # fmt: skip
            if runs:
                first = sum(c[0][1] for c in runs) / len(runs)
                last = sum(c[-1][1] for c in runs) / len(runs)
                rows.append([method, str(r), str(len(runs)), f"{first:.3f}", f"{last:.3f}"])
        ax.set_title(method, fontsize=9)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return Figure(title, _png(fig), rows)


def evaluator_figure(path: Path) -> Figure:
    """An evaluator's training loss (per step) and evaluation loss (per epoch) against epoch, titled
    with its held-out pair accuracy."""
    summary = read_json(path / "results_summary.json")
    log = read_log(path)
    train = [(r["epoch"], r["loss"]) for r in log if "loss" in r and "epoch" in r]
    evals = [(r["epoch"], r["eval_loss"]) for r in log if "eval_loss" in r]
    accuracy = summary.get("pair_accuracy")
    title = f"evaluator {path.parent.name}/{path.name}"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if train:
        ax.plot([e for e, _ in train], [v for _, v in train], linewidth=1, label="training loss")
    if evals:
        ax.plot([e for e, _ in evals], [v for _, v in evals], marker="o", label="held-out loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no train_log.jsonl (trained before curves were kept)", ha="center", transform=ax.transAxes)
    shown = "-" if accuracy is None else f"{100 * accuracy:.1f}%"
    ax.set_title(f"held-out pair accuracy {shown}", fontsize=9)
    fig.tight_layout()
    rows = [["measure", "value"], ["held-out pair accuracy", shown]]
    rows += [[f"pair accuracy ({k})", f"{100 * v:.1f}%"] for k, v in summary.get("pair_accuracy_by_kind", {}).items()]
    rows += [[f"held-out loss, epoch {e:g}", f"{v:.4f}"] for e, v in evals]
    return Figure(title, _png(fig), rows)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:.4em 0 1.6em}td,th{border:1px solid #ccc;padding:2px 8px}
img{max-width:100%}h2{border-bottom:1px solid #ccc}"""


def _table(rows: list[list[str]], header: bool = True) -> str:
    out = []
    for i, row in enumerate(rows):
        tag = "th" if header and i == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{html.escape(str(x))}</{tag}>" for x in row) + "</tr>")
    return "<table>" + "".join(out) + "</table>"


def figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode()
    return (f'<h3>{html.escape(figure.title)}</h3>\n<img alt="{html.escape(figure.title)}" '
            f'src="data:image/png;base64,{data}">\n{_table(figure.rows)}')  # fmt: skip


def manifests_html(manifests: list[dict[str, Any]]) -> str:
    """Each pipeline run: script, when, commit, library versions, and its settings (folded)."""
    if not manifests:
        return "<p>No manifests (runs made without scripts/, or before they wrote them).</p>"
    parts = []
    for m in manifests:
        if "error" in m:
            parts.append(f"<p>{html.escape(m['path'])}: {html.escape(m['error'])}</p>")
            continue
        git = m.get("git") or {}
        commit = (git.get("commit") or "no git checkout")[:12] + (" (dirty)" if git.get("dirty") else "")
        head = [["pipeline", str(m.get("pipeline"))], ["script", str(m.get("script"))],
                ["recorded", str(m.get("recorded"))], ["commit", commit], ["python", str(m.get("python"))]]  # fmt: skip
        head += [[k, str(v)] for k, v in (m.get("versions") or {}).items()]
        settings = [[k, "" if v is None else str(v)] for k, v in sorted((m.get("settings") or {}).items())]
        parts.append(f"<h3>{html.escape(str(m.get('pipeline')))} ({html.escape(str(m.get('recorded')))})</h3>"
                     + _table(head, header=False)
                     + f"<details><summary>settings ({len(settings)})</summary>{_table(settings, header=False)}</details>")  # fmt: skip
    return "\n".join(parts)


def write_page(path: Path, title: str, sections: list[tuple[str, str, list[Figure]]], evaluators: list[Figure],
               manifests: list[dict[str, Any]]) -> None:  # fmt: skip
    """`sections`: (heading, the printed tables, figures) per dataset and model pair."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, text, figures in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>\n<pre>{html.escape(text.strip())}</pre>")
        body += [figure_html(f) for f in figures]
    body.append("<h2>Evaluators</h2>")
    body += [figure_html(f) for f in evaluators] or ["<p>No evaluator under this results folder.</p>"]
    body.append("<h2>Pipeline settings</h2>")
    body.append(manifests_html(manifests))
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page)
    tmp.replace(path)
