"""Typed run configuration: YAML recipes and command-line flags resolve into one dataclass.

``RunConfig`` is the one source of a training setting: each field's metadata gives its command-line flag
(help text, help group, choices; the help shows the field's default) and whether a resumed run may change
it (:data:`RESUMABLE`). ``un2clip``'s training commands generate their shared flags from it, so a new field
gets its flag, its default in the help and its resume rule where it is declared. Every key of a YAML recipe
must be a field here, so a typo fails before training.

House rule (DESIGN.md): only ``cli/``, the recipes (:mod:`un2clip.train.recipes`) and the training loop
(:mod:`un2clip.train.loop`: :class:`~un2clip.train.loop.Trainer`, whose entry point ``train()`` takes the
config) see a ``RunConfig``; every other library function takes named arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from un2clip.files import atomic_write_text
from un2clip.train.trackers import REPORT_TO


def flag(default: Any = MISSING, *, group: str, help: str, resumable: bool = False,
         choices: Sequence[str] | None = None, metavar: str | None = None, default_text: str | None = None,
         default_factory: Any = MISSING) -> Any:
    """A field with a shared command-line flag ``--name-with-dashes`` in help group ``group``.

    ``help`` may hold ``{default}`` where the default goes; else `` (default ...)`` is appended. The default
    shown is ``default_text`` when given (needed for a default of None), else the field's default.
    ``resumable``: ``--resume`` accepts the flag (the setting leaves the model, objective and data order alone).
    ``choices``: the values a recipe or the flag may take, checked by :meth:`RunConfig.validate`.
    """
    meta = {"flag": "shared", "group": group, "help": help, "resumable": resumable,
            "choices": tuple(choices) if choices else None, "metavar": metavar, "default_text": default_text}
    return field(default=default, default_factory=default_factory, metadata=meta)


def not_a_flag(default: Any = MISSING, *, why: str, by_command: bool = False, default_factory: Any = MISSING) -> Any:
    """A field without a shared flag, and why. ``by_command``: the commands that need it add a flag of their own
    (read like a shared one); otherwise only a recipe sets it."""
    meta = {"flag": "command" if by_command else None, "why": why, "resumable": False}
    return field(default=default, default_factory=default_factory, metadata=meta)


@dataclass
class RunConfig:
    """Everything a training run needs; defaults are the tiny CPU setting. Add a field with :func:`flag` (or
    :func:`not_a_flag`, saying why): its flag, help default and resume rule follow."""

    objective: str = not_a_flag("un2clip", why="each training command sets its own objective (finetune: "
                                               "un2clip, pretrain: contrastive, ...; names in train.recipes)")
    # models
    preset: str = flag("tiny", group="models", help="named encoder + decoder pair (see `un2clip presets`)")
    clip: str | None = flag(None, group="models", default_text="the preset's",
                            help="encoder: preset, HF folder, Hub id or run directory")
    decoder: str | None = flag(None, group="models", default_text="the preset's",
                               help="unCLIP decoder: preset, folder, Hub id or train-decoder run")
    vae: str | None = not_a_flag(None, by_command=True,
                                 why="train-decoder and train-autoencoder add --vae, each with its own meaning")
    random_weights: bool = flag(False, group="models",
                                help="build the preset's real architecture with random weights (no download)")
    # data
    data: str | None = flag(None, group="data", default_text="none: a recipe or this flag must name it",
                            help="image folder, CSV/TSV file with an image column, webdataset shards, or "
                                 "(finetune) a folder written by `un2clip cache-latents`")
    image_column: str | None = flag(None, group="data", default_text="a column named image, filepath, path, ...",
                                    help="CSV/TSV column holding image paths")
    caption_column: str | None = flag(None, group="data", default_text="a column named caption, text or title",
                                      help="CSV/TSV column holding captions")
    image_folder: str | None = not_a_flag(None, by_command=True,
                                          why="llava train and train-grounding add --image-folder: the folder a "
                                              "LLaVA JSON's image paths (the JSON's folder by default) or a grounding "
                                              "set's image files are relative to")
    seg_layout: str = not_a_flag("generic", by_command=True,
                                 why="train-dense adds --seg-layout: the layout of its segmentation data (generic or "
                                     "a named mmsegmentation layout)")
    seg_split: str = not_a_flag("train", by_command=True,
                                why="train-dense adds --seg-split: the split of a named segmentation layout")
    num_workers: int = flag(0, group="data", resumable=True, help="data-loader worker processes")
    max_skip_rate: float = flag(0.5, group="data", resumable=True, metavar="F",
                                help="stop when more than this fraction of the last --skip-window images drawn "
                                     "could not be read (default {default}; 1: never, unless no image at all is "
                                     "readable)")
    skip_window: int = flag(100, group="data", resumable=True, metavar="N",
                            help="images drawn over which --max-skip-rate is judged")
    # optimisation
    optimizer: str = flag("adamw", group="optimisation", choices=("adamw", "sgd"), help="optimiser")
    lr: float = flag(1e-5, group="optimisation", resumable=True,
                     help="learning rate (default {default}; paper: 3e-7 for ViT-L/14)")
    weight_decay: float = flag(0.0, group="optimisation", help="weight decay")
    warmup_steps: int = flag(0, group="optimisation", help="linear warm-up steps")
    lr_schedule: str = flag("constant", group="optimisation", choices=("constant", "cosine", "poly"),
                            help="learning-rate schedule after warm-up (poly: (1 - progress) ** 0.9, LSeg's)")
    max_grad_norm: float | None = flag(1.0, group="optimisation",
                                       help="clip gradients to this norm (default {default}; 0: no clipping)")
    # loop
    max_steps: int = flag(200, group="loop", resumable=True, help="optimiser steps to run")
    batch_size: int = flag(32, group="loop", help="global batch: all processes and accumulation steps")
    grad_accum: int = flag(1, group="loop", help="gradient accumulation micro-steps per optimiser step")
    precision: str = flag("fp32", group="loop", resumable=True, choices=("fp32", "bf16", "fp16"),
                          help="autocast precision")
    grad_checkpointing: bool = flag(False, group="loop",
                                    help="recompute encoder activations in the backward pass (less memory)")
    compile: bool = flag(False, group="loop", help="torch.compile the encoder and the UNet (first step slower; "
                                                   "eager with a warning if compilation fails)")
    channels_last: bool = flag(False, group="loop",
                               help="convolution weights (UNet, VAE) in channels-last memory format")
    save_every: int = flag(500, group="loop", resumable=True, metavar="N",
                           help="checkpoint every N steps (default {default}, and at the end)")
    keep_checkpoints: int = flag(2, group="loop", metavar="N",
                                 help="keep the N newest checkpoints of the run, delete older ones")
    seed: int = flag(0, group="loop", help="seed of data order, augmentations and diffusion draws")
    report_to: str = flag("none", group="loop", resumable=True, choices=REPORT_TO,
                          help="also log each step's metrics to TensorBoard (RUN/un2clip), Weights & Biases (offline "
                               "with WANDB_MODE=offline) or both (extras: un2clip[tensorboard], un2clip[wandb])")
    output: str = flag("runs/finetune", group="loop",
                       help="run directory (metrics.jsonl, config.yaml, checkpoints/, trained models)")
    # options of the objective (keyword arguments of its constructor)
    objective_options: dict[str, Any] = not_a_flag(
        default_factory=dict, why="each command adds its objective's own flags (e.g. finetune --anchor-weight)")

    def validate(self) -> RunConfig:
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_steps, batch_size and grad_accum must be >= 1")
        if self.save_every < 1:
            raise ValueError("save_every must be >= 1")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
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


#: settings a resumed run may change (fields declared ``resumable``): none alters the model, objective or data order
RESUMABLE: tuple[str, ...] = tuple(f.name for f in fields(RunConfig) if f.metadata["resumable"])


def flag_fields() -> list[Field]:
    """The fields with a shared command-line flag, in declaration order."""
    return [f for f in fields(RunConfig) if f.metadata.get("flag") == "shared"]


def command_line_fields() -> tuple[str, ...]:
    """Names of the fields a training command line may set: the shared flags and the commands' own (``--vae``)."""
    return tuple(f.name for f in fields(RunConfig) if f.metadata.get("flag") in ("shared", "command"))


def flag_type(f: Field) -> type:
    """The Python type of a field's value, None taken away (``float | None`` -> float)."""
    hint = get_type_hints(RunConfig)[f.name]
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    return args[0] if len(args) == 1 and hint is not bool else hint


def shown_default(f: Field) -> str:
    """The default a field's help shows: its ``default_text``, else its default value (bool: off or on)."""
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    value = f.default
    if value is MISSING or value is None:
        raise ValueError(f"RunConfig.{f.name}: a flag whose default is None or computed needs default_text")
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}".replace("e-0", "e-").replace("e+0", "e+")
    return str(value)


def flag_help(f: Field) -> str:
    """A field's help text with its default in it."""
    text, shown = f.metadata["help"], shown_default(f)
    return text.format(default=shown) if "{default}" in text else f"{text} (default {shown})"


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
