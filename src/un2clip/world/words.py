"""Words of the shapes world: captions, statements, descriptions, templates, class names.

Captions always name the colour and the shape of every object; every other attribute is
named only with probability ``rare_rate`` (each one independently), so a CLIP trained on
these captions has little reason to see those attributes — the blindness un²CLIP is meant
to cure. Words are chosen so that no word serves two attributes: position says "on the left
side" / "in the center" / "on the right side", orientation says "pointing upward /
rightward / downward / leftward", count says "one / two / three" while glyph labels are the
characters themselves ("labeled 7"). :func:`world_vocabulary` lists every word that any
caption, statement, class name or prompt template written here can contain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from un2clip.world.scenes import (
    COLORS,
    COUNT_WORDS,
    GLYPHS,
    OBJECT_ATTRIBUTES,
    ORIENTATION_WORDS,
    ORIENTED_SHAPES,
    PLURALS,
    POSITION_WORDS,
    RELATION_WORDS,
    SCENE_ATTRIBUTES,
    SHAPES,
    SIZES,
    STATE_WORDS,
    VIEWS,
    Scene,
    WorldObject,
    choice,
)

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
MMVP_PROMPT_PREFIX = "a photo of "  # what the MMVP-VLM protocol puts before a statement


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


def caption(scene: Scene, rng: np.random.Generator, rare_rate: float = 0.03, *,
            talk_colors: Iterable[str] = (), talk_rate: float = 0.5) -> str:
    """A training caption: colour and shape always, each other attribute with ``rare_rate``.

    Draws a template and one uniform number per (object, object attribute) and per scene
    attribute from ``rng``; attributes that do not apply (orientation of a circle,
    position of copies, relation of a single object) are never named.

    Context transfer: the attributes of an object whose colour is in ``talk_colors`` are named with
    ``talk_rate`` instead, and so are the scene attributes when every object has such a colour (the
    draws are the same either way, so a world without talk colours is unchanged).
    """
    talk = frozenset(talk_colors)
    template = choice(rng, CAPTION_TEMPLATES)
    per_object = []
    for obj in scene.kinds:
        rate = talk_rate if obj.color in talk else rare_rate
        draws = rng.random(len(OBJECT_ATTRIBUTES))
        per_object.append({a for a, u in zip(OBJECT_ATTRIBUTES, draws) if u < rate})
    rate = talk_rate if talk and all(o.color in talk for o in scene.kinds) else rare_rate
    draws = rng.random(len(SCENE_ATTRIBUTES))
    scene_named = {a for a, u in zip(SCENE_ATTRIBUTES, draws) if u < rate}
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
    texts += [t for task in zeroshot_tasks().values() for t in task["templates"]]
    texts += seg_classes()  # "background", for prompts over the segmentation classes
    return sorted({w for t in texts for w in _words(t)})



BOILERPLATE_CAPTIONS: tuple[str, ...] = ("image", "photo", "untitled", "picture", "img", "photo.jpg")


def world_metadata() -> list[str]:
    """MetaCLIP-style metadata of the world: the attribute phrases its captions can contain.

    Shapes (and plurals), colours, every colour + shape pair, and the words of each rare attribute
    (sizes, solid/hollow, orientations, dot, labels, positions, counts, relations, views).
    """
    entries: list[str] = list(SHAPES) + list(PLURALS.values()) + list(COLORS)
    entries += [f"{c} {s}" for c in COLORS for s in SHAPES]
    entries += list(SIZES) + list(STATE_WORDS.values())
    entries += [f"pointing {w}" for w in ORIENTATION_WORDS.values()]
    entries += ["with a dot", "without a dot", "without a label"] + [f"labeled {g}" for g in GLYPHS]
    entries += list(POSITION_WORDS.values()) + list(RELATION_WORDS.values())
    entries += list(COUNT_WORDS.values()) + [f"{v} view" for v in VIEWS]
    return list(dict.fromkeys(entries))


def seg_classes() -> list[str]:
    """Class names of the segmentation set: index 0 is background, then the shapes."""
    return ["background", *SHAPES]


LSEG_UNSEEN = ("arrow", "cross")  # the shapes an LSeg head never trains on (its zero-shot split)


def lseg_classes(unseen: bool = False) -> list[str]:
    """Class names of the LSeg sets: background, then the seen shapes (train) or the unseen ones."""
    return ["background", *[s for s in SHAPES if (s in LSEG_UNSEEN) == unseen]]


def nouns() -> list[str]:
    """The nouns captions name objects by (GroupViT's multi-label prompts 'a photo of a {noun}')."""
    return list(SHAPES)


# ----------------------------------------------------------------------------- zero-shot
def zeroshot_tasks() -> dict[str, dict]:
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


def swap_groups() -> list[list[str]]:
    """Groups of words that name different values of one attribute, for hard-negative captions: a caption
    with one word swapped within its group describes another scene of the world."""
    return [list(SHAPES), list(PLURALS.values()), list(COLORS), list(SIZES), list(STATE_WORDS.values()),
            list(ORIENTATION_WORDS.values()), list(COUNT_WORDS.values()), list(VIEWS), list(GLYPHS),
            ["left", "right"], ["with", "without"]]


def separation_pairs() -> dict[str, list[tuple[str, str]]]:
    """For each attribute, pairs of captions of one single-object scene (two for "relation") that differ in that
    attribute alone, as :func:`phrase` names it: how well a text tower tells the attribute's words apart.

    Every pair of values, on three (colour, shape) objects (an oriented shape where orientation needs one).
    """
    from itertools import combinations

    bases = [WorldObject("circle", "red"), WorldObject("triangle", "blue", orientation="up"),
             WorldObject("square", "green")]
    values = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "state": tuple(STATE_WORDS),
              "orientation": tuple(ORIENTATION_WORDS), "dot": (True, False), "glyph": GLYPHS,
              "position": tuple(POSITION_WORDS), "count": tuple(COUNT_WORDS), "view": VIEWS}
    pairs: dict[str, list[tuple[str, str]]] = {}
    for attribute, options in values.items():
        named = {attribute} if attribute not in ("shape", "color") else set()
        texts = []
        for base in bases:
            if attribute == "orientation" and base.orientation is None:
                continue
            for value in options:
                if attribute == "count":
                    scene = Scene(objects=(base,) * int(value), count=int(value))
                elif attribute == "view":
                    scene = Scene(objects=(base,), view=value)
                else:
                    obj = replace(base, **{attribute: value})
                    if attribute == "shape":
                        obj = replace(obj, orientation="up" if value in ORIENTED_SHAPES else None)
                    scene = Scene(objects=(obj,))
                texts.append((base, phrase(scene, named)))
        pairs[attribute] = [(a, b) for (ba, a), (bb, b) in combinations(texts, 2) if ba == bb and a != b]
    left, right = WorldObject("circle", "red", x=0.2), WorldObject("square", "blue", x=0.8)
    pairs["relation"] = [(phrase(Scene(objects=(left, right)), {"relation"}),
                          phrase(Scene(objects=(replace(left, x=0.8), replace(right, x=0.2))), {"relation"}))]
    return pairs


WORLD_VOCABULARY: list[str] = world_vocabulary()
