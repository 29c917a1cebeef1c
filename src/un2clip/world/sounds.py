"""The shapes world's sounds (AudioCLIP's data, ESC-50 layout) and its sketch set (CLIPasso's images).

**Sounds.** A scene sounds as its objects, left to right, one tone each (two copies: two tones), in equal
slots of a one-second clip at 16 kHz (each tone 80 % of its slot, 15 ms linear attack and release):

- **colour -> pitch**: the fundamental of :data:`COLOR_PITCH`, six notes a major third apart from A3 (220 Hz)
  to F5 (698.46 Hz);
- **shape -> timbre**: the partials of :data:`SHAPE_PARTIALS` (frequency ratio to the fundamental, amplitude):
  circle a pure sine, square odd harmonics (1/k), triangle fundamental + octave, arrow a sawtooth (8 harmonics,
  1/k), star a stack of fifth and twelfth, cross a bell's inharmonic partials (1, 2.76, 5.40);
- **size -> loudness**: peak 0.5 for a large object, 0.25 for a small one;
- every other attribute (orientation, fill, dot, glyph, view) is silent.

White noise of amplitude 0.01, seeded by the scene's ``noise_seed``, lies under the tones, so the clip of a
scene is a pure function of the scene. Two sets, each in ESC-50's layout (``audio/*.wav``,
``meta/esc50.csv``; five folds):

- ``sounds/train/``: the sounds of the first :data:`N_TRAIN_SOUNDS` training scenes, with their caption
  (``caption`` column) and image (``image``, relative to the set): audio-image-text triples for `un2clip
  train-audio`; their one category is ``scene``;
- ``sounds/test/``: single-object scenes of their own random stream, :data:`SOUNDS_PER_CLASS` per colour +
  shape class (36 classes, "red circle"), fold ``j % 5 + 1``, and the world's zero-shot templates: `un2clip
  eval audio-zeroshot`. Chance is 1/36.

**Sketch set.** ``sketch/<shape>/NNNN.png``: :data:`SKETCH_PER_CLASS` single filled objects per shape (large,
no glyph or dot), ``classnames.txt`` and ``templates.txt``: the set `un2clip eval sketch` sketches and
classifies. Chance is 1/6.

Both are written on demand (:func:`ensure_sounds`, :func:`ensure_sketch`) into a world that lacks them; a
world's other outputs and its ``world.json`` are left as they were.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from un2clip.data.audio import write_wav
from un2clip.world.render import render
from un2clip.world.scenes import COLORS, SHAPES, Scene, sample_scene
from un2clip.world.words import ZEROSHOT_TEMPLATES

SOUND_RATE = 16000
SOUND_SECONDS = 1.0
COLOR_PITCH: dict[str, float] = {"red": 220.0, "yellow": 277.18, "green": 349.23, "cyan": 440.0, "blue": 554.37,
                                 "purple": 698.46}
SHAPE_PARTIALS: dict[str, tuple[tuple[float, float], ...]] = {
    "circle": ((1.0, 1.0),),
    "square": ((1.0, 1.0), (3.0, 1 / 3), (5.0, 1 / 5), (7.0, 1 / 7)),
    "triangle": ((1.0, 1.0), (2.0, 1.0)),
    "arrow": tuple((float(k), 1.0 / k) for k in range(1, 9)),
    "star": ((1.0, 1.0), (1.5, 0.7), (3.0, 0.5)),
    "cross": ((1.0, 1.0), (2.76, 0.6), (5.40, 0.4)),
}
SIZE_LOUDNESS: dict[str, float] = {"small": 0.25, "large": 0.5}
NOISE_LEVEL = 0.01
RAMP_SECONDS = 0.015
TONE_FILL = 0.8
N_TRAIN_SOUNDS = 2000
SOUNDS_PER_CLASS = 5
SKETCH_PER_CLASS = 4
N_FOLDS = 5
# the sound and sketch sets' random streams (split ids apart from the world's own, which stay as they are)
SOUND_STREAM, SKETCH_STREAM = 101, 102


def tone(color: str, shape: str, size: str, n_samples: int, *, sample_rate: int = SOUND_RATE) -> np.ndarray:
    """(n_samples,) one object's tone: pitch from its colour, partials from its shape, peak from its size."""
    t = np.arange(n_samples) / sample_rate
    f0 = COLOR_PITCH[color]
    wave = sum(a * np.sin(2 * np.pi * r * f0 * t) for r, a in SHAPE_PARTIALS[shape])
    wave = wave / np.max(np.abs(wave)) * SIZE_LOUDNESS[size]
    ramp = min(int(RAMP_SECONDS * sample_rate), n_samples // 2)
    if ramp:
        env = np.ones(n_samples)
        env[:ramp] = np.linspace(0.0, 1.0, ramp, endpoint=False)
        env[n_samples - ramp:] = np.linspace(1.0, 0.0, ramp)
        wave = wave * env
    return wave


def scene_sound(scene: Scene, *, sample_rate: int = SOUND_RATE, seconds: float = SOUND_SECONDS) -> np.ndarray:
    """(samples,) float32: the scene's objects left to right, one tone per slot, over seeded quiet noise."""
    n = round(sample_rate * seconds)
    objects = sorted(scene.objects, key=lambda o: o.x)
    slot = n // len(objects)
    out = np.random.default_rng(scene.noise_seed).standard_normal(n) * NOISE_LEVEL
    for i, obj in enumerate(objects):
        out[i * slot:i * slot + int(slot * TONE_FILL)] += tone(obj.color, obj.shape, obj.size,
                                                             int(slot * TONE_FILL), sample_rate=sample_rate)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def sound_classes() -> list[str]:
    """The 36 sound classes of the test set, colour + shape ("red circle"), colour-major."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def _write_meta(folder: Path, rows: list[dict]) -> None:
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    with open(folder / "meta" / "esc50.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _train_scenes(world: Path, n: int) -> list[tuple[str, str, Scene]]:
    """(image path relative to the world, caption, scene) of the first ``n`` training scenes."""
    from un2clip.world.judge import scene_from_record

    with open(world / "train" / "captions.csv", newline="", encoding="utf-8") as f:
        captions = list(csv.DictReader(f))
    out = []
    with open(world / "train" / "attributes.jsonl", encoding="utf-8") as f:
        for line, row in zip(f, captions):
            if len(out) == n:
                break
            record = json.loads(line)
            if record["image"] != row["image"]:
                raise ValueError(f"{world / 'train'}: captions.csv and attributes.jsonl disagree at {row['image']}")
            out.append((f"train/{row['image']}", row["caption"], scene_from_record(record)))
    return out


def write_sounds(world: Path, seed: int, *, n_train: int = N_TRAIN_SOUNDS, per_class: int = SOUNDS_PER_CLASS) -> Path:
    """``world/sounds/train`` and ``world/sounds/test`` (see the module); returns ``world/sounds``."""
    root = world / "sounds"
    train = root / "train"
    rows = []
    for i, (image, caption, scene) in enumerate(_train_scenes(world, n_train)):
        name = f"{i:06d}.wav"
        write_wav(train / "audio" / name, scene_sound(scene), SOUND_RATE)
        rows.append({"filename": name, "fold": i % N_FOLDS + 1, "target": 0, "category": "scene",
                     "caption": caption, "image": f"../../{image}"})
    if not rows:
        raise ValueError(f"{world / 'train'} holds no scene to sound")
    _write_meta(train, rows)
    test = root / "test"
    rng = np.random.default_rng([int(seed), SOUND_STREAM])
    rows = []
    for target, name in enumerate(sound_classes()):
        color, shape = name.split(" ")
        for j in range(per_class):
            scene = sample_scene(rng, n_objects=1, count=1, shapes=(shape,))
            scene = replace(scene, objects=(replace(scene.objects[0], color=color),))
            file = f"{target:02d}-{j:03d}.wav"
            write_wav(test / "audio" / file, scene_sound(scene), SOUND_RATE)
            rows.append({"filename": file, "fold": j % N_FOLDS + 1, "target": target, "category": name})
    _write_meta(test, rows)
    (test / "templates.txt").write_text("\n".join(ZEROSHOT_TEMPLATES) + "\n", encoding="utf-8")
    return root


def write_sketch_set(world: Path, seed: int, *, per_class: int = SKETCH_PER_CLASS, image_size: int = 32) -> Path:
    """``world/sketch/<shape>/NNNN.png`` (see the module); returns the folder."""
    folder = world / "sketch"
    rng = np.random.default_rng([int(seed), SKETCH_STREAM])
    for shape in SHAPES:
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            scene = sample_scene(rng, n_objects=1, count=1, shapes=(shape,), filled_only=True, allow_glyph=False)
            obj = replace(scene.objects[0], size="large", dot=False)
            render(replace(scene, objects=(obj,), view="straight"), image_size).save(folder / shape / f"{j:04d}.png")
    (folder / "classnames.txt").write_text("\n".join(SHAPES) + "\n", encoding="utf-8")
    (folder / "templates.txt").write_text("\n".join(ZEROSHOT_TEMPLATES) + "\n", encoding="utf-8")
    return folder


def _world_params(world: Path) -> dict:
    return json.loads((world / "world.json").read_text(encoding="utf-8"))


def ensure_sounds(world: Path, *, n_train: int = N_TRAIN_SOUNDS, per_class: int = SOUNDS_PER_CLASS) -> Path:
    """``world/sounds``, written first when the world lacks it (seed from its world.json)."""
    root = world / "sounds"
    if not ((root / "train" / "meta" / "esc50.csv").is_file() and (root / "test" / "templates.txt").is_file()):
        write_sounds(world, int(_world_params(world)["seed"]), n_train=n_train, per_class=per_class)
    return root


def ensure_sketch(world: Path, *, per_class: int = SKETCH_PER_CLASS) -> Path:
    """``world/sketch``, written first when the world lacks it (seed and image size from its world.json)."""
    folder = world / "sketch"
    if not (folder / "templates.txt").is_file():
        params = _world_params(world)
        write_sketch_set(world, int(params["seed"]), per_class=per_class, image_size=int(params["image_size"]))
    return folder
