"""Run folders on disk: the run marker, its lock, atomic checkpoints, and the newest checkpoint's weights.

Pure file I/O (no model is built here: :mod:`un2clip.load` turns a run folder into models).

Layout of a run folder::

    OUT/un2clip_run.json          what kind of run, which models it started from
    OUT/un2clip_run.lock          while a process trains into OUT: its pid, host and start time
    OUT/config.yaml               the resolved configuration
    OUT/metrics.jsonl             one JSON object per optimiser step
    OUT/checkpoints/step_000010/  trainable.safetensors, optimizer.pt, scheduler.pt, rng.safetensors,
                                  state.json, and index.json (each file's size and SHA-256)
    OUT/checkpoints/latest        name of the newest complete checkpoint
    OUT/clip/, OUT/decoder/       the trained models, written when the run ends

A checkpoint is written into a temporary folder (``.step_000010.tmp``), flushed to disk and
renamed into place, and ``latest`` is replaced atomically, so a run killed at any moment leaves
the previous checkpoint intact. Its ``index.json`` is written last: a checkpoint is loaded only
when every file it lists has the recorded size and checksum, so a truncated or bit-flipped file
is refused by name rather than loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from un2clip.errors import CheckpointDamaged, RunInUse
from un2clip.files import atomic_write_text

try:  # advisory file locks (POSIX); elsewhere the lock file's pid alone decides
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

RUN_MARKER = "un2clip_run.json"
RUN_LOCK = "un2clip_run.lock"
CKPT_DIR = "checkpoints"
LATEST = "latest"
INDEX = "index.json"
INDEX_FORMAT = "un2clip-checkpoint/1"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _flush_to_disk(path: Path) -> None:
    """fsync one file or folder, so that a rename that follows cannot outlive the data (power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to fsync a folder
        pass
    finally:
        os.close(fd)


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
    """Write checkpoint ``step`` atomically and keep the ``keep`` newest.

    A write that fails (a full disk) removes its temporary folder and raises; the previous
    checkpoints and ``latest`` are untouched.
    """
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler_state, tmp / "scheduler.pt")
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        files = {}
        for path in sorted(tmp.iterdir()):
            _flush_to_disk(path)
            files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        (tmp / INDEX).write_text(json.dumps({"format": INDEX_FORMAT, "step": step, "files": files}, indent=2))
        _flush_to_disk(tmp / INDEX)
        _flush_to_disk(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _flush_to_disk(root)
    atomic_write_text(root / LATEST, name)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with checkpoint folder ``path`` (a sentence naming the file), or None when it is whole.

    Every file its index lists must have the recorded size and SHA-256. A folder without an index
    but with ``state.json`` was written before checkpoints had one and is taken as it is.
    """
    path = Path(path)
    index_path = path / INDEX
    if not index_path.is_file():
        return None if (path / "state.json").is_file() else f"{path} is incomplete (it has no {INDEX})"
    try:
        files = json.loads(index_path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{index_path} is damaged"
    for name, want in files.items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        size = file.stat().st_size
        if size != want["bytes"]:
            return f"{file} has {size} bytes where its index records {want['bytes']} (truncated or overwritten)"
        if _sha256(file) != want["sha256"]:
            return f"{file} does not match the checksum in its index (damaged on disk)"
    return None


def _step_folders(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None (its files are checked when it is loaded)."""
    root = Path(run_dir) / CKPT_DIR
    marker = root / LATEST
    if marker.exists():
        path = root / marker.read_text().strip()
        if (path / INDEX).exists() or (path / "state.json").exists():
            return path
    done = [p for p in _step_folders(run_dir) if (p / INDEX).exists() or (p / "state.json").exists()]
    return done[-1] if done else None


def checkpoint_step(path: Path) -> int:
    """The optimiser step a complete checkpoint was written at."""
    return int(json.loads((Path(path) / "state.json").read_text())["step"])


def load_checkpoint(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """Trainable weights, optimiser and scheduler states, loop state (weights_only loading).

    Raises :class:`CheckpointDamaged` naming the file when a file does not match the index
    (``verify=False``: the caller has just checked it).
    """
    path = Path(path)
    problem = checkpoint_problem(path) if verify else None
    if problem:
        raise CheckpointDamaged(f"checkpoint refused: {problem}")
    return {
        "trainable": load_file(str(path / "trainable.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        "scheduler": torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True),
        "rng": load_file(str(path / "rng.safetensors")),
        "state": json.loads((path / "state.json").read_text()),
    }


def newest_intact_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files match its index, to resume from; None when the run has none.

    A partial checkpoint (the temporary folder of a write that did not finish: the process was
    killed or the disk filled) is removed, and a damaged one is passed over, each with a warning
    that names it. Raises :class:`CheckpointDamaged` when checkpoints exist but none is whole.
    """
    root = Path(run_dir) / CKPT_DIR
    for partial in sorted(root.glob(".step_*.tmp")):
        log.warning("ignoring the partial checkpoint %s (its write did not finish) and removing it", partial)
        shutil.rmtree(partial, ignore_errors=True)
    refused = []
    for folder in reversed(_step_folders(run_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            if refused:
                log.warning("resuming from %s instead", folder.name)
            return folder
        log.warning("checkpoint %s refused: %s", folder.name, problem)
        refused.append(problem)
    if refused:
        raise CheckpointDamaged(f"no intact checkpoint to resume in {root}: " + "; ".join(refused))
    return None


# -- the lock of a run folder ------------------------------------------------------------------------

class RunLock:
    """``OUT/un2clip_run.lock``: one process at a time trains into a run folder.

    The file records the owner's pid, host and start time and is held with an advisory lock
    (``flock``), which the kernel drops when the owner dies, however it dies (SIGKILL included): a
    lock file left by a dead process is taken over with a warning, and a reused pid cannot keep a
    folder locked. Where ``flock`` does not exist (Windows) the file is written but not enforced.
    Use as a context manager or with ``acquire()`` / ``release()``.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RUN_LOCK
        self._fd: int | None = None
        self._made_folder = False

    def _refuse(self, owner: dict[str, Any]) -> RunInUse:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["time"])) if "time" in owner else "?"
        return RunInUse(f"{self.run_dir} is in use by process {owner.get('pid', '?')} on {owner.get('host', '?')} "
                        f"(since {since}): two runs cannot write one folder; wait for it to end or stop it, "
                        f"or choose another --output (if that process is gone, delete {self.path})")

    def _read_owner(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunInUse` at once, naming the owner."""
        self._made_folder = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise self._refuse(self._read_owner()) from None
                    try:
                        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:  # its owner released and removed it meanwhile: open the new one
                        os.close(fd)
                        continue
                previous = self._read_owner()
                if fcntl is not None and previous:  # its owner died without removing it
                    log.warning("taking over the stale lock of %s: process %s on %s that left it no longer runs",
                                self.run_dir, previous.get("pid", "?"), previous.get("host", "?"))
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(me).encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing happens when it is not held); a folder the lock
        created is removed too when nothing else was written into it (a run refused before it started)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        if self._made_folder and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


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
    problem = checkpoint_problem(ckpt)
    if problem:
        raise CheckpointDamaged(f"checkpoint refused: {problem}")
    weights = load_file(str(ckpt / "trainable.safetensors"))
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
