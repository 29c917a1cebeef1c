"""The report that merges a folder of result files: a Markdown table and a CSV (models as rows,
task/dataset/metric as columns, tasks in the registry's order with their headline metrics first) and the
MMVP-VLM per-pattern scores as a bar chart (with matplotlib, the ``plot`` extra).
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from un2clip.eval import TASKS
from un2clip.eval.core.results import UNITS, Table, load_results, markdown_table, write_csv

log = logging.getLogger(__name__)


def results_table(results: Sequence[dict[str, Any]], metrics: str = "headline") -> Table:
    """Merge results; ``metrics="headline"`` keeps each task's headline metrics, ``"all"`` every metric.

    A later result for the same (model, task, dataset) replaces an earlier one.
    """
    task_order = list(TASKS)
    models: list[str] = []
    keyed: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in results:
        if r["model"] not in models:
            models.append(r["model"])
        keyed[(r["model"], r["task"], r["dataset"])] = r["metrics"]
    columns: list[str] = []
    values: dict[tuple[str, str], float] = {}
    groups = sorted({(t, d) for _, t, d in keyed},
                    key=lambda td: (task_order.index(td[0]) if td[0] in task_order else len(task_order), td))
    for task, dataset in groups:
        names: list[str] = []
        for (_, t, d), m in keyed.items():
            if (t, d) == (task, dataset):
                names += [k for k in m if k not in names]
        if metrics == "headline" and task in TASKS:
            names = [k for k in TASKS[task].headline if k in names]
        for name in names:
            col = f"{task}/{dataset}/{name}"
            columns.append(col)
            for (model, t, d), m in keyed.items():
                if (t, d) == (task, dataset) and m.get(name) is not None:
                    values[(model, col)] = m[name]
    return Table(models, columns, values)


# -- MMVP per pattern --------------------------------------------------------------------------------------


def mmvp_patterns(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """dataset -> model -> pattern -> score (and ``average``), from the MMVP results."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        if r["task"] == "mmvp":
            scores = {k: v for k, v in r["metrics"].items() if not k.startswith("n_") and v is not None}
            out.setdefault(r["dataset"], {})[r["model"]] = scores
    return out


def plot_mmvp_patterns(results: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Grouped bars of the MMVP per-pattern scores, one panel per dataset; None without MMVP results.

    Needs matplotlib (``pip install 'un2clip[plot]'``).
    """
    data = mmvp_patterns(results)
    if not data:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.2 * len(data)), layout="constrained")
    axes = fig.subplots(len(data), 1, squeeze=False)[:, 0]
    for ax, (dataset, by_model) in zip(axes, data.items()):
        patterns = list(dict.fromkeys(p for scores in by_model.values() for p in scores))
        width = 0.8 / max(1, len(by_model))
        for m, (model, scores) in enumerate(by_model.items()):
            xs = [i + (m - (len(by_model) - 1) / 2) * width for i in range(len(patterns))]
            ax.bar(xs, [scores.get(p, 0.0) for p in patterns], width, label=model)
        ax.set_xticks(range(len(patterns)), [textwrap.fill(p, 16) for p in patterns], fontsize=8)
        ax.set_ylabel("pairs correct (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"MMVP-VLM per pattern: {dataset}")
        ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


# -- the report ------------------------------------------------------------------------------------------------


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    chart: Path | None
    text: str


def report_markdown(results: Sequence[dict[str, Any]], source: str, chart: str | None = None) -> str:
    """The report as Markdown: headline table, MMVP per-pattern tables, published anchors, chart."""
    table = results_table(results, "headline")
    parts = ["# un2clip evaluation report", "",
             f"{len(results)} result file(s) from `{source}`, {len(table.models)} model(s). {UNITS}", "",
             markdown_table(table)]
    for dataset, by_model in mmvp_patterns(results).items():
        patterns = list(dict.fromkeys(p for scores in by_model.values() for p in scores))
        values = {(m, p): s[p] for m, s in by_model.items() for p in s}
        parts += ["", f"## MMVP-VLM per pattern: {dataset}", "",
                  markdown_table(Table(list(by_model), patterns, values))]
    anchors = {r["model"]: r["published"] for r in results if r["task"] == "mmvp" and r.get("published")}
    if anchors:
        parts += ["", "Published MMVP-VLM averages (un²CLIP, arXiv 2505.24517):"]
        parts += [f"- {m}: original {a.get('original')}, un²CLIP {a.get('un2clip')}" for m, a in anchors.items()]
    if chart:
        parts += ["", f"![MMVP-VLM per pattern]({chart})"]
    return "\n".join(parts) + "\n"


def write_report(results_dir: str | Path, output: str | Path | None = None) -> ReportFiles:
    """Write ``report.md``, ``report.csv`` (every metric) and ``mmvp_patterns.png`` into ``output``."""
    results = load_results(results_dir)
    out = Path(output) if output is not None else Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = None
    try:
        chart = plot_mmvp_patterns(results, out / "mmvp_patterns.png")
    except ImportError:
        log.warning("matplotlib is not installed: no MMVP bar chart (pip install 'un2clip[plot]')")
    text = report_markdown(results, str(results_dir), chart.name if chart else None)
    md = out / "report.md"
    md.write_text(text, encoding="utf-8")
    csv_path = write_csv(results_table(results, "all"), out / "report.csv")
    return ReportFiles(md, csv_path, chart, text)
