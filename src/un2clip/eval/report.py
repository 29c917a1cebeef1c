"""Result files and the report that merges them.

Every evaluation writes one JSON per (model, task, dataset): the metrics, the options
used, and where the data and the model came from. :func:`write_report` merges a folder of
them into a Markdown table and a CSV (models as rows, task/dataset/metric as columns)
and draws the MMVP-VLM per-pattern scores as a bar chart (with matplotlib, the ``plot``
extra).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from un2clip.files import atomic_write_text

log = logging.getLogger(__name__)

RESULT_FORMAT = "un2clip-eval-result/1"
UNITS = ("MMVP-VLM scores are percentages (official protocol); zero-shot accuracies and retrieval recalls are "
         "fractions in [0, 1] (CLIP_benchmark); diffusion losses are lower-is-better.")


def slug(text: str) -> str:
    """A file-name-safe form of a model or dataset name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return cleaned or "unnamed"


def result_path(out_dir: str | Path, model: str, task: str, dataset: str) -> Path:
    """Where the result of (model, task, dataset) lives: ``<model>__<task>__<dataset>.json``."""
    return Path(out_dir) / f"{slug(model)}__{slug(task)}__{slug(dataset)}.json"


def write_result(out_dir: str | Path, *, model: str, task: str, dataset: str, metrics: dict[str, float],
                 options: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write one result file (atomically) and return its path."""
    from un2clip import __version__

    path = result_path(out_dir, model, task, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": RESULT_FORMAT, "model": model, "task": task, "dataset": dataset,
              "metrics": {k: _number(v) for k, v in metrics.items()}, "options": _jsonable(options),
              "un2clip_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
              **_jsonable(extra or {})}
    return atomic_write_text(path, json.dumps(record, indent=2, allow_nan=False) + "\n")


def _number(v: Any) -> float | int | None:
    v = float(v) if not isinstance(v, int) else v
    return None if isinstance(v, float) and v != v else v  # NaN is not JSON


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def load_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every result file under ``results_dir`` (recursively), oldest first; other JSON files are ignored."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of result files")
    results = []
    for path in sorted(root.rglob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("skipping %s: %s", path, err)
            continue
        if isinstance(record, dict) and record.get("format") == RESULT_FORMAT:
            results.append({**record, "path": str(path)})
    if not results:
        raise ValueError(f"no un2clip result files (*.json written by `un2clip eval`) under {root}")
    results.sort(key=lambda r: (r.get("created", ""), r["path"]))
    return results


# -- tables ----------------------------------------------------------------------------------------------


@dataclass
class Table:
    """Models as rows, ``task/dataset/metric`` as columns."""

    models: list[str]
    columns: list[str]
    values: dict[tuple[str, str], float | int]

    def cell(self, model: str, column: str) -> float | int | None:
        return self.values.get((model, column))


def results_table(results: Sequence[dict[str, Any]], metrics: str = "headline") -> Table:
    """Merge results; ``metrics="headline"`` keeps each task's headline metrics, ``"all"`` every metric.

    A later result for the same (model, task, dataset) replaces an earlier one.
    """
    from un2clip.eval import TASKS

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


def format_value(v: float | None) -> str:
    return "" if v is None else (str(int(v)) if float(v).is_integer() and abs(v) >= 1 else f"{v:.4g}")


def markdown_table(table: Table, header: Sequence[str] | None = None) -> str:
    heads = list(header) if header is not None else table.columns
    lines = ["| model | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for model in table.models:
        cells = [format_value(table.cell(model, c)) for c in table.columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(table: Table, path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["model", *table.columns])
        for model in table.models:
            w.writerow([model, *("" if table.cell(model, c) is None else repr(table.cell(model, c))
                                 for c in table.columns)])
    return path


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
