"""Experiment trackers of a training run (``--report-to``): TensorBoard and Weights & Biases through accelerate.

The choice resolves to accelerate tracker names (:func:`tracker_names`); :func:`check_tracker_packages` refuses
a tracker whose package is missing, naming the extra to install, before any model loads or step runs.
:func:`tracker_init_kwargs` makes a resumed run continue its tracker run: TensorBoard writes into the same
folder and purges the steps logged after the checkpoint it resumes from; W&B reuses the run id kept in the
run folder (:data:`WANDB_ID_FILE`). :func:`scalars` picks what a metrics.jsonl record logs.
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
from pathlib import Path
from typing import Any

#: the ``--report-to`` values
REPORT_TO = ("none", "tensorboard", "wandb", "all")
#: accelerate tracker name -> (module it needs, un2clip extra that installs it)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
#: the project (TensorBoard sub-folder, W&B project) of every run
PROJECT = "un2clip"
#: file in the run folder holding the W&B run id, so that a resume continues the same W&B run
WANDB_ID_FILE = "wandb_run_id.txt"
#: metrics.jsonl keys that are bookkeeping, not curves
NOT_LOGGED = ("step", "resumed_at", "changed")


def tracker_names(report_to: str) -> list[str]:
    """accelerate tracker names of a ``--report-to`` value (``none``: no tracker)."""
    if report_to not in REPORT_TO:
        raise ValueError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    return {"none": [], "all": ["tensorboard", "wandb"]}.get(report_to, [report_to])


def check_tracker_packages(names: list[str]) -> None:
    """Raise ModuleNotFoundError (one line, naming the extra) when a tracker's package is not installed."""
    for name in names:
        module, extra = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"--report-to {name} needs the {module} package, which is not installed: "
                                      f"pip install 'un2clip[{extra}]'", name=module)


def wandb_run_id(output: Path) -> str:
    """The run folder's W&B run id: read from :data:`WANDB_ID_FILE`, else made and written there."""
    path = Path(output) / WANDB_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    path.write_text(run_id + "\n")
    return run_id


def wandb_mode_note(env: dict[str, str] | None = None) -> str:
    """The log line saying whether W&B logs offline (``WANDB_MODE=offline``) or to the server."""
    mode = (os.environ if env is None else env).get("WANDB_MODE", "online")
    if mode in ("offline", "dryrun"):
        return "W&B: offline (WANDB_MODE=offline): the run is written under RUN/wandb; `wandb sync` uploads it later"
    return f"W&B: {mode} (set WANDB_MODE=offline to log without an account or network)"


def tracker_init_kwargs(names: list[str], output: Path, *, resumed_step: int) -> dict[str, dict[str, Any]]:
    """accelerate's ``init_kwargs`` for ``names``; ``resumed_step``: the checkpoint step a resume starts from
    (0 for a new run). TensorBoard drops events of later steps (a run killed after its checkpoint logged
    them); W&B continues the run id kept in ``output``."""
    kwargs: dict[str, dict[str, Any]] = {}
    if "tensorboard" in names and resumed_step > 0:
        kwargs["tensorboard"] = {"purge_step": resumed_step + 1}
    if "wandb" in names:
        kwargs["wandb"] = {"id": wandb_run_id(output), "resume": "allow", "dir": str(output)}
    return kwargs


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics.jsonl record that trackers log: every finite number but the bookkeeping."""
    return {k: float(v) for k, v in record.items()
            if k not in NOT_LOGGED and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
