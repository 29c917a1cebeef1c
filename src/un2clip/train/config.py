"""Typed run configuration: YAML recipes and command-line flags resolve into one dataclass.

Only entry points (``cli.py``, recipes) see a ``RunConfig``; library functions take named
arguments. Every key of a YAML recipe must be a field here, so a typo fails before training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from un2clip.files import atomic_write_text


@dataclass
class RunConfig:
    """Everything a training run needs; defaults are the tiny CPU setting."""

    objective: str = "un2clip"  # un2clip | contrastive | autoencoder | decoder | t2i-decoder | diva | llava
    # models
    preset: str = "tiny"
    clip: str | None = None  # overrides the preset's encoder (preset, folder, Hub id, run dir)
    decoder: str | None = None  # overrides the preset's decoder
    vae: str | None = None  # replaces the decoder's VAE (a train-autoencoder run, a folder, a Hub id)
    random_weights: bool = False
    # data
    data: str | None = None
    image_column: str | None = None
    caption_column: str | None = None
    image_folder: str | None = None  # a LLaVA JSON's image paths are relative to it (default: the JSON's folder)
    num_workers: int = 0
    # stop when more than this fraction of the last ``skip_window`` images drawn could not be read
    max_skip_rate: float = 0.5
    skip_window: int = 100
    # optimisation
    optimizer: str = "adamw"
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    max_grad_norm: float | None = 1.0
    # loop
    max_steps: int = 200
    batch_size: int = 32
    grad_accum: int = 1
    precision: str = "fp32"
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the encoder and the UNet (eager with a warning if it fails)
    channels_last: bool = False  # convolution weights in NHWC memory format
    save_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    output: str = "runs/finetune"
    # options of the objective (keyword arguments of its constructor)
    objective_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> RunConfig:
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_steps, batch_size and grad_accum must be >= 1")
        if self.save_every < 1:
            raise ValueError("save_every must be >= 1")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.max_skip_rate <= 1:
            raise ValueError(f"max_skip_rate must be in (0, 1], got {self.max_skip_rate}")
        if self.skip_window < 1:
            raise ValueError(f"skip_window must be >= 1, got {self.skip_window}")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    def save(self, path: str | Path, *, notes: Sequence[str] = ()) -> None:
        """Write the config as YAML, after ``notes`` as comment lines (a resumed run's history of changes)."""
        head = "".join(f"# {note}\n" for note in notes)
        atomic_write_text(Path(path), head + self.to_yaml())


#: settings a resumed run may change: none of them alters the model, the objective or the data order
RESUMABLE = ("lr", "max_steps", "save_every", "precision", "num_workers", "max_skip_rate", "skip_window")


def changed_fields(old: RunConfig, new: RunConfig) -> dict[str, list[Any]]:
    """``{field: [old value, new value]}`` for every field that differs, the run folder (``output``) aside."""
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)
    return {k: [a[k], b[k]] for k in a if k != "output" and a[k] != b[k]}


def config_notes(path: str | Path) -> list[str]:
    """The comment lines at the top of a saved config (without their ``# ``)."""
    notes = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        notes.append(line[1:].strip())
    return notes


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    cfg = RunConfig(**data)
    for f in fields(RunConfig):  # YAML reads 3e-7 as a string: coerce numbers by the declared type
        value = getattr(cfg, f.name)
        if isinstance(value, str) and f.type in ("float", "float | None"):
            setattr(cfg, f.name, float(value))
    return cfg.validate()


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    return config_from_dict(data, source=str(path))


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Command-line values that were given (not None) replace the recipe's."""
    data = dataclasses.asdict(cfg)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(data, source="command line")
