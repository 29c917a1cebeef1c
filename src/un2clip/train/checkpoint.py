"""Atomic checkpoints of a training run, and loading trained models back from a run folder.

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

CKPT_DIR = "checkpoints"
LATEST = "latest"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    _atomic_write_text(root / LATEST, name)
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


# -- models back from a run ------------------------------------------------------------------------

def read_run_marker(run_dir: Path) -> dict[str, Any]:
    from un2clip.models.presets import RUN_MARKER

    path = Path(run_dir) / RUN_MARKER
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not an un2clip run directory")
    return json.loads(path.read_text())


def write_run_marker(run_dir: Path, info: dict[str, Any]) -> None:
    from un2clip.models.presets import RUN_MARKER

    _atomic_write_text(Path(run_dir) / RUN_MARKER, json.dumps(info, indent=2))


def _trained_weights(run_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has neither final models nor a checkpoint")
    weights = load_file(str(ckpt / "trainable.safetensors"))
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def load_run_clip(run_dir: Path):
    """The CLIP model a run trained: its final ``clip/`` folder, else base model + latest checkpoint."""
    from un2clip.models.clip import ClipModel
    from un2clip.models.presets import load_clip

    run_dir = Path(run_dir)
    if (run_dir / "clip" / "config.json").exists():
        return ClipModel.from_pretrained(run_dir / "clip")
    info = read_run_marker(run_dir)
    if not info.get("clip"):
        raise ValueError(f"{run_dir} is a {info.get('kind')} run with no CLIP model")
    clip = load_clip(info["clip"], random_weights=bool(info.get("random_weights")))
    weights = _trained_weights(run_dir, "clip.")
    if info.get("lora") and weights:  # a LoRA run's checkpoint holds adapters: rebuild, load, merge
        from un2clip.models.lora import add_lora, merge_lora

        lora = info["lora"]
        add_lora(clip.vision_model, rank=int(lora["rank"]), alpha=lora.get("alpha"),
                 **({"targets": lora["targets"]} if lora.get("targets") else {}))
        unexpected = clip.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{run_dir}: checkpoint weights do not fit the LoRA adapters: {unexpected[:3]}")
        merge_lora(clip.vision_model)
        return clip.requires_grad_(False)
    if weights:
        clip.load_state_dict(weights, strict=False)
    return clip


def load_run_decoder(run_dir: Path):
    """The decoder a run trained (train-decoder or un²CLIP with ``train_decoder``)."""
    from un2clip.models.presets import load_decoder
    from un2clip.models.unclip import UnclipDecoder

    run_dir = Path(run_dir)
    if (run_dir / "decoder" / "unet").is_dir():
        return UnclipDecoder.from_pretrained(run_dir / "decoder")
    info = read_run_marker(run_dir)
    if not info.get("decoder"):
        raise ValueError(f"{run_dir} is a {info.get('kind')} run with no decoder")
    decoder = load_decoder(info["decoder"], random_weights=bool(info.get("random_weights")))
    weights = _trained_weights(run_dir, "decoder.")
    if weights:
        decoder.load_state_dict(weights, strict=False)
    return decoder
