"""Run folders on disk: the run marker, atomic checkpoints, and the newest checkpoint's weights.

Pure file I/O (no model is built here: :mod:`un2clip.load` turns a run folder into models).

Layout of a run folder::

    OUT/un2clip_run.json          what kind of run, which models it started from
    OUT/config.yaml               the resolved configuration
    OUT/metrics.jsonl             one JSON object per optimiser step
    OUT/checkpoints/step_000010/  trainable.safetensors, optimizer.pt, scheduler.pt, state.json
    OUT/checkpoints/latest        name of the newest complete checkpoint
    OUT/clip/, OUT/decoder/       the trained models, written when the run ends

A checkpoint is written into a temporary folder and renamed into place, and ``latest`` is
replaced atomically, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from un2clip.files import atomic_write_text

RUN_MARKER = "un2clip_run.json"
CKPT_DIR = "checkpoints"
LATEST = "latest"


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and keep the ``keep`` newest."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    rng = {"torch": torch.get_rng_state()}
    save_file(rng, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, name)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / CKPT_DIR
    marker = root / LATEST
    if marker.exists():
        path = root / marker.read_text().strip()
        if (path / "state.json").exists():
            return path
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").exists())
    return done[-1] if done else None


def checkpoint_step(path: Path) -> int:
    """The optimiser step a complete checkpoint was written at."""
    return int(json.loads((Path(path) / "state.json").read_text())["step"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Trainable weights, optimiser and scheduler states, loop state (weights_only loading)."""
    path = Path(path)
    return {
        "trainable": load_file(str(path / "trainable.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        "scheduler": torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True),
        "rng": load_file(str(path / "rng.safetensors")),
        "state": json.loads((path / "state.json").read_text()),
    }


# -- the run marker ----------------------------------------------------------------------------------

def is_run(path: str | Path) -> bool:
    """True when ``path`` is a run folder (it holds a run marker)."""
    return (Path(path) / RUN_MARKER).exists()


def read_run_marker(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_MARKER
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not an un2clip run directory")
    return json.loads(path.read_text())


def write_run_marker(run_dir: Path, info: dict[str, Any]) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / RUN_MARKER, json.dumps(info, indent=2))


def checkpoint_weights(run_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The trainable weights under ``prefix`` (e.g. "clip.") in a run's newest checkpoint, prefix removed."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has neither final models nor a checkpoint")
    weights = load_file(str(ckpt / "trainable.safetensors"))
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
