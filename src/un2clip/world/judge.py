"""Reading a picture back with the world's own renderer: which colour and shape does a decoded sample show?

A decoded sample of a single-object scene is compared with the scene rendered once per value of the
attribute (every other attribute as in the scene); the nearest render, after a light blur that
forgives a pixel of misplacement, names the value the sample shows. No learned classifier takes part.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from un2clip.world.render import render
from un2clip.world.scenes import COLORS, SHAPES, Scene, WorldObject

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


def shown(sample: Image.Image, scene: Scene) -> dict[str, str]:
    """The colour, then the shape (rendered in the colour shown), that ``sample`` shows of the scene's single
    object; every other attribute is taken from the scene."""
    if len(scene.objects) != 1:
        raise ValueError("only single-object scenes are judged")
    size, obj, target = sample.size[0], scene.objects[0], _pixels(sample)
    color = _nearest(target, scene, obj, "color", list(COLORS), size)
    shape = _nearest(target, scene, replace(obj, color=color), "shape", list(SHAPES), size)
    return {"color": color, "shape": shape}


def judge(samples: Sequence[Image.Image], scenes: Sequence[Scene]) -> dict[str, float]:
    """Per cent of samples whose colour, shape, and both, are those of their scene."""
    if not samples or len(samples) != len(scenes):
        raise ValueError(f"need one scene per sample, got {len(samples)} samples and {len(scenes)} scenes")
    seen = [shown(s, sc) for s, sc in zip(samples, scenes)]
    hits = {a: [v[a] == getattr(sc.objects[0], a) for v, sc in zip(seen, scenes)] for a in JUDGED}
    both = [c and s for c, s in zip(hits["color"], hits["shape"])]
    return {**{a: 100.0 * float(np.mean(h)) for a, h in hits.items()}, "both": 100.0 * float(np.mean(both))}


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

    from un2clip.eval.reconstruct import reconstructions

    pairs = single_object_scenes(split, n)
    images = [Image.open(path).convert("RGB") for path, _ in pairs]
    decoded = reconstructions([model], decoder, images, seed=seed, num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, batch_size=len(images), progress=progress)[1]  # (N, 3, H, W) in [-1, 1]
    side = images[0].size[0]
    as_uint8 = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    samples = [Image.fromarray(a).resize((side, side), Image.Resampling.BILINEAR) for a in as_uint8]
    return {f"recon/{k}": v for k, v in judge(samples, [s for _, s in pairs]).items()}
