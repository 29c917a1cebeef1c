"""Reading a picture back with the world's own renderer: which colour and shape does a decoded sample show?

Two readings, neither with a learned classifier:

- **in place** (:func:`read_in_place`): the sample is compared with its scene rendered once per value of the
  attribute, every other attribute as in the scene; the nearest render, after a light blur that forgives
  a pixel of misplacement, names the value. A sample with the right shape drawn elsewhere, larger, hollow
  or twice counts as wrong here: this reading asks for the whole scene back.
- **anywhere** (:func:`read_anywhere`): each pixel takes the nearest of the world's inks (background,
  the six colours and their edge mixes, glyph ink); the most frequent colour names the colour, and the
  largest connected blob of it, holes filled and sampled about its centroid at its own scale, is matched to
  the same outline of every shape the renderer draws in every size, place, height, orientation and view;
  the nearest names the shape. Colour and shape only, wherever and however
  the sample draws them: what "the decoded sample shows the input's colour and shape" asks.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from un2clip.world.render import BACKGROUND, GLYPH_INK, render, render_with_mask
from un2clip.world.scenes import (
    COLORS,
    JITTER_Y,
    ORIENTATIONS,
    ORIENTED_SHAPES,
    POSITION_X,
    POSITIONS,
    SHAPES,
    SIZES,
    VIEWS,
    Y_WITH_GLYPH,
    Scene,
    WorldObject,
)

JUDGED = ("color", "shape")
BLUR_RADIUS = 1.0


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(BLUR_RADIUS)), dtype=np.float32)


def _nearest(target: np.ndarray, scene: Scene, obj: WorldObject, attribute: str, values: Sequence[str],
             size: int) -> str:
    errors = []
    for value in values:
        changed = replace(obj, **{attribute: value})
        if attribute == "shape":  # only triangles and arrows point somewhere
            oriented = value in ("triangle", "arrow")
            changed = replace(changed, orientation=(obj.orientation or "up") if oriented else None)
        errors.append(float(((target - _pixels(render(replace(scene, objects=(changed,)), size))) ** 2).mean()))
    return values[int(np.argmin(errors))]


def read_in_place(sample: Image.Image, scene: Scene) -> dict[str, str]:
    """The colour, then the shape (rendered in the colour shown), that ``sample`` shows of the scene's single
    object; every other attribute is taken from the scene."""
    if len(scene.objects) != 1:
        raise ValueError("only single-object scenes are judged")
    size, obj, target = sample.size[0], scene.objects[0], _pixels(sample)
    color = _nearest(target, scene, obj, "color", list(COLORS), size)
    shape = _nearest(target, scene, replace(obj, color=color), "shape", list(SHAPES), size)
    return {"color": color, "shape": shape}


# -- anywhere: colour by ink, shape by the blob's outline ------------------------------------------------
INKS = (BACKGROUND, *COLORS.values(), GLYPH_INK)  # index 0 background, 1..6 the colours, 7 glyph and dot ink
COLOR_NAMES = tuple(COLORS)
CROP = 16  # side of the grid a blob's outline is compared on
SPAN = 2.0  # the grid reaches this many spreads from the centroid each way
EDGE_MIXES = (1.0, 0.65, 0.35)  # an ink's share in the pixels an edge shares with the background


@functools.lru_cache(maxsize=1)
def _palette() -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) colours and (P,) ink index: every ink, and its mixes with the background at an edge (so the
    anti-aliased rim of a thin red outline reads red, not purple)."""
    colors, index = [], []
    for i, ink in enumerate(INKS):
        for share in EDGE_MIXES[:1] if i == 0 else EDGE_MIXES:
            colors.append([share * c + (1 - share) * b for c, b in zip(ink, BACKGROUND)])
            index.append(i)
    return np.asarray(colors, dtype=np.float32), np.asarray(index)


def _inks(image: Image.Image) -> np.ndarray:
    """(H, W) index of the ink nearest to every pixel (edge mixes count as their ink)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colors, index = _palette()
    # |x - c|^2 less |x|^2 (the same for every c): the nearest c
    return index[((colors ** 2).sum(1) - 2 * rgb @ colors.T).argmin(-1)]


# neighbour offsets (dy, dx) of a pixel, itself included, for 8- and 4-connectivity
NEIGHBOURS = {8: tuple(itertools.product((-1, 0, 1), repeat=2)), 4: ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))}


def label_components(mask: np.ndarray, *, connectivity: int = 8) -> np.ndarray:
    """(H, W) int64 labels of the connected components of a boolean mask: every pixel of a component holds 1 +
    the raster index (row-major) of the component's first pixel, 0 off the mask. Whole-array steps: each pixel
    takes the smallest label among its neighbours on the mask, then the label its label's pixel holds (a label
    names a pixel of the same component, so this jumps along chains), until none changes."""
    if connectivity not in NEIGHBOURS:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    off = h * w + 1  # larger than every label: never the minimum of a pixel on the mask
    labels = np.where(mask, np.arange(1, h * w + 1, dtype=np.int64).reshape(h, w), off)
    while True:
        padded = np.pad(labels, 1, constant_values=off)
        shifted = [padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in NEIGHBOURS[connectivity]]
        lowest = np.where(mask, np.minimum.reduce(shifted), off)
        flat = np.append(lowest.ravel(), off)  # index off - 1 = h * w reads off again
        lowest = flat[lowest - 1]  # the label held by the pixel each label names: never larger
        if np.array_equal(lowest, labels):
            return np.where(mask, labels, 0)
        labels = lowest


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (all False when the mask is); of equal ones, the one
    whose first pixel comes first in raster order."""
    labels = label_components(mask, connectivity=8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if not sizes.any():
        return np.zeros_like(mask, dtype=bool)
    return labels == int(sizes.argmax())  # argmax: the smallest label, i.e. the earliest first pixel, of ties


def _holes_filled(blob: np.ndarray) -> np.ndarray:
    """``blob`` with every pixel the image border cannot reach around it (4-connected) added: the inside of a
    hollow shape and a dot in it."""
    around = label_components(~np.asarray(blob, dtype=bool), connectivity=4)
    border = np.concatenate([around[0], around[-1], around[:, 0], around[:, -1]])
    return ~np.isin(around, border[border > 0])


def _outline(blob: np.ndarray) -> np.ndarray:
    """The blob, holes filled, sampled on a CROP x CROP grid centred on its centroid and scaled by its spread (the
    root mean square distance of its pixels from the centroid): its outline whatever its place, size and state,
    its aspect kept, and steadier than a bounding box against a pixel more or less at an edge."""
    blob = _holes_filled(blob).astype(np.float32)
    ys, xs = np.nonzero(blob)
    cy, cx = ys.mean(), xs.mean()
    spread = max(float(np.sqrt(((ys - cy) ** 2 + (xs - cx) ** 2).mean())), 0.5)
    grid = np.linspace(-SPAN, SPAN, CROP) * spread
    py, px = np.meshgrid(cy + grid, cx + grid, indexing="ij")
    y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
    fy, fx = py - y0, px - x0
    padded = np.pad(blob, 1)  # bilinear samples; outside the image reads 0

    def at(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return padded[np.clip(y + 1, 0, padded.shape[0] - 1), np.clip(x + 1, 0, padded.shape[1] - 1)]

    return ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1) + fy * (1 - fx) * at(y0 + 1, x0)
            + fy * fx * at(y0 + 1, x0 + 1))


# centre heights: the plain one and the one above a glyph, each with the sampler's jitter either way (a tilted
# view draws the same object differently a pixel higher)
HEIGHTS = tuple(base + d for base in (0.5, Y_WITH_GLYPH) for d in (-JITTER_Y, 0.0, JITTER_Y))


@functools.lru_cache(maxsize=4)
def _outlines(size: int) -> tuple[tuple[str, np.ndarray], ...]:
    """(shape, outline) of every single object the world draws: each shape in every size, place, height and
    orientation, straight and tilted, from the renderer's own object mask (its whole region, whatever the colour,
    state or dot) at ``size`` pixels."""
    out = []
    for shape in SHAPES:
        orientations = ORIENTATIONS if shape in ORIENTED_SHAPES else (None,)
        for orientation, obj_size, position, y, view in itertools.product(orientations, SIZES, POSITIONS, HEIGHTS,
                                                                          VIEWS):
            obj = WorldObject(shape=shape, color="blue", size=obj_size, position=position, orientation=orientation,
                              x=POSITION_X[position], y=y)
            mask = render_with_mask(Scene(objects=(obj,), view=view), size)[1] > 0
            if mask.any():
                out.append((shape, _outline(mask)))
    return tuple(out)


def read_anywhere(sample: Image.Image) -> dict[str, str | None]:
    """The colour and shape ``sample`` shows, wherever, at whatever size and in whatever style it draws them
    (None for both when no pixel is nearer to a colour than to the background and the glyph ink)."""
    inks = _inks(sample)
    counts = np.bincount(inks.ravel(), minlength=len(INKS))[1:1 + len(COLORS)]
    if counts.sum() == 0:
        return {"color": None, "shape": None}
    color = COLOR_NAMES[int(counts.argmax())]
    outline = _outline(_largest_blob(inks == 1 + int(counts.argmax())))
    errors = [(float(((outline - ref) ** 2).mean()), shape) for shape, ref in _outlines(sample.size[0])]
    return {"color": color, "shape": min(errors)[1]}


def percent_matching(samples: Sequence[Image.Image], scenes: Sequence[Scene]) -> dict[str, float]:
    """Per cent of samples whose colour, shape, and both, are those of their scene: ``color``, ``shape``, ``both``
    read in place (every other attribute as in the scene), ``anywhere_*`` read wherever and however drawn."""
    if not samples or len(samples) != len(scenes):
        raise ValueError(f"need one scene per sample, got {len(samples)} samples and {len(scenes)} scenes")
    out = {}
    for prefix, read in (("", read_in_place), ("anywhere_", lambda s, sc: read_anywhere(s))):
        seen = [read(s, sc) for s, sc in zip(samples, scenes)]
        hits = {a: [v[a] == getattr(sc.objects[0], a) for v, sc in zip(seen, scenes)] for a in JUDGED}
        both = [c and s for c, s in zip(hits["color"], hits["shape"])]
        out.update({f"{prefix}{a}": 100.0 * float(np.mean(h)) for a, h in hits.items()})
        out[f"{prefix}both"] = 100.0 * float(np.mean(both))
    return out


def scene_from_record(record: dict) -> Scene:
    """A scene back from a row of a split's ``attributes.jsonl``."""
    objects = tuple(WorldObject(**o) for o in record["objects"])
    return Scene(objects=objects, count=int(record["count"]), view=record["view"],
                 noise_seed=int(record["noise_seed"]))


def single_object_scenes(split: str | Path, n: int) -> list[tuple[Path, Scene]]:
    """The first ``n`` single-object scenes of a written split (``world/val``): (image path, scene)."""
    split = Path(split)
    found = []
    with (split / "attributes.jsonl").open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["count"] == 1 and len(record["objects"]) == 1:
                found.append((split / record["image"], scene_from_record(record)))
                if len(found) == n:
                    break
    if not found:
        raise ValueError(f"{split} holds no single-object scene")
    return found


def reconstruction_match(model, decoder, split: str | Path, *, n: int = 100, seed: int = 0,
                         num_inference_steps: int = 50, guidance_scale: float = 1.0,
                         progress: bool = False) -> dict[str, float]:
    """Decode the first ``n`` single-object images of ``split`` from ``model``'s embeddings through ``decoder``
    (classifier-free guidance at ``guidance_scale``; 1: none) and judge the samples: ``recon/color``,
    ``recon/shape``, ``recon/both`` (%)."""
    import torch

    from un2clip.eval.decoder.reconstruct import reconstructions

    pairs = single_object_scenes(split, n)
    images = [Image.open(path).convert("RGB") for path, _ in pairs]
    decoded = reconstructions([model], decoder, images, seed=seed, num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, batch_size=len(images), progress=progress)[1]  # (N, 3, H, W) in [-1, 1]
    side = images[0].size[0]
    as_uint8 = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    samples = [Image.fromarray(a).resize((side, side), Image.Resampling.BILINEAR) for a in as_uint8]
    return {f"recon/{k}": v for k, v in percent_matching(samples, [s for _, s in pairs]).items()}
