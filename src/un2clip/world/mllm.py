"""The shapes world's question sets for a LLaVA: training conversations and MLLM benchmarks.

Written by ``un2clip world generate --mllm`` under ``mllm/``, each part from its own random streams (the world's
other outputs do not change):

- ``pretrain.json``: LLaVA stage-1 data, one per train image: ``<image>`` + a brief-description request, the
  caption as answer (the train split's own caption, so what captions name is what stage 1 teaches).
- ``instruct.json`` + ``images/``: stage-2 conversations, three questions a scene about colour, shape, count,
  position, size, orientation, state, dot, glyph, relation and view, answered with one word or with the letter of
  an option (MMVP's ``(a)`` style as the MMVP prompt has it, no instruction after the options, and CV-Bench's ``(A)``
  style with LLaVA-1.5's instruction to answer with the letter). With talk
  colours, questions on attributes other than colour and shape are asked only of objects in talk colours (scene
  attributes: only when every object is), as the captions name them there. The scenes come in pairs that differ
  in one attribute (the MMVP-MLLM patterns), both asked first the one question whose right answer differs, so
  that the words of a question never tell its answer (``contrastive=False``: every scene drawn alone, the first
  version, where e.g. "does ... have a dot?" was answered "no" 70 % of the time).
- ``mmvp/``: a world MMVP-MLLM in the release layout (``Questions.csv``: Index, Question, Options, Correct Answer;
  ``MMVP Images/<Index>.jpg``): pairs of scenes that differ in one attribute, one question, different right
  answers; the silent colours (``mmvp_colors``). ``pairs.jsonl`` names each pair's attribute.
- ``mmvp-talk/``: the same kinds of pairs in the talk colours (the control), when there are two or more.
- ``cvbench/``: a world CV-Bench in the release layout (``test_2d.jsonl``, ``test_3d.jsonl``, ``img/``): Count
  and Relation (2D), Depth (which object is nearer the camera; objects drawn at depths as in ``depth/``) and
  Distance (which of two objects is nearer a third, measured in the image plane) (3D), lettered choices.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from un2clip.world.downstream import DEPTH_RANGE, render_depth
from un2clip.world.pairs import MMVP_TYPES, PAIR_MAKERS, color_weights
from un2clip.world.render import render
from un2clip.world.scenes import (
    COLORS,
    GLYPHS,
    ORIENTATION_WORDS,
    ORIENTED_SHAPES,
    PLURALS,
    SHAPES,
    STATE_WORDS,
    Scene,
    WorldObject,
    choice,
    sample_scene,
    split_rng,
    uniform,
)

OPEN_SUFFIX = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's short-answer instruction
LETTER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."  # LLaVA-1.5's, CV-Bench's
CAPTION_REQUEST = "<image>\nDescribe the image briefly."
QUESTIONS_PER_SCENE = 3
CVBENCH_TASKS = (("Count", "2D"), ("Relation", "2D"), ("Depth", "3D"), ("Distance", "3D"))
CVBENCH_SOURCES = {"2D": "shapes-world-2d", "3D": "shapes-world-3d"}

# a question: (attribute, question text, the options, the index of the right one)
Question = tuple[str, str, tuple[str, ...], int]


# ----------------------------------------------------------------------------- words of one scene

def _name(obj: WorldObject) -> str:
    return f"the {obj.color} {obj.shape}"


def _count_of(scene: Scene, shape: str) -> int:
    return sum(o.shape == shape for o in scene.objects)


def _colour_ref(scene: Scene, obj: WorldObject) -> str:
    """How to point at ``obj`` without its colour: its shape, with its side when another object shares it."""
    if sum(o.shape == obj.shape for o in scene.kinds) > 1:
        return f"the {obj.shape} on the {obj.position}"
    return f"the {obj.shape}"


def object_questions(scene: Scene, obj: WorldObject) -> list[Question]:
    """Questions about one object of ``scene`` (one of its kinds), each with options and the right one."""
    colours = tuple(COLORS)
    qs: list[Question] = [("color", f"what color is {_colour_ref(scene, obj)}?", colours, colours.index(obj.color))]
    if sum(o.color == obj.color for o in scene.kinds) == 1:
        qs.append(("shape", f"what shape is the {obj.color} object?", SHAPES, SHAPES.index(obj.shape)))
    name = _name(obj)
    qs.append(("size", f"is {name} small or large?", ("small", "large"), ("small", "large").index(obj.size)))
    if scene.count == 1:
        sides = ("left", "center", "right")
        where = {"left": "left", "middle": "center", "right": "right"}[obj.position]
        qs.append(("position", f"where is {name}?", sides, sides.index(where)))
    if obj.orientation is not None:
        words = tuple(ORIENTATION_WORDS.values())
        qs.append(("orientation", f"which way does {name} point?", words, words.index(ORIENTATION_WORDS[obj.orientation])))
    states = (STATE_WORDS["filled"], STATE_WORDS["outlined"])
    qs.append(("state", f"is {name} solid or hollow?", states, states.index(STATE_WORDS[obj.state])))
    qs.append(("dot", f"does {name} have a dot?", ("yes", "no"), 0 if obj.dot else 1))
    labels = (*GLYPHS, "none")
    qs.append(("glyph", f"what label is below {name}?", labels, labels.index(obj.glyph or "none")))
    return qs


def scene_questions(scene: Scene) -> list[Question]:
    """Questions about the whole scene: how many, left or right of, the view."""
    kind = scene.kinds[0]
    n = _count_of(scene, kind.shape) if scene.count == 1 else scene.count
    qs: list[Question] = [("count", f"how many {PLURALS[kind.shape]} are there?", ("one", "two"), n - 1)]
    if scene.count == 1 and len(scene.objects) == 2:
        a, b = scene.objects
        side = "left" if a.x < b.x else "right"
        qs.append(("relation", f"is {_name(a)} to the left or to the right of {_name(b)}?", ("left", "right"),
                   ("left", "right").index(side)))
    qs.append(("view", "is the view straight or tilted?", ("straight", "tilted"), ("straight", "tilted").index(scene.view)))
    return qs


def ask(question: Question, rng: np.random.Generator, style: str) -> tuple[str, str]:
    """(prompt, answer) of a question in ``style``: ``open`` (the word), ``mmvp`` (``(a) x (b) y``, the letter) or
    ``cvbench`` (``(A) x`` lines, the letter); the two lettered styles show the right option and one other, or
    all of a short list, in a random order."""
    _, text, options, right = question
    if style == "open":
        return text + OPEN_SUFFIX, options[right]
    shown = list(options) if len(options) <= 4 else [options[right], choice(rng, [o for o in options
                                                                                  if o != options[right]])]
    order = _shuffled(rng, shown)
    k = order.index(options[right])
    if style == "mmvp":  # MMVP's own prompt: the question, a space, the options; nothing after them
        return text + " " + " ".join(f"({chr(97 + i)}) {o}" for i, o in enumerate(order)), chr(97 + k)
    if style == "cvbench":
        lines = "\n".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(order))
        return f"{text} Select from the following choices.\n{lines}{LETTER_SUFFIX}", chr(65 + k)
    raise ValueError(f"question style must be open, mmvp or cvbench, got {style!r}")


def _shuffled(rng: np.random.Generator, items: Sequence) -> list:
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        j = min(int(rng.random() * (i + 1)), i)
        items[i], items[j] = items[j], items[i]
    return items


def conversation(scene: Scene, rng: np.random.Generator, *, talk_colors: Sequence[str] = (),
                 n_questions: int = QUESTIONS_PER_SCENE) -> list[dict]:
    """LLaVA turns of ``n_questions`` distinct questions about ``scene`` (the first with ``<image>``).

    With ``talk_colors``, only colour and shape are asked of objects in other colours (scene attributes only when
    every object is in a talk colour)."""
    talk = set(talk_colors)
    pool: list[Question] = []
    for obj in scene.kinds:
        for q in object_questions(scene, obj):
            if not talk or obj.color in talk or q[0] in ("color", "shape"):
                pool.append(q)
    if not talk or all(o.color in talk for o in scene.objects):
        pool += scene_questions(scene)
    picked = _shuffled(rng, pool)[:n_questions]
    turns = []
    for k, q in enumerate(picked):
        prompt, answer = ask(q, rng, choice(rng, ("open", "mmvp", "cvbench")))
        turns += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + prompt}, {"from": "gpt", "value": answer}]
    return turns


# ----------------------------------------------------------------------------- MMVP-MLLM pairs

def pair_question(attribute: str, a: Scene, b: Scene) -> tuple[str, tuple[str, str], tuple[int, int]]:
    """The one question of an MMVP pair on ``attribute`` (as ``mmvp_pairs`` names it): text, two options, the
    right option of each scene (different by construction)."""
    oa, ob = a.objects[-1], b.objects[-1]  # the object that changes (the colour pair changes the second)
    name = _name(a.objects[0])
    if attribute == "orientation":
        opts = (ORIENTATION_WORDS[oa.orientation], ORIENTATION_WORDS[ob.orientation])
        return f"which way does {name} point?", opts, (0, 1)
    if attribute == "dot":
        return f"does {name} have a dot?", ("yes", "no"), (0 if oa.dot else 1, 0 if ob.dot else 1)
    if attribute == "state":
        opts = (STATE_WORDS["filled"], STATE_WORDS["outlined"])
        return f"is {name} solid or hollow?", opts, (opts.index(STATE_WORDS[oa.state]), opts.index(STATE_WORDS[ob.state]))
    if attribute == "count":
        return f"how many {PLURALS[oa.shape]} are there?", ("one", "two"), (a.count - 1, b.count - 1)
    if attribute == "position":
        return f"is {name} on the left or on the right?", ("left", "right"), (
            ("left", "right").index(oa.position), ("left", "right").index(ob.position))
    if attribute == "relation":
        first, second = a.objects
        side = lambda s: 0 if s.objects[0].x < s.objects[1].x else 1  # noqa: E731
        return (f"is {_name(first)} to the left or to the right of {_name(second)}?", ("left", "right"),
                (side(a), side(b)))
    if attribute == "color":
        return f"what color is {_colour_ref(a, oa)}?", (oa.color, ob.color), (0, 1)
    if attribute == "size":
        return f"is {name} small or large?", ("small", "large"), (
            ("small", "large").index(oa.size), ("small", "large").index(ob.size))
    if attribute == "glyph":
        return f"what label is below {name}?", (oa.glyph, ob.glyph), (0, 1)
    if attribute == "view":
        return "is the view straight or tilted?", ("straight", "tilted"), (
            ("straight", "tilted").index(a.view), ("straight", "tilted").index(b.view))
    raise ValueError(f"no MMVP-MLLM question for attribute {attribute!r}")


ORDER_STREAM = 100  # the stream of option orders in an MMVP-MLLM split (the pattern streams are 0, 1, ...)


def write_mmvp_mllm(folder: Path, seed: int, pairs: Sequence[dict], *, split: str, image_size: int) -> int:
    """One world MMVP-MLLM set in the release layout from ``pairs`` (records of ``evalsets.mmvp_pairs`` drawn with
    ``split``); returns the number of questions."""
    images = folder / "MMVP Images"
    images.mkdir(parents=True, exist_ok=True)
    order_rng = split_rng(seed, split, ORDER_STREAM)
    rows = []
    with open(folder / "pairs.jsonl", "w", encoding="utf-8") as fj:
        for k, rec in enumerate(pairs):
            a, b = rec["scenes"]
            text, options, right = pair_question(rec["attribute"], a, b)
            if right[0] == right[1]:
                raise AssertionError(f"pair {k} ({rec['attribute']}) has one right answer for both images")
            if order_rng.random() < 0.5:
                options, right = options[::-1], (1 - right[0], 1 - right[1])
            opts = f"(a) {options[0]} (b) {options[1]}"
            for j, (scene, r) in enumerate(zip((a, b), right)):
                index = 2 * k + j + 1
                render(scene, image_size).save(images / f"{index}.jpg", format="JPEG", quality=95)
                rows.append([index, text[0].upper() + text[1:], opts, f"({'ab'[r]})"])
            fj.write(json.dumps({"indices": [2 * k + 1, 2 * k + 2], "type": rec["type"], "attribute": rec["attribute"],
                                 "question": text, "options": list(options), "answers": list(right),
                                 "scenes": [a.to_record(), b.to_record()]}, sort_keys=True) + "\n")
    with open(folder / "Questions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["Index", "Question", "Options", "Correct Answer"])
        w.writerows(rows)
    return len(rows)


# ----------------------------------------------------------------------------- CV-Bench

def _two_objects(rng: np.random.Generator, **kwargs) -> Scene:
    while True:
        scene = sample_scene(rng, n_objects=2, count=1, **kwargs)
        if len(scene.objects) == 2:
            return scene


def _count_item(rng: np.random.Generator) -> tuple[Scene, str, list[str], int]:
    scene = sample_scene(rng)
    present = sorted({o.shape for o in scene.objects})
    shape = choice(rng, present) if rng.random() < 0.75 else choice(rng, [s for s in SHAPES if s not in present])
    n = sum(o.shape == shape for o in scene.objects)
    choices = ["0", "1", "2", "3"]
    return scene, f"How many {PLURALS[shape]} are in the image?", choices, choices.index(str(n))


def _relation_item(rng: np.random.Generator) -> tuple[Scene, str, list[str], int]:
    scene = _two_objects(rng)
    a, b = _shuffled(rng, scene.objects)
    question = (f"Considering the relative positions of {_name(a)} and {_name(b)} in the image, where is "
                f"{_name(a)} located with respect to {_name(b)}?")
    return scene, question, ["left", "right"], 0 if a.x < b.x else 1


def _depth_item(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, list[str], int]:
    while True:
        scene = _two_objects(rng, filled_only=True, allow_glyph=False, view="straight")
        depths = (uniform(rng, *DEPTH_RANGE), uniform(rng, *DEPTH_RANGE))
        if max(depths) / min(depths) >= 1.3:
            break
    image, _ = render_depth(scene, depths, size)
    order = _shuffled(rng, [0, 1])
    names = [_name(scene.objects[k]) for k in order]
    near = order.index(int(np.argmin(depths)))
    return image, f"Which object is closer to the camera taking this photo, {names[0]} or {names[1]}?", names, near


def _distance_item(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, list[str], int]:
    """Three small objects at random places; which of two is nearer the third (in the image plane)."""
    while True:
        kinds: list[WorldObject] = []
        while len(kinds) < 3:
            shape, color = choice(rng, SHAPES), choice(rng, list(COLORS))
            if all((shape, color) != (k.shape, k.color) for k in kinds):
                kinds.append(WorldObject(shape=shape, color=color, size="small",
                                         orientation=choice(rng, tuple(ORIENTATION_WORDS)) if shape in ORIENTED_SHAPES
                                         else None))
        xy = [(uniform(rng, 0.2, 0.8), uniform(rng, 0.2, 0.8)) for _ in kinds]
        d = {(i, j): float(np.hypot(xy[i][0] - xy[j][0], xy[i][1] - xy[j][1])) for i in range(3) for j in range(3)}
        apart = all(d[i, j] >= 0.34 for i in range(3) for j in range(i + 1, 3))
        if apart and max(d[0, 1], d[0, 2]) / min(d[0, 1], d[0, 2]) >= 1.4:
            break
    objs = tuple(replace(k, x=x, y=y) for k, (x, y) in zip(kinds, xy))
    scene = Scene(objects=objs, count=1, view="straight", noise_seed=int(rng.random() * 2**31))
    names = [_name(objs[1]), _name(objs[2])]
    order = _shuffled(rng, [0, 1])
    near = order.index(0 if d[0, 1] < d[0, 2] else 1)
    return (render(scene, size), f"Estimate the distances between the objects in this image. Which object is "
            f"closer to {_name(objs[0])}, {names[order[0]]} or {names[order[1]]}?",
            [names[k] for k in order], near)


def write_cvbench(folder: Path, seed: int, per_task: int, *, image_size: int) -> int:
    """A world CV-Bench in the release layout; returns the number of questions."""
    makers: dict[str, Callable[[np.random.Generator], tuple]] = {
        "Count": lambda r: _count_item(r), "Relation": lambda r: _relation_item(r),
        "Depth": lambda r: _depth_item(r, image_size), "Distance": lambda r: _distance_item(r, image_size)}
    rows: dict[str, list[dict]] = {"2D": [], "3D": []}
    idx = 0
    for t, (task, kind) in enumerate(CVBENCH_TASKS):
        rng = split_rng(seed, "mllm-cvbench", t)
        (folder / "img" / kind / task.lower()).mkdir(parents=True, exist_ok=True)
        for i in range(per_task):
            image, question, choices, answer = makers[task](rng)
            if isinstance(image, Scene):
                image = render(image, image_size)
            filename = f"img/{kind}/{task.lower()}/world_{i:04d}.png"
            image.save(folder / filename, format="PNG")
            rows[kind].append({"idx": idx, "type": kind, "task": task, "question": question, "choices": choices,
                               "answer": f"({chr(65 + answer)})", "filename": filename,
                               "source": CVBENCH_SOURCES[kind]})
            idx += 1
    for kind, name in (("2D", "test_2d.jsonl"), ("3D", "test_3d.jsonl")):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows[kind]), encoding="utf-8")
    return idx


# ----------------------------------------------------------------------------- instruction data

def contrastive_pair(rng: np.random.Generator, talk_colors: Sequence[str] = ()) -> tuple[Scene, Scene, Question, Question]:
    """Two scenes that differ in one attribute (a pattern of ``pairs.PAIR_MAKERS`` drawn uniformly) and the
    one question whose right answer differs between them, as (scene a, scene b, a's question, b's question).

    With two or more ``talk_colors``, the objects of a pair on another attribute than colour take only those
    colours (as :func:`conversation` asks only colour and shape of objects in other colours); colour pairs take
    any colour."""
    pattern = choice(rng, MMVP_TYPES)
    talk = len(set(talk_colors)) >= 2 and pattern != "Color and Appearance"
    weights = color_weights(talk_colors) if talk else None
    a, b, _, attribute = PAIR_MAKERS[pattern](rng, int(rng.random() * 2**16), weights)
    if rng.random() < 0.5:  # which of the two is drawn first says nothing about the answer
        a, b = b, a
    text, options, right = pair_question(attribute, a, b)
    return a, b, (attribute, text, options, right[0]), (attribute, text, options, right[1])


def write_instruct(folder: Path, seed: int, n: int, *, image_size: int, talk_colors: Sequence[str] = (),
                   contrastive: bool = True) -> int:
    """``folder/instruct.json`` + ``folder/images/``: ``n`` scenes, three questions each (:func:`conversation`).

    ``contrastive`` (default): the scenes come in pairs that differ in one attribute, and the first question of
    both is the pair's question, whose right answers differ (as in the MMVP-MLLM pairs): a model that answers from
    the question's words gets one of the two wrong. Each pair's two answers are the template's two values, so
    the answers of a pair template are balanced. Otherwise (the first version) every scene is drawn alone.
    Returns ``n``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    scene_rng, question_rng = split_rng(seed, "mllm-train", 0), split_rng(seed, "mllm-train", 1)
    items: list[tuple[Scene, Question | None]] = []
    while len(items) < n:
        if contrastive:
            a, b, qa, qb = contrastive_pair(scene_rng, talk_colors)
            items += [(a, qa), (b, qb)]
        else:
            items.append((sample_scene(scene_rng), None))
    instruct = []
    for i, (scene, first) in enumerate(items[:n]):
        name = f"images/{i:06d}.png"
        render(scene, image_size).save(folder / name, format="PNG")
        if first is None:
            turns = conversation(scene, question_rng, talk_colors=talk_colors)
        else:
            prompt, answer = ask(first, question_rng, choice(question_rng, ("open", "mmvp", "cvbench")))
            turns = [{"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": answer}]
            more = conversation(scene, question_rng, talk_colors=talk_colors, n_questions=QUESTIONS_PER_SCENE)
            more = [t for q, r in zip(more[0::2], more[1::2]) if q["value"].replace("<image>\n", "") != prompt
                    for t in (q, r)]
            more = more[: 2 * (QUESTIONS_PER_SCENE - 1)]
            more[0] = {**more[0], "value": more[0]["value"].replace("<image>\n", "")}
            turns += more
        instruct.append({"id": f"instruct-{i:06d}", "image": name, "conversations": turns})
    (folder / "instruct.json").write_text(json.dumps(instruct, indent=1) + "\n", encoding="utf-8")
    return n


# ----------------------------------------------------------------------------- all of it

def write_mllm(root: Path, seed: int, *, image_size: int, n_instruct: int, n_cvbench_per_task: int,
               mmvp: Sequence[dict], mmvp_talk: Sequence[dict] | None = None, talk_colors: Sequence[str] = (),
               contrastive: bool = True) -> dict:
    """``root/mllm/``: the LLaVA training files and the world MMVP-MLLM and CV-Bench sets (see the module
    docstring); the train split (``root/train/captions.csv``) must be written already. ``mmvp`` / ``mmvp_talk``: the
    pairs of the two MMVP-MLLM sets (``evalsets.mmvp_pairs`` with the splits ``mllm-mmvp`` / ``mllm-mmvp-talk``).
    ``contrastive``: the instruction scenes come in pairs (see :func:`write_instruct`). Returns the counts."""
    folder = root / "mllm"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "train" / "captions.csv", newline="", encoding="utf-8") as f:
        captions = list(csv.DictReader(f))
    pretrain = [{"id": f"train-{i:06d}", "image": f"../train/{row['image']}",
                 "conversations": [{"from": "human", "value": CAPTION_REQUEST}, {"from": "gpt", "value": row["caption"]}]}
                for i, row in enumerate(captions)]
    (folder / "pretrain.json").write_text(json.dumps(pretrain, indent=1) + "\n", encoding="utf-8")
    write_instruct(folder, seed, n_instruct, image_size=image_size, talk_colors=talk_colors,
                   contrastive=contrastive)
    counts = {"n_pretrain": len(pretrain), "n_instruct": n_instruct, "instruct_pairs": contrastive,
              "n_mmvp_mllm": write_mmvp_mllm(folder / "mmvp", seed, mmvp, split="mllm-mmvp", image_size=image_size)}
    if mmvp_talk:
        counts["n_mmvp_mllm_talk"] = write_mmvp_mllm(folder / "mmvp-talk", seed, mmvp_talk, split="mllm-mmvp-talk",
                                                     image_size=image_size)
    counts["n_cvbench"] = write_cvbench(folder / "cvbench", seed, n_cvbench_per_task, image_size=image_size)
    return counts
