"""The shapes world: small, seeded scenes of coloured shapes with captions.

Every scene is a pure value (:class:`Scene`); :func:`render` turns it into pixels and
:func:`caption` / :func:`describe` / :func:`phrase` into words.  Captions always name the
colour and the shape of every object; every other attribute is named only with
probability ``rare_rate`` (each one independently), so a CLIP trained on these captions
has little reason to see those attributes — the blindness un²CLIP is meant to cure.

Words are chosen so that no word serves two attributes: position says "on the left
side" / "in the center" / "on the right side", orientation says "pointing upward /
rightward / downward / leftward", count says "one / two / three" while glyph labels are
the characters themselves ("labeled 7").  :data:`WORLD_VOCABULARY` lists every word that
any caption, statement, class name or prompt template written here can contain.

:func:`generate_world` writes a complete world to disk: image-caption splits, an
MMVP-VLM-layout paired benchmark, zero-shot ImageFolder sets and a segmentation set.
Pure PIL + numpy.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

WORLD_VERSION = 1

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
SIZE_FRACTION: dict[str, float] = {"small": 0.18, "large": 0.28}  # of the image side
POSITIONS: tuple[str, ...] = ("left", "middle", "right")
POSITION_X: dict[str, float] = {"left": 0.18, "middle": 0.5, "right": 0.82}
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
GLYPHS: tuple[str, ...] = ("1", "2", "4", "7", "e", "f", "l", "t")
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
VIEWS: tuple[str, ...] = ("straight", "tilted")
RELATION_WORDS: dict[str, str] = {"left": "to the left of", "right": "to the right of"}

# Probabilities of the sampler (the training distribution).
P_COUNT = {1: 0.7, 2: 0.2, 3: 0.1}  # copies of one object
P_OBJECTS = {1: 0.5, 2: 0.3, 3: 0.2}  # distinct objects when count == 1
P_DOT = 0.3
P_GLYPH = 0.3
P_TILTED = 0.3
P_OUTLINED = 0.5

BACKGROUND = (232, 232, 232)
GLYPH_INK = (40, 40, 40)
DOT_INK = (20, 20, 20)
NOISE_AMPLITUDE = 3  # +- grey levels of per-pixel background noise
SUPERSAMPLE = 4  # draw at 4x, reduce with a box filter
JITTER_X = 0.015
JITTER_Y = 0.05
GLYPH_Y, GLYPH_H, GLYPH_W = 0.8, 0.24, 0.16
Y_WITH_GLYPH = 0.36
TILT_CORNERS = ((0.25, 0.05), (0.75, 0.05), (1.08, 1.0), (-0.08, 1.0))  # where the square lands

CAPTION_TEMPLATES: tuple[str, ...] = (
    "{}",
    "{}",
    "a photo of {}",
    "a picture of {}",
    "a drawing of {}",
    "an image of {}",
    "there is {}",
    "a rendering of {}",
)
ZEROSHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "an image of a {}.",
    "a rendering of a {}.",
    "there is a {}.",
    "a {}.",
    "a photo of the {}.",
)
MMVP_TYPES: tuple[str, ...] = (
    "Orientation and Direction",
    "Presence of Specific Features",
    "State and Condition",
    "Quantity and Count",
    "Positional and Relational Context",
    "Color and Appearance",
    "Structural Characteristics",
    "Texts",
    "Viewpoint and Perspective",
)
MMVP_PROMPT_PREFIX = "a photo of "  # what the MMVP-VLM protocol puts before a statement

OBJECT_ATTRIBUTES = ("size", "position", "orientation", "state", "dot", "glyph")
SCENE_ATTRIBUTES = ("count", "relation", "view")
RARE_ATTRIBUTES = OBJECT_ATTRIBUTES + SCENE_ATTRIBUTES

# Glyph strokes on a 4 x 6 grid (x right, y down); each entry is one polyline.
GLYPH_STROKES: dict[str, tuple[tuple[tuple[int, int], ...], ...]] = {
    "1": (((1, 1), (2, 0), (2, 6)), ((1, 6), (3, 6))),
    "2": (((0, 1), (1, 0), (3, 0), (4, 1), (4, 2), (0, 6), (4, 6)),),
    "4": (((3, 6), (3, 0), (0, 4), (4, 4)),),
    "7": (((0, 0), (4, 0), (1, 6)),),
    "e": (((4, 0), (0, 0), (0, 6), (4, 6)), ((0, 3), (3, 3))),
    "f": (((4, 0), (0, 0), (0, 6)), ((0, 3), (3, 3))),
    "l": (((0, 0), (0, 6), (4, 6)),),
    "t": (((0, 0), (4, 0)), ((2, 0), (2, 6))),
}


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


SPLIT_IDS = {"train": 0, "val": 1, "mmvp": 2, "zeroshot": 3, "seg": 4}  # one random stream family each


def _rng(seed: int, split: str, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLIT_IDS[split], stream])


def _randint(rng: np.random.Generator, n: int) -> int:
    """Uniform in [0, n); one ``random()`` draw (several times faster than ``integers``)."""
    return min(int(rng.random() * n), n - 1)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(rng.random())


def _choice(rng: np.random.Generator, items: Sequence):
    return items[_randint(rng, len(items))]


def _weighted(rng: np.random.Generator, table: dict):
    u, acc = float(rng.random()), 0.0
    for key, p in table.items():
        acc += p
        if u < acc:
            return key
    return key


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
) -> WorldObject:
    """Draw the attributes of one object (its place is set by :func:`sample_scene`)."""
    shape = _choice(rng, shapes)
    color = _choice(rng, list(COLORS))
    size = _choice(rng, SIZES)
    orientation = _choice(rng, ORIENTATIONS)
    outlined = rng.random() < P_OUTLINED
    dot = bool(rng.random() < P_DOT)
    has_glyph = rng.random() < P_GLYPH
    glyph = _choice(rng, GLYPHS)
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
) -> Scene:
    """Draw a scene from the world's distribution.

    ``count`` (copies of one object, 1-3) and ``n_objects`` (distinct objects, 1-3, only
    with ``count == 1``) are drawn when not given.  Distinct objects differ in shape or
    colour and stand in distinct columns.  The number of draws taken from ``rng`` depends
    only on the arguments and the outcomes, so a split is a prefix of a longer split.
    """
    if count is None:
        count = _weighted(rng, P_COUNT) if n_objects in (None, 1) else 1
    if count not in COUNT_WORDS:
        raise ValueError(f"count must be 1, 2 or 3, got {count}")
    if n_objects is None:
        n_objects = _weighted(rng, P_OBJECTS) if count == 1 else 1
    if n_objects not in (1, 2, 3) or (count > 1 and n_objects != 1):
        raise ValueError(f"n_objects must be 1-3 (1 when count > 1), got {n_objects} with count {count}")
    slots = int(max(count, n_objects))
    columns = [POSITIONS[i] for i in sorted(_permutation(rng, 3)[:slots])]
    order = _permutation(rng, slots)  # caption order is not left-to-right
    kinds: list[WorldObject] = []
    while len(kinds) < n_objects:
        obj = sample_object(rng, shapes=shapes, filled_only=filled_only, allow_glyph=allow_glyph)
        if all((obj.shape, obj.color) != (k.shape, k.color) for k in kinds):
            kinds.append(obj)
    objs = []
    for i in range(slots):
        jx, jy = _uniform(rng, -JITTER_X, JITTER_X), _uniform(rng, -JITTER_Y, JITTER_Y)
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


# ----------------------------------------------------------------------------- words
def _object_phrase(obj: WorldObject, count: int, named: Iterable[str]) -> str:
    named = set(named)
    words = [COUNT_WORDS[count] if "count" in named else "a"]
    if "size" in named:
        words.append(obj.size)
    if "state" in named:
        words.append(STATE_WORDS[obj.state])
    words.append(obj.color)
    words.append(PLURALS[obj.shape] if count > 1 and "count" in named else obj.shape)
    if "orientation" in named and obj.orientation is not None:
        words += ["pointing", ORIENTATION_WORDS[obj.orientation]]
    if "dot" in named:
        words.append("with a dot" if obj.dot else "without a dot")
    if "glyph" in named:
        words.append(f"labeled {obj.glyph}" if obj.glyph is not None else "without a label")
    if "position" in named and count == 1:
        words.append(POSITION_WORDS[obj.position])
    return " ".join(words)


def phrase(
    scene: Scene,
    named: Iterable[str] | Sequence[Iterable[str]] = (),
    *,
    scene_named: Iterable[str] | None = None,
    template: str = "{}",
) -> str:
    """Words for ``scene`` naming colour, shape and the attributes in ``named``.

    ``named`` is one set of attribute names for every object, or a sequence with one set
    per distinct object (:attr:`Scene.kinds`); object attributes are those of
    ``OBJECT_ATTRIBUTES``.  Scene attributes ("count", "relation", "view") are taken from
    ``scene_named`` when given, else from ``named`` (as a single set).
    """
    kinds = scene.kinds
    named_list = list(named) if not isinstance(named, (str, set, frozenset)) else [named]
    if named_list and all(isinstance(n, str) for n in named_list):
        named_list = [set(named_list)]
    if not named_list:
        named_list = [set()]
    per_object = [set(named_list[min(i, len(named_list) - 1)]) for i in range(len(kinds))]
    scene_set = set(scene_named) if scene_named is not None else set().union(*per_object)
    parts = []
    for obj, obj_named in zip(kinds, per_object):
        obj_named = obj_named - {"count"}
        if "count" in scene_set:
            obj_named.add("count")
        parts.append(_object_phrase(obj, scene.count, obj_named))
    if len(parts) >= 2 and "relation" in scene_set:
        side = "left" if kinds[0].x < kinds[1].x else "right"
        parts = [f"{parts[0]} {RELATION_WORDS[side]} {parts[1]}"] + parts[2:]
    if len(parts) == 1:
        text = parts[0]
    else:
        text = ", ".join(parts[:-1]) + " and " + parts[-1]
    if "view" in scene_set:
        text += f" in a {scene.view} view"
    return template.format(text)


def caption(scene: Scene, rng: np.random.Generator, rare_rate: float = 0.03) -> str:
    """A training caption: colour and shape always, each other attribute with ``rare_rate``.

    Draws a template and one uniform number per (object, object attribute) and per scene
    attribute from ``rng``; attributes that do not apply (orientation of a circle,
    position of copies, relation of a single object) are never named.
    """
    template = _choice(rng, CAPTION_TEMPLATES)
    per_object = []
    for _ in scene.kinds:
        draws = rng.random(len(OBJECT_ATTRIBUTES))
        per_object.append({a for a, u in zip(OBJECT_ATTRIBUTES, draws) if u < rare_rate})
    draws = rng.random(len(SCENE_ATTRIBUTES))
    scene_named = {a for a, u in zip(SCENE_ATTRIBUTES, draws) if u < rare_rate}
    return phrase(scene, per_object, scene_named=scene_named, template=template)


def describe(scene: Scene) -> str:
    """The full description: every attribute that applies to the scene is named."""
    return phrase(scene, [set(OBJECT_ATTRIBUTES)], scene_named=set(SCENE_ATTRIBUTES))


def _words(text: str) -> list[str]:
    """The words a lower-casing, punctuation-splitting word tokenizer sees."""
    return re.findall(r"[a-z0-9]+", text.lower())


def world_vocabulary() -> list[str]:
    """Every word any caption, statement, class name or template of the world can contain."""
    texts: list[str] = list(CAPTION_TEMPLATES) + list(ZEROSHOT_TEMPLATES) + [MMVP_PROMPT_PREFIX]
    texts += list(SHAPES) + list(PLURALS.values()) + list(COLORS) + list(SIZES)
    texts += list(POSITION_WORDS.values()) + list(ORIENTATION_WORDS.values()) + ["pointing"]
    texts += list(STATE_WORDS.values()) + list(COUNT_WORDS.values()) + list(RELATION_WORDS.values())
    texts += ["with a dot", "without a dot", "without a label", "labeled", "and", "a", "in a view"]
    texts += list(GLYPHS) + list(VIEWS)
    texts += [t for task in _zeroshot_tasks().values() for t in task["templates"]]
    texts += seg_classes()  # "background", for prompts over the segmentation classes
    return sorted({w for t in texts for w in _words(t)})


# ----------------------------------------------------------------------------- pixels
def _shape_points(shape: str, orientation: str | None) -> list[tuple[float, float]] | None:
    """Polygon of a shape in a unit box centred at 0 (None for the circle)."""
    if shape == "circle":
        return None
    if shape == "square":
        h = 0.42
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        pts = [(0.0, -0.46), (0.5, 0.4), (-0.5, 0.4)]
    elif shape == "arrow":
        s = 0.19
        pts = [(0.0, -0.5), (0.46, 0.0), (s, 0.0), (s, 0.5), (-s, 0.5), (-s, 0.0), (-0.46, 0.0)]
    elif shape == "star":
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.24
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((r * float(np.cos(a)), r * float(np.sin(a)) + 0.04))
    elif shape == "cross":
        s, h = 0.18, 0.48
        pts = [
            (-s, -h),
            (s, -h),
            (s, -s),
            (h, -s),
            (h, s),
            (s, s),
            (s, h),
            (-s, h),
            (-s, s),
            (-h, s),
            (-h, -s),
            (-s, -s),
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return _rotate(pts, orientation)


def _rotate(pts: list[tuple[float, float]], orientation: str | None) -> list[tuple[float, float]]:
    turns = {None: 0, "up": 0, "right": 1, "down": 2, "left": 3}[orientation]
    for _ in range(turns):  # a quarter turn clockwise on screen (y down)
        pts = [(-y, x) for x, y in pts]
    return pts


def _dot_center(shape: str, orientation: str | None) -> tuple[float, float]:
    if shape == "triangle":
        c = (0.0, 0.11)
    elif shape == "arrow":
        c = (0.0, -0.14)
    elif shape == "star":
        c = (0.0, 0.04)
    else:
        c = (0.0, 0.0)
    return _rotate([c], orientation)[0]


@functools.lru_cache(maxsize=1024)
def _polygons(
    shape: str, orientation: str | None, extent: float, ring: float
) -> tuple[tuple[tuple[float, float], ...], tuple[tuple[float, float], ...] | None]:
    """Outline of a shape scaled to ``extent`` pixels around 0, and its inset by ``ring`` (or None)."""
    pts = _shape_points(shape, orientation)
    assert pts is not None
    outer = tuple((x * extent, y * extent) for x, y in pts)
    inner = tuple(_inset(list(outer), ring)) if ring > 0 and shape != "star" else None
    return outer, inner


def _disc(cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    return (cx - r, cy - r, cx + r, cy + r)


def _inset(pts: list[tuple[float, float]], d: float) -> list[tuple[float, float]]:
    """The polygon ``pts`` with every edge moved inward by ``d`` (mitred corners)."""
    p = np.asarray(pts, dtype=float)
    area = 0.5 * float(np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1]))
    edges = np.roll(p, -1, axis=0) - p
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) / np.linalg.norm(edges, axis=1, keepdims=True)
    if area > 0:  # make the normals point inward whatever the winding
        normals = -normals
    out = []
    for i in range(len(p)):
        n0, n1 = normals[i - 1], normals[i]  # edges ending and starting at vertex i
        bisector = n0 + n1
        out.append(tuple(p[i] + bisector * d / max(float(np.dot(bisector, n1)), 1e-6)))
    return out


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _draw_object(
    canvas: Image.Image, labels: Image.Image | None, obj: WorldObject, side: int, label: int
) -> None:
    """Draw one object (and its glyph) on a canvas of ``side`` pixels (supersampled)."""
    color = COLORS[obj.color]
    extent = SIZE_FRACTION[obj.size] * side
    cx, cy = obj.x * side, obj.y * side
    pad = 2
    box = int(np.ceil(extent)) + 2 * pad
    ox, oy = int(round(cx - box / 2)), int(round(cy - box / 2))
    lx, ly = cx - ox, cy - oy  # centre in the local box
    mask = Image.new("L", (box, box), 0)
    md = ImageDraw.Draw(mask)
    outlined = obj.state == "outlined"
    ring = max(0.75, 0.12 * extent / SUPERSAMPLE) * SUPERSAMPLE if outlined else 0.0  # stroke, supersampled
    inner = None
    if obj.shape == "circle":
        md.ellipse(_disc(lx, ly, extent / 2), fill=255)
    else:
        outer, inner = _polygons(obj.shape, obj.orientation, extent, ring)
        md.polygon([(lx + x, ly + y) for x, y in outer], fill=255)
    full = mask
    if outlined:
        full = mask.copy()
        if obj.shape == "circle":
            md.ellipse(_disc(lx, ly, extent / 2 - ring), fill=0)
        elif inner is not None:
            md.polygon([(lx + x, ly + y) for x, y in inner], fill=0)
        else:  # the star's sharp concave outline: erode (a mitred inset would fold over)
            eroded = full
            for _ in range(int(round(ring))):
                eroded = eroded.filter(ImageFilter.MinFilter(3))
            mask = ImageChops.subtract(full, eroded)
    canvas.paste(color, (ox, oy), mask)
    if labels is not None:
        labels.paste(label, (ox, oy), full)
    if obj.dot:
        dx, dy = _dot_center(obj.shape, obj.orientation)
        r = max(0.11 * extent, 0.035 * side) * (0.75 if obj.shape == "star" else 1.0)  # a star core is small
        # always a contrasting ink, never the object's colour (a coloured dot inside a hollow
        # star or cross would read as a solid shape): dark on the background, white on dark fills
        light_fill = obj.state == "filled" and _luminance(color) < 150
        ink = (255, 255, 255) if light_fill else DOT_INK
        ImageDraw.Draw(canvas).ellipse(_disc(cx + dx * extent, cy + dy * extent, r), fill=ink)
    if obj.glyph is not None:
        _draw_glyph(canvas, obj.glyph, obj.x * side, GLYPH_Y * side, side)


def _draw_glyph(canvas: Image.Image, glyph: str, cx: float, cy: float, side: int) -> None:
    w, h = GLYPH_W * side, GLYPH_H * side
    width = max(1, int(round(side * 0.035)))
    draw = ImageDraw.Draw(canvas)
    for stroke in GLYPH_STROKES[glyph]:
        pts = [(cx - w / 2 + gx / 4 * w, cy - h / 2 + gy / 6 * h) for gx, gy in stroke]
        draw.line(pts, fill=GLYPH_INK, width=width, joint="curve")
        r = width / 2  # round caps
        for px, py in (pts[0], pts[-1]):
            draw.ellipse((px - r, py - r, px + r, py + r), fill=GLYPH_INK)


_NOISE_BANK = 61  # distinct grey noise fields per image size; a seed picks one and a shift


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """Noise fields, each tiled 2 x 2 so that any shift of it is a plain slice."""
    rng = np.random.default_rng([WORLD_VERSION, size])
    fields = rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, (_NOISE_BANK, size, size, 1)).astype(
        np.int16
    )
    return np.tile(fields, (1, 2, 2, 1))


def _noise(seed: int, size: int) -> np.ndarray:
    """Background noise of one image: a field of the bank, shifted; a function of the seed."""
    shift = (seed // _NOISE_BANK) % (size * size)
    dy, dx = shift // size, shift % size
    return _noise_bank(size)[seed % _NOISE_BANK, dy : dy + size, dx : dx + size]


@functools.lru_cache(maxsize=16)
def _perspective_coefficients(out_side: int, in_side: int) -> tuple[float, ...]:
    """PIL PERSPECTIVE data mapping output pixels (tilted) to input pixels (flat)."""
    src = [(0, 0), (in_side, 0), (in_side, in_side), (0, in_side)]
    dst = [(x * out_side, y * out_side) for x, y in TILT_CORNERS]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return tuple(float(c) for c in np.linalg.solve(np.asarray(rows, float), np.asarray(rhs, float)))


def _render(scene: Scene, size: int, with_labels: bool) -> tuple[Image.Image, np.ndarray | None]:
    side = size * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    labels = Image.new("L", (side, side), 0) if with_labels else None
    for obj in scene.objects:
        _draw_object(canvas, labels, obj, side, SHAPES.index(obj.shape) + 1)
    factor = SUPERSAMPLE
    if scene.view == "tilted":  # warp onto a 2x grid (cheaper than the full canvas), then reduce
        factor = min(2, SUPERSAMPLE)
        coeffs = _perspective_coefficients(size * factor, side)
        out = (size * factor, size * factor)
        canvas = canvas.transform(
            out, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=BACKGROUND
        )
        if labels is not None:
            labels = labels.transform(
                out, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.NEAREST, fillcolor=0
            )
    elif scene.view != "straight":
        raise ValueError(f"unknown view {scene.view!r}; known: {VIEWS}")
    image = canvas.reduce(factor) if factor > 1 else canvas
    if NOISE_AMPLITUDE:
        pixels = np.asarray(image, dtype=np.int16) + _noise(scene.noise_seed, size)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    mask = None
    if labels is not None:
        mask = np.asarray(labels.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)
    return image, mask


def render(scene: Scene, size: int = 32) -> Image.Image:
    """Pixels of ``scene``: an RGB image of ``size`` x ``size`` (drawn supersampled)."""
    return _render(scene, size, with_labels=False)[0]


def render_with_mask(scene: Scene, size: int = 32) -> tuple[Image.Image, np.ndarray]:
    """The image and a (size, size) uint8 map of class ids (0 background, shape index + 1).

    An object's whole region is labelled, including the inside of outlined shapes and its
    dot; glyphs are background.
    """
    image, mask = _render(scene, size, with_labels=True)
    assert mask is not None
    return image, mask


def seg_classes() -> list[str]:
    """Class names of the segmentation set: index 0 is background, then the shapes."""
    return ["background", *SHAPES]


# ----------------------------------------------------------------------------- MMVP pairs
def _other(rng: np.random.Generator, items: Sequence, value) -> object:
    return _choice(rng, [i for i in items if i != value])


def _mmvp_pair(rng: np.random.Generator, pattern: str, index: int) -> tuple[Scene, Scene, set[str], str]:
    """Two scenes that differ in exactly the attribute of ``pattern``; the attribute named."""
    if pattern == "Orientation and Direction":
        a = sample_scene(rng, n_objects=1, count=1, shapes=ORIENTED_SHAPES)
        o = a.objects[0]
        b = replace(a, objects=(replace(o, orientation=_other(rng, ORIENTATIONS, o.orientation)),))
        return a, b, {"orientation"}, "orientation"
    if pattern == "Presence of Specific Features":
        a = sample_scene(rng, n_objects=1, count=1)
        a = replace(a, objects=(replace(a.objects[0], dot=index % 2 == 0),))  # with first, then without first
        b = replace(a, objects=(replace(a.objects[0], dot=not a.objects[0].dot),))
        return a, b, {"dot"}, "dot"
    if pattern == "State and Condition":
        a = sample_scene(rng, n_objects=1, count=1)
        o = a.objects[0]
        b = replace(a, objects=(replace(o, state=_other(rng, STATES, o.state)),))
        return a, b, {"state"}, "state"
    if pattern == "Quantity and Count":
        n1 = 1 + index % 2  # 1 vs 2, then 2 vs 3
        a = sample_scene(rng, n_objects=1, count=n1)
        taken = {o.position for o in a.objects}
        free = [p for p in POSITIONS if p not in taken]
        extra = place(
            a.objects[0],
            _choice(rng, free),
            _uniform(rng, -JITTER_X, JITTER_X),
            _uniform(rng, -JITTER_Y, JITTER_Y),
        )
        objs = sorted(a.objects + (extra,), key=lambda o: o.x)
        b = replace(a, objects=tuple(objs), count=n1 + 1)
        if index % 4 >= 2:  # sometimes the larger count comes first
            a, b = b, a
        return a, b, {"count"}, "count"
    if pattern == "Positional and Relational Context":
        if index % 2 == 0:  # one object, left side vs right side
            a = sample_scene(rng, n_objects=1, count=1)
            o = a.objects[0]
            side = _choice(rng, ("left", "right"))
            a = replace(a, objects=(modify(o, position=side),))
            other = "right" if side == "left" else "left"
            b = replace(a, objects=(modify(a.objects[0], position=other),))
            return a, b, {"position"}, "position"
        a = sample_scene(rng, n_objects=2, count=1)  # A left of B vs A right of B
        o1, o2 = a.objects
        b = replace(a, objects=(modify(o1, position=o2.position), modify(o2, position=o1.position)))
        return a, b, {"relation"}, "relation"
    if pattern == "Color and Appearance":
        a = sample_scene(rng, n_objects=2, count=1)
        o1, o2 = a.objects
        taken = {(o1.shape, o1.color)}
        colors = [c for c in COLORS if c != o2.color and (o2.shape, c) not in taken]
        b = replace(a, objects=(o1, replace(o2, color=_choice(rng, colors))))
        return a, b, set(), "color"
    if pattern == "Structural Characteristics":
        a = sample_scene(rng, n_objects=1, count=1)
        o = a.objects[0]
        b = replace(a, objects=(replace(o, size=_other(rng, SIZES, o.size)),))
        return a, b, {"size"}, "size"
    if pattern == "Texts":
        a = sample_scene(rng, n_objects=1, count=1)
        o = a.objects[0]
        g1 = _choice(rng, GLYPHS)
        a = replace(a, objects=(modify(o, glyph=g1),))
        b = replace(a, objects=(modify(a.objects[0], glyph=_other(rng, GLYPHS, g1)),))
        return a, b, {"glyph"}, "glyph"
    if pattern == "Viewpoint and Perspective":
        a = sample_scene(rng, n_objects=1, count=1)
        b = replace(a, view=_other(rng, VIEWS, a.view))
        return a, b, {"view"}, "view"
    raise ValueError(f"unknown MMVP pattern {pattern!r}; known: {MMVP_TYPES}")


def mmvp_pairs(seed: int = 0, pairs_per_pattern: int = 15) -> list[dict]:
    """The paired benchmark as records: type, attribute, the two scenes, the two statements.

    Each pattern draws from its own stream, so more pairs per pattern extend the same
    benchmark (the first 15 pairs stay the first 15).
    """
    records = []
    for k, pattern in enumerate(MMVP_TYPES):
        rng = _rng(seed, "mmvp", k)
        for index in range(pairs_per_pattern):
            a, b, named, attribute = _mmvp_pair(rng, pattern, index)
            s1, s2 = phrase(a, named), phrase(b, named)
            if s1 == s2 or a == b:  # cannot happen by construction; refuse rather than write it
                raise AssertionError(f"degenerate {pattern} pair: {s1!r}")
            records.append(
                {"type": pattern, "attribute": attribute, "scenes": (a, b), "statements": (s1, s2)}
            )
    return records


# ----------------------------------------------------------------------------- zero-shot
def _zeroshot_tasks() -> dict[str, dict]:
    """Class names and templates of the zero-shot sets (class names are folder names)."""
    shape_names = sorted(SHAPES)
    color_names = sorted(COLORS)
    orient_names = sorted(ORIENTATION_WORDS.values())
    return {
        "shape": {"classnames": shape_names, "templates": list(ZEROSHOT_TEMPLATES)},
        "color": {
            "classnames": color_names,
            "templates": [f"a photo of a {{}} {s}." for s in SHAPES]
            + [f"a drawing of a {{}} {s}." for s in SHAPES],
        },
        "orientation": {
            "classnames": orient_names,
            "templates": [f"a photo of a {c} {s} pointing {{}}." for s in ORIENTED_SHAPES for c in COLORS],
        },
    }


def _zeroshot_scene(rng: np.random.Generator, task: str, classname: str) -> Scene:
    if task == "shape":
        scene = sample_scene(rng, n_objects=1, count=1, shapes=(classname,))
    elif task == "color":
        scene = sample_scene(rng, n_objects=1, count=1)
        scene = replace(scene, objects=(replace(scene.objects[0], color=classname),))
    elif task == "orientation":
        scene = sample_scene(rng, n_objects=1, count=1, shapes=ORIENTED_SHAPES)
        key = {v: k for k, v in ORIENTATION_WORDS.items()}[classname]
        scene = replace(scene, objects=(replace(scene.objects[0], orientation=key),))
    else:
        raise ValueError(task)
    return scene


# ----------------------------------------------------------------------------- writing
OUTPUT_NAMES = ("train", "val", "mmvp", "zeroshot", "seg", "world.json")
_CHUNK = 256  # images per job sent to a worker process


def _save_images(jobs: list[tuple[Scene, str, str | None]], size: int) -> int:
    """Render and write ``(scene, image path, mask path or None)`` jobs; JPEG for ``.jpg``."""
    for scene, path, mask_path in jobs:
        if mask_path is None:
            image = render(scene, size)
        else:
            image, mask = render_with_mask(scene, size)
            Image.fromarray(mask, "L").save(mask_path, format="PNG")
        if path.endswith(".jpg"):
            image.save(path, format="JPEG", quality=95)
        else:
            image.save(path, format="PNG")
    return len(jobs)


class _ImageWriter:
    """Collects image jobs and runs them inline or on a pool of processes.

    Pixels depend only on the scene, so the files are the same whatever ``workers`` is.
    """

    def __init__(self, size: int, workers: int, total: int, progress: bool):
        self.size, self.workers = size, workers
        self.pending: list[tuple[Scene, str, str | None]] = []
        self.futures: list = []
        self.pool = None
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="shapes world", unit="img")
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: safe next to threaded libraries (torch) in the parent process
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def add(self, scene: Scene, path: Path, mask_path: Path | None = None) -> None:
        self.pending.append((scene, str(path), None if mask_path is None else str(mask_path)))
        if len(self.pending) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        jobs, self.pending = self.pending, []
        if not jobs:
            return
        if self.pool is None:
            self._done(_save_images(jobs, self.size))
            return
        self.futures.append(self.pool.submit(_save_images, jobs, self.size))
        while len(self.futures) > 4 * self.workers:  # bound the memory held by queued jobs
            self._done(self.futures.pop(0).result())

    def _done(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self, *, finish: bool = True) -> None:
        """Wait for every job (``finish``) or drop the queued ones (after an error)."""
        try:
            if finish:
                self._flush()
                for fut in self.futures:
                    self._done(fut.result())
        finally:
            self.futures, self.pending = [], []
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
            if self.bar is not None:
                self.bar.close()


def _write_caption_split(
    root: Path, split: str, n: int, seed: int, rare_rate: float, out: _ImageWriter
) -> None:
    folder = root / split
    (folder / "images").mkdir(parents=True, exist_ok=True)
    scene_rng, caption_rng = _rng(seed, split, 0), _rng(seed, split, 1)
    with (
        open(folder / "captions.csv", "w", newline="", encoding="utf-8") as fcsv,
        open(folder / "attributes.jsonl", "w", encoding="utf-8") as fjson,
    ):
        writer = csv.writer(fcsv, lineterminator="\n")
        writer.writerow(["image", "caption"])
        for i in range(n):
            scene = sample_scene(scene_rng)
            name = f"images/{i:06d}.png"
            out.add(scene, folder / name)
            writer.writerow([name, caption(scene, caption_rng, rare_rate)])
            fjson.write(json.dumps({"index": i, "image": name, **scene.to_record()}, sort_keys=True) + "\n")


def _write_mmvp(root: Path, seed: int, pairs_per_pattern: int, out: _ImageWriter) -> None:
    folder = root / "mmvp"
    for t in MMVP_TYPES:
        (folder / "MLLM_VLM Images" / t).mkdir(parents=True, exist_ok=True)
    records = mmvp_pairs(seed, pairs_per_pattern)
    with (
        open(folder / "Questions.csv", "w", newline="", encoding="utf-8") as fcsv,
        open(folder / "pairs.jsonl", "w", encoding="utf-8") as fjson,
    ):
        writer = csv.writer(fcsv, lineterminator="\n")
        writer.writerow(["Question ID", "Type", "Statement"])
        for k, rec in enumerate(records):
            qids = (2 * k + 1, 2 * k + 2)
            for q, scene, statement in zip(qids, rec["scenes"], rec["statements"]):
                out.add(scene, folder / "MLLM_VLM Images" / rec["type"] / f"{q}.jpg")
                writer.writerow([q, rec["type"], statement])
            record = {
                "question_ids": list(qids),
                "type": rec["type"],
                "attribute": rec["attribute"],
                "statements": list(rec["statements"]),
                "scenes": [s.to_record() for s in rec["scenes"]],
            }
            fjson.write(json.dumps(record, sort_keys=True) + "\n")


def _write_zeroshot(root: Path, seed: int, per_class: int, out: _ImageWriter) -> None:
    for t, (task, spec) in enumerate(_zeroshot_tasks().items()):
        folder = root / "zeroshot" / task
        rng = _rng(seed, "zeroshot", t)
        for name in spec["classnames"]:
            (folder / name).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                out.add(_zeroshot_scene(rng, task, name), folder / name / f"{j:04d}.png")
        (folder / "classnames.txt").write_text("\n".join(spec["classnames"]) + "\n", encoding="utf-8")
        (folder / "templates.txt").write_text("\n".join(spec["templates"]) + "\n", encoding="utf-8")


def _write_seg(root: Path, seed: int, n: int, out: _ImageWriter) -> None:
    folder = root / "seg"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, "seg")
    with open(folder / "attributes.jsonl", "w", encoding="utf-8") as fjson:
        for i in range(n):
            scene = sample_scene(rng, filled_only=True, allow_glyph=False)
            out.add(scene, folder / "images" / f"{i:06d}.png", folder / "masks" / f"{i:06d}.png")
            record = {
                "index": i,
                "image": f"images/{i:06d}.png",
                "mask": f"masks/{i:06d}.png",
                **scene.to_record(),
            }
            fjson.write(json.dumps(record, sort_keys=True) + "\n")
    (folder / "classes.txt").write_text("\n".join(seg_classes()) + "\n", encoding="utf-8")
    (folder / "templates.txt").write_text("\n".join(ZEROSHOT_TEMPLATES) + "\n", encoding="utf-8")


def _auto_workers(n_images: int) -> int:
    if n_images < 4000:  # starting processes costs more than it saves
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def generate_world(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 20000,
    n_val: int = 1000,
    image_size: int = 32,
    rare_rate: float = 0.03,
    pairs_per_pattern: int = 15,
    n_seg: int = 200,
    n_zeroshot_per_class: int = 50,
    progress: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
) -> dict:
    """Write a shapes world under ``out_dir`` and return its parameters (also ``world.json``).

    Layout::

        train/ val/       images/000000.png, captions.csv (image,caption), attributes.jsonl
        mmvp/             Questions.csv, MLLM_VLM Images/<Type>/<qid>.jpg, pairs.jsonl
        zeroshot/<task>/  <classname>/0000.png, classnames.txt, templates.txt
                          (tasks: shape, color, orientation)
        seg/              images/<id>.png, masks/<id>.png, classes.txt, templates.txt,
                          attributes.jsonl
        world.json

    Each part draws from its own random stream, so e.g. ``n_train`` changes neither the
    validation split nor the benchmark, and a smaller train split is a prefix of a larger
    one.  Refuses to write into a folder that already holds a world unless ``overwrite``
    (then the world's own folders are deleted first; other files are left alone).
    ``workers`` processes render the images (None: one per core, at most 8, for large
    worlds); the output is byte-identical whatever their number.  Processes are started
    with "spawn", so a script calling this at import time needs the usual
    ``if __name__ == "__main__":`` guard when ``workers > 1``.
    """
    if not 0.0 <= rare_rate <= 1.0:
        raise ValueError(f"rare_rate must be in [0, 1], got {rare_rate}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    counts = {
        "n_train": n_train,
        "n_val": n_val,
        "pairs_per_pattern": pairs_per_pattern,
        "n_seg": n_seg,
        "n_zeroshot_per_class": n_zeroshot_per_class,
    }
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    root = Path(out_dir)
    existing = [n for n in OUTPUT_NAMES if (root / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{root} already holds a world ({', '.join(existing)}); pass overwrite=True to rewrite it"
        )
    for n in existing:
        if (root / n).is_dir():
            shutil.rmtree(root / n)
        else:
            (root / n).unlink()
    root.mkdir(parents=True, exist_ok=True)
    tasks = _zeroshot_tasks()
    n_zs = sum(len(t["classnames"]) for t in tasks.values()) * n_zeroshot_per_class
    total = n_train + n_val + 2 * pairs_per_pattern * len(MMVP_TYPES) + n_zs + n_seg
    n_workers = _auto_workers(total) if workers is None else max(1, int(workers))
    out = _ImageWriter(image_size, n_workers, total, progress)
    try:
        _write_caption_split(root, "train", n_train, seed, rare_rate, out)
        _write_caption_split(root, "val", n_val, seed, rare_rate, out)
        _write_mmvp(root, seed, pairs_per_pattern, out)
        _write_zeroshot(root, seed, n_zeroshot_per_class, out)
        _write_seg(root, seed, n_seg, out)
    except BaseException:
        out.close(finish=False)
        raise
    out.close()
    params = {
        "version": WORLD_VERSION,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_val": n_val,
        "rare_rate": rare_rate,
        "pairs_per_pattern": pairs_per_pattern,
        "n_mmvp_questions": 2 * pairs_per_pattern * len(MMVP_TYPES),
        "n_seg": n_seg,
        "n_zeroshot_per_class": n_zeroshot_per_class,
        "supersample": SUPERSAMPLE,
        "shapes": list(SHAPES),
        "colors": list(COLORS),
        "glyphs": list(GLYPHS),
        "rare_attributes": list(RARE_ATTRIBUTES),
        "mmvp_types": list(MMVP_TYPES),
        "zeroshot_tasks": list(tasks),
        "seg_classes": seg_classes(),
        "vocabulary_size": len(WORLD_VOCABULARY),
    }
    (root / "world.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return params


WORLD_VOCABULARY: list[str] = world_vocabulary()

__all__ = [
    "COLORS",
    "GLYPHS",
    "MMVP_TYPES",
    "SHAPES",
    "WORLD_VOCABULARY",
    "Scene",
    "WorldObject",
    "caption",
    "describe",
    "generate_world",
    "mmvp_pairs",
    "modify",
    "phrase",
    "place",
    "render",
    "render_with_mask",
    "sample_object",
    "sample_scene",
    "seg_classes",
    "world_vocabulary",
]
