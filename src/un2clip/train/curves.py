"""Loss and learning-rate curves of a training run, drawn from its metrics.jsonl.

:func:`curve_data` is the pure part (records -> x/y arrays); :func:`write_curves` draws them into
``curves.png`` in the run folder with matplotlib (the ``plot`` extra), or says in one line why it did not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: the curves drawn, one panel each: metrics.jsonl key -> panel title
CURVES = {"loss": "loss", "lr": "learning rate"}
#: the picture's file name in the run folder
CURVES_PNG = "curves.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order (blank lines skipped)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is this a training run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve_data(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` for each key of :data:`CURVES`: one point per record that has the key.

    A step logged twice (a resumed run's metrics written again) keeps its last value, so x is increasing.
    """
    out: dict[str, tuple[list[int], list[float]]] = {}
    for key in CURVES:
        by_step = {int(r["step"]): float(r[key]) for r in records if key in r and r[key] is not None}
        steps = sorted(by_step)
        out[key] = (steps, [by_step[s] for s in steps])
    return out


def write_curves(run: str | Path, output: str | Path | None = None) -> tuple[Path | None, str]:
    """Draw the loss and learning-rate curves of the run folder ``run`` into ``curves.png`` in ``output``
    (default ``run``).

    Returns (the PNG, None when not drawn) and a one-line note saying what was written or why not
    (matplotlib not installed, no step logged).
    """
    run = Path(run)
    data = curve_data(read_metrics(run / "metrics.jsonl"))
    if not data["loss"][0]:
        return None, f"no curves: {run / 'metrics.jsonl'} holds no logged step"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ModuleNotFoundError:
        return None, "no loss curve: matplotlib is not installed (pip install 'un2clip[plot]')"
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], CURVES.items(), strict=True):
        steps, values = data[key]
        ax.plot(steps, values, marker="." if len(steps) < 50 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    losses = data["loss"][1]
    if min(losses) > 0 and max(losses) > 10 * min(losses):  # a loss falling over decades: log scale
        axes[0][0].set_yscale("log")
    fig.suptitle(run.name)
    fig.tight_layout()
    out = Path(output) if output is not None else run
    out.mkdir(parents=True, exist_ok=True)
    path = out / CURVES_PNG
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, f"loss and learning-rate curves: {path}"
