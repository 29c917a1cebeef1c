"""Cached stages of the world's experiments: a folder per stage, done when it holds a DONE marker.

A stage that records how it was made (``recipe.json``) is made again when asked another way.
Training stages are :class:`~un2clip.train.config.RunConfig` objects run by the one training loop.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from un2clip.train.config import RunConfig


def stage(out: Path, name: str, fresh: bool) -> tuple[Path, bool]:
    """(folder, done?) of a stage; a stage is done when its DONE marker exists."""
    folder = out / name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    return folder, (folder / "DONE").exists()


def mark_done(folder: Path, seconds: float) -> None:
    (folder / "DONE").write_text(json.dumps({"seconds": round(seconds, 1)}))


def recorded_stage(parent: Path, name: str, recipe: dict, fresh: bool, *,
                   keep_unrecorded: bool = False) -> tuple[Path, bool]:
    """(folder, done?) of a stage that records how it was made (``recipe.json``, see :func:`finish_stage`).

    A finished stage whose record differs from ``recipe`` is removed and reported not done; so is
    one without a record, unless ``keep_unrecorded`` (stages made before records were kept).
    """
    folder, done = stage(parent, name, fresh)
    record = folder / "recipe.json"
    if done and (json.loads(record.read_text()) != recipe if record.exists() else not keep_unrecorded):
        print(f"{folder}: made another way than now asked ({recipe}), recomputing")
        done = False
    if not done and folder.exists():
        shutil.rmtree(folder)
    return folder, done


def finish_stage(folder: Path, recipe: dict, started: float) -> None:
    """Record how a stage was made and mark it done."""
    (folder / "recipe.json").write_text(json.dumps(recipe))
    mark_done(folder, time.perf_counter() - started)


def train_run(*, progress: bool = True, **fields) -> RunConfig:
    """Train with the one training loop, as the `un2clip` training command with these settings would.

    ``fields``: :class:`RunConfig` fields (``objective``, ``data``, ``output``, ...); the others keep their
    defaults, as flags left out do. Returns the validated config.
    """
    from un2clip.train.recipes import run

    cfg = RunConfig(**fields).validate()
    run(cfg, progress=progress)
    return cfg

