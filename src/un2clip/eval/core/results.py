"""Result files: every evaluation writes one JSON per (model, task, dataset) with the metrics, the options
used, and where the data and the model came from; tables of results as Markdown and CSV.

The report that merges a folder of them, ordered by the registry of tasks, is :mod:`un2clip.eval.report`.
"""

from __future__ import annotations

import csv
import json
import logging
import re
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
