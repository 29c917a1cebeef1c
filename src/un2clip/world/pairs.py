"""The world's MMVP pairs: two scenes that differ in one attribute, one maker per MMVP-VLM pattern.

Used by the MMVP-VLM sets (:mod:`un2clip.world.evalsets`) and by the LLaVA instruction pairs
(:mod:`un2clip.world.mllm`). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from un2clip.world.scenes import (
    COLORS,
    GLYPHS,
    JITTER_X,
    JITTER_Y,
    ORIENTATIONS,
    ORIENTED_SHAPES,
    SHAPES,
    SIZES,
    STATES,
    TWO_COLUMNS,
    VIEWS,
    Scene,
    choice,
    modify,
    place,
    sample_scene,
    uniform,
)


def _other(rng: np.random.Generator, items: Sequence, value) -> object:
    return choice(rng, [i for i in items if i != value])


Pair = tuple[Scene, Scene, set[str], str]  # two scenes, the attributes their statements name, the attribute
Weights = dict[str, dict[str, float]] | None  # sample_scene's weights: here, which colours a pair may use


def _one_attribute_pair(attribute: str, values: Sequence[str],
                         shapes: Sequence[str] = SHAPES) -> Callable[[np.random.Generator, int, Weights], Pair]:
    """Pairs of one-object scenes where ``attribute`` takes another of ``values`` (orientation, state, size)."""
    def make(rng: np.random.Generator, index: int, weights: Weights = None) -> Pair:
        a = sample_scene(rng, n_objects=1, count=1, shapes=shapes, weights=weights)
        o = a.objects[0]
        b = replace(a, objects=(replace(o, **{attribute: _other(rng, values, getattr(o, attribute))}),))
        return a, b, {attribute}, attribute

    return make


def _dot_pair(rng: np.random.Generator, index: int, weights: Weights = None) -> Pair:
    a = sample_scene(rng, n_objects=1, count=1, weights=weights)
    a = replace(a, objects=(replace(a.objects[0], dot=index % 2 == 0),))  # with first, then without first
    b = replace(a, objects=(replace(a.objects[0], dot=not a.objects[0].dot),))
    return a, b, {"dot"}, "dot"


def _count_pair(rng: np.random.Generator, index: int, weights: Weights = None) -> Pair:
    """One object vs two copies of it (in the two columns, the single one standing in either)."""
    a = sample_scene(rng, n_objects=1, count=1, weights=weights)
    o = a.objects[0]
    a = replace(a, objects=(modify(o, position=choice(rng, TWO_COLUMNS)),))
    jitter = uniform(rng, -JITTER_X, JITTER_X), uniform(rng, -JITTER_Y, JITTER_Y)
    first = a.objects[0]
    other = place(first, next(c for c in TWO_COLUMNS if c != first.position), *jitter)
    b = replace(a, objects=tuple(sorted((first, other), key=lambda x: x.x)), count=2)
    if index % 2 == 1:  # every other pair the larger count comes first
        a, b = b, a
    return a, b, {"count"}, "count"


def _position_pair(rng: np.random.Generator, index: int, weights: Weights = None) -> Pair:
    if index % 2 == 0:  # one object, left side vs right side
        a = sample_scene(rng, n_objects=1, count=1, weights=weights)
        o = a.objects[0]
        side = choice(rng, ("left", "right"))
        a = replace(a, objects=(modify(o, position=side),))
        other = "right" if side == "left" else "left"
        b = replace(a, objects=(modify(a.objects[0], position=other),))
        return a, b, {"position"}, "position"
    a = sample_scene(rng, n_objects=2, count=1, weights=weights)  # A left of B vs A right of B
    o1, o2 = a.objects
    b = replace(a, objects=(modify(o1, position=o2.position), modify(o2, position=o1.position)))
    return a, b, {"relation"}, "relation"


def _color_pair(rng: np.random.Generator, index: int, weights: Weights = None) -> Pair:
    a = sample_scene(rng, n_objects=2, count=1, weights=weights)
    o1, o2 = a.objects
    taken = {(o1.shape, o1.color)}
    allowed = [c for c in COLORS if weights is None or weights["color"].get(c, 0) > 0]
    colors = [c for c in allowed if c != o2.color and (o2.shape, c) not in taken]
    b = replace(a, objects=(o1, replace(o2, color=choice(rng, colors))))
    return a, b, set(), "color"


def _glyph_pair(rng: np.random.Generator, index: int, weights: Weights = None) -> Pair:
    a = sample_scene(rng, n_objects=1, count=1, weights=weights)
    o = a.objects[0]
    g1 = choice(rng, GLYPHS)
    a = replace(a, objects=(modify(o, glyph=g1),))
    b = replace(a, objects=(modify(a.objects[0], glyph=_other(rng, GLYPHS, g1)),))
    return a, b, {"glyph"}, "glyph"


def _view_pair(rng: np.random.Generator, index: int, weights: Weights = None) -> Pair:
    a = sample_scene(rng, n_objects=1, count=1, weights=weights)
    b = replace(a, view=_other(rng, VIEWS, a.view))
    return a, b, {"view"}, "view"


# MMVP-VLM pattern -> maker of two scenes that differ in exactly the attribute of the pattern,
# in the order the official script reports the patterns (eval.mmvp.PATTERNS; a test keeps them equal)
PAIR_MAKERS: dict[str, Callable[[np.random.Generator, int, Weights], Pair]] = {
    "Orientation and Direction": _one_attribute_pair("orientation", ORIENTATIONS, ORIENTED_SHAPES),
    "Presence of Specific Features": _dot_pair,
    "State and Condition": _one_attribute_pair("state", STATES),
    "Quantity and Count": _count_pair,
    "Positional and Relational Context": _position_pair,
    "Color and Appearance": _color_pair,
    "Structural Characteristics": _one_attribute_pair("size", SIZES),
    "Texts": _glyph_pair,
    "Viewpoint and Perspective": _view_pair,
}
MMVP_TYPES: tuple[str, ...] = tuple(PAIR_MAKERS)


def mmvp_pair(rng: np.random.Generator, pattern: str, index: int, weights: Weights = None) -> Pair:
    """Two scenes that differ in exactly the attribute of ``pattern``; the attribute named."""
    if pattern not in PAIR_MAKERS:
        raise ValueError(f"unknown MMVP pattern {pattern!r}; known: {MMVP_TYPES}")
    return PAIR_MAKERS[pattern](rng, index, weights)


def color_weights(colors: Sequence[str] | None) -> Weights:
    """``sample_scene`` weights that draw colours uniformly from ``colors`` (None: every colour, no weights)."""
    if colors is None:
        return None
    colors = list(dict.fromkeys(colors))
    unknown = [c for c in colors if c not in COLORS]
    if unknown or len(colors) < 2:
        raise ValueError(f"need at least two known colours, got {colors}; the world's colours: {list(COLORS)}")
    return {"color": {c: (1.0 / len(colors) if c in colors else 0.0) for c in COLORS}}
