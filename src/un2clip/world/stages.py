"""Cached stages of the world's experiments: a folder per stage, done when it holds a DONE marker.

A stage that records how it was made (``recipe.json``) is made again when asked another way.
Training stages are :class:`~un2clip.train.config.RunConfig` objects run by the one training loop.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from un2clip.train.config import RunConfig

#: the encoders `compare` measures with a trained head (grounding, LSeg, AudioCLIP; each head is a training run)
HEADED = ("original", "un2clip")


def stage(out: Path, name: str, fresh: bool) -> tuple[Path, bool]:
    """(folder, done?) of a stage; a stage is done when its DONE marker exists."""
    folder = out / name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    return folder, (folder / "DONE").exists()


def done_time(folder: str | Path) -> int:
    """When the stage in ``folder`` last finished (its DONE marker's mtime in ns), 0 if never."""
    done = Path(folder) / "DONE"
    return done.stat().st_mtime_ns if done.exists() else 0


def made_at(spec: str | Path) -> int:
    """When model ``spec`` was made, as a cache key of what is computed from it: the DONE marker of the stage
    holding it (in the folder or the one above); else, for a folder of the user's (e.g. ``compare --weights``),
    its newest file's mtime, so that weights retrained in place are noticed; 0 for a preset or a Hub id."""
    path = Path(spec)
    for folder in (path, path.parent):
        if (folder / "DONE").is_file():
            return done_time(folder)
    if path.is_dir():
        return max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0)
    return 0


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


def _make_stage(parent: Path, name: str, recipe: dict, make: Callable[[Path], object], fresh: bool) -> tuple[Path, bool]:
    """(folder, made now?): the stage reused when finished with the same ``recipe``, else made (again) in a new
    empty folder by ``make(folder)`` (see :func:`recorded_stage`)."""
    folder, done = recorded_stage(parent, name, recipe, fresh)
    if not done:
        t = time.perf_counter()
        folder.mkdir(parents=True)
        make(folder)
        finish_stage(folder, recipe, t)
    return folder, not done


def made_stage(parent: Path, name: str, recipe: dict, make: Callable[[Path], object], *,
               fresh: bool = False) -> Path:
    """The folder of a stage that records ``recipe``: reused when finished with the same recipe, else made (again)
    in a new empty folder by ``make(folder)`` (see :func:`recorded_stage`)."""
    return _make_stage(parent, name, recipe, make, fresh)[0]


def trained_stage(parent: Path, name: str, fields: dict, recipe: dict, *, fresh: bool = False,
                  progress: bool = True) -> tuple[Path, bool]:
    """(folder, trained now?) of a stage holding one training run (``folder/run``, RunConfig ``fields``) that
    records ``recipe``: reused when finished with the same recipe, else trained again (see :func:`recorded_stage`)."""
    return _make_stage(parent, name, recipe,
                       lambda folder: train_run(**fields, output=str(folder / "run"), progress=progress), fresh)


def cached_metrics(path: Path, compute: Callable[[], dict], *, recipe: dict | None = None,
                   fresh: bool = False) -> dict:
    """The metrics cached in ``path``, or ``compute()`` written there when the file is absent, ``fresh`` is asked or
    it was made with another ``recipe``.

    With a ``recipe`` the file holds ``{"recipe": ..., "metrics": ...}`` (the recipe compared as JSON stores it:
    tuples as lists); without one, the metrics alone (a caller then removes the file when what it measured
    changes).
    """
    wanted = None if recipe is None else json.loads(json.dumps(recipe))
    if path.is_file() and not fresh:
        record = json.loads(path.read_text(encoding="utf-8"))
        if wanted is None:
            return record
        if record.get("recipe") == wanted:
            return record["metrics"]
    metrics = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    body = metrics if wanted is None else {"recipe": wanted, "metrics": metrics}
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return metrics
