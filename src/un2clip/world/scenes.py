"""The shapes world's scenes: the tables of attribute values, and seeded scene sampling.

Every scene is a pure value (:class:`Scene`); :mod:`un2clip.world.render` turns it into pixels
and :mod:`un2clip.world.words` into words. ``WORLD_VERSION`` changes whenever the same seed
would give other scenes, captions or pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

WORLD_VERSION = 2  # 2: larger objects (0.32 / 0.45 of the side), at most two per scene, 4 glyphs

# ----------------------------------------------------------------------------- tables
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "arrow", "star", "cross")
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "arrow": "arrows",
    "star": "stars",
    "cross": "crosses",
}
ORIENTED_SHAPES: tuple[str, ...] = ("triangle", "arrow")
COLORS: dict[str, tuple[int, int, int]] = {  # hues ~60 degrees apart, plain names
    "red": (220, 35, 35),
    "yellow": (235, 205, 20),
    "green": (35, 165, 50),
    "cyan": (20, 190, 210),
    "blue": (35, 65, 225),
    "purple": (145, 45, 185),
}
SIZES: tuple[str, ...] = ("small", "large")
# Of the image side.  Version 1 drew 0.18 / 0.28 (6 / 9 px at 32 px): a tiny ViT with 8-px patches did not
# learn shape at that size even when trained on it; at 0.32 / 0.45 it does (docs/world_competence.md).
SIZE_FRACTION: dict[str, float] = {"small": 0.32, "large": 0.45}
POSITIONS: tuple[str, ...] = ("left", "middle", "right")
POSITION_X: dict[str, float] = {"left": 0.25, "middle": 0.5, "right": 0.75}
TWO_COLUMNS: tuple[str, str] = ("left", "right")  # two objects stand here: a large one is wider than a third
POSITION_WORDS: dict[str, str] = {
    "left": "on the left side",
    "middle": "in the center",
    "right": "on the right side",
}
ORIENTATIONS: tuple[str, ...] = ("up", "right", "down", "left")
ORIENTATION_WORDS: dict[str, str] = {
    "up": "upward",
    "right": "rightward",
    "down": "downward",
    "left": "leftward",
}
STATES: tuple[str, ...] = ("filled", "outlined")
STATE_WORDS: dict[str, str] = {"filled": "solid", "outlined": "hollow"}
GLYPHS: tuple[str, ...] = ("2", "4", "7", "e")
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two"}
VIEWS: tuple[str, ...] = ("straight", "tilted")
RELATION_WORDS: dict[str, str] = {"left": "to the left of", "right": "to the right of"}

# Probabilities of the sampler (the training distribution).
P_COUNT = {1: 0.75, 2: 0.25}  # copies of one object
P_OBJECTS = {1: 0.6, 2: 0.4}  # distinct objects when count == 1
P_DOT = 0.3
P_GLYPH = 0.3
P_TILTED = 0.3
P_OUTLINED = 0.5

JITTER_X = 0.015
JITTER_Y = 0.05
Y_WITH_GLYPH = 0.36

OBJECT_ATTRIBUTES = ("size", "position", "orientation", "state", "dot", "glyph")
SCENE_ATTRIBUTES = ("count", "relation", "view")
RARE_ATTRIBUTES = OBJECT_ATTRIBUTES + SCENE_ATTRIBUTES


# ----------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class WorldObject:
    """One drawn object.  ``x``/``y`` are its centre in fractions of the image side."""

    shape: str
    color: str
    size: str = "large"
    position: str = "middle"
    orientation: str | None = None  # only for triangle and arrow
    state: str = "filled"
    dot: bool = False  # presence of a contrasting dot at the object's centre
    glyph: str | None = None  # a character drawn below the object
    x: float = 0.5
    y: float = 0.5


@dataclass(frozen=True)
class Scene:
    """A scene: distinct objects in distinct columns, or ``count`` copies of one object.

    When ``count > 1`` all entries of ``objects`` are the same object except for their
    place (``position``, ``x``, ``y``).  ``noise_seed`` fixes the background noise, so a
    scene renders to the same pixels every time.
    """

    objects: tuple[WorldObject, ...]
    count: int = 1
    view: str = "straight"
    noise_seed: int = 0

    @property
    def kinds(self) -> tuple[WorldObject, ...]:
        """The distinct objects: the first copy when ``count > 1``, else all objects."""
        return self.objects[:1] if self.count > 1 else self.objects

    def to_record(self) -> dict:
        return {
            "objects": [dict(o.__dict__) for o in self.objects],  # the fields (asdict is slow)
            "count": self.count,
            "view": self.view,
            "noise_seed": self.noise_seed,
        }


SPLIT_IDS = {"train": 0, "val": 1, "mmvp": 2, "zeroshot": 3, "seg": 4,
             "detect": 5, "depth": 6, "pointcloud": 7, "video": 8, "trusted": 9,
             "mllm-train": 10, "mllm-mmvp": 11, "mllm-mmvp-talk": 12, "mllm-cvbench": 13,
             "grounding": 14, "lseg-train": 15, "lseg-unseen": 16, "lseg-val": 17}  # one stream family each


def split_rng(seed: int, split: str, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLIT_IDS[split], stream])


def _randint(rng: np.random.Generator, n: int) -> int:
    """Uniform in [0, n); one ``random()`` draw (several times faster than ``integers``)."""
    return min(int(rng.random() * n), n - 1)


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(rng.random())


def choice(rng: np.random.Generator, items: Sequence):
    return items[_randint(rng, len(items))]


def _weighted(rng: np.random.Generator, table: dict):
    u, acc = float(rng.random()), 0.0
    for key, p in table.items():
        acc += p
        if u < acc:
            return key
    return key


def zipf_weights(names: Sequence[str], exponent: float) -> dict[str, float]:
    """Long-tailed probabilities over ``names`` in their order: p_k proportional to 1 / k^exponent (k = 1, 2, ...)."""
    raw = [1.0 / (k + 1) ** float(exponent) for k in range(len(names))]
    total = sum(raw)
    return {name: r / total for name, r in zip(names, raw)}


def _permutation(rng: np.random.Generator, n: int) -> list[int]:
    items = list(range(n))
    for i in range(n - 1, 0, -1):  # Fisher-Yates
        j = _randint(rng, i + 1)
        items[i], items[j] = items[j], items[i]
    return items


def _base_y(obj: WorldObject) -> float:
    return Y_WITH_GLYPH if obj.glyph is not None else 0.5


def place(obj: WorldObject, position: str, jx: float = 0.0, jy: float = 0.0) -> WorldObject:
    """``obj`` standing in column ``position``, its centre moved by the jitter ``jx``, ``jy``."""
    return replace(obj, position=position, x=POSITION_X[position] + jx, y=_base_y(obj) + jy)


def modify(obj: WorldObject, **changes) -> WorldObject:
    """``obj`` with ``changes`` applied, re-placed for a new position or glyph, same jitter."""
    jx, jy = obj.x - POSITION_X[obj.position], obj.y - _base_y(obj)
    new = replace(obj, **changes)
    return place(new, new.position, jx, jy)


def sample_object(
    rng: np.random.Generator,
    *,
    shapes: Sequence[str] = SHAPES,
    filled_only: bool = False,
    allow_glyph: bool = True,
    weights: dict[str, dict[str, float]] | None = None,
) -> WorldObject:
    """Draw the attributes of one object (its place is set by :func:`sample_scene`).

    ``weights``: optional ``{"shape": {name: p}, "color": {name: p}}`` replacing the uniform draw of
    that attribute (one uniform number either way, so the stream of draws keeps its length).
    """
    weights = weights or {}
    shape = _weighted(rng, weights["shape"]) if "shape" in weights else choice(rng, shapes)
    color = _weighted(rng, weights["color"]) if "color" in weights else choice(rng, list(COLORS))
    size = choice(rng, SIZES)
    orientation = choice(rng, ORIENTATIONS)
    outlined = rng.random() < P_OUTLINED
    dot = bool(rng.random() < P_DOT)
    has_glyph = rng.random() < P_GLYPH
    glyph = choice(rng, GLYPHS)
    return WorldObject(
        shape=shape,
        color=color,
        size=size,
        orientation=orientation if shape in ORIENTED_SHAPES else None,
        state="outlined" if outlined and not filled_only else "filled",
        dot=dot,
        glyph=glyph if has_glyph and allow_glyph else None,
    )


def sample_scene(
    rng: np.random.Generator,
    *,
    n_objects: int | None = None,
    count: int | None = None,
    shapes: Sequence[str] = SHAPES,
    filled_only: bool = False,
    allow_glyph: bool = True,
    view: str | None = None,
    weights: dict[str, dict[str, float]] | None = None,
) -> Scene:
    """Draw a scene from the world's distribution.

    ``count`` (copies of one object, 1-2) and ``n_objects`` (distinct objects, 1-2, only
    with ``count == 1``) are drawn when not given.  Distinct objects differ in shape or
    colour; one object stands in any column, two in the left and right ones.  The number of
    draws taken from ``rng`` depends only on the arguments and the outcomes, so a split is a
    prefix of a longer split.
    """
    if count is None:
        count = _weighted(rng, P_COUNT) if n_objects in (None, 1) else 1
    if count not in COUNT_WORDS:
        raise ValueError(f"count must be one of {sorted(COUNT_WORDS)}, got {count}")
    if n_objects is None:
        n_objects = _weighted(rng, P_OBJECTS) if count == 1 else 1
    if n_objects not in (1, 2) or (count > 1 and n_objects != 1):
        raise ValueError(f"n_objects must be 1 or 2 (1 when count > 1), got {n_objects} with count {count}")
    slots = int(max(count, n_objects))
    columns = [choice(rng, POSITIONS)] if slots == 1 else list(TWO_COLUMNS)
    order = _permutation(rng, slots)  # caption order is not left-to-right
    kinds: list[WorldObject] = []
    while len(kinds) < n_objects:
        obj = sample_object(rng, shapes=shapes, filled_only=filled_only, allow_glyph=allow_glyph, weights=weights)
        if all((obj.shape, obj.color) != (k.shape, k.color) for k in kinds):
            kinds.append(obj)
    objs = []
    for i in range(slots):
        jx, jy = uniform(rng, -JITTER_X, JITTER_X), uniform(rng, -JITTER_Y, JITTER_Y)
        kind = kinds[0] if count > 1 else kinds[i]
        objs.append(place(kind, columns[order[i]], jx, jy))
    tilted = rng.random() < P_TILTED
    noise_seed = int(rng.random() * 2**31)
    return Scene(
        objects=tuple(objs),
        count=int(count),
        view=view if view is not None else ("tilted" if tilted else "straight"),
        noise_seed=noise_seed,
    )


