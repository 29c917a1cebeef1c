"""The shapes world's versions of CLIP's downstream uses, written in the layouts real data sets have.

- ``detect/``: multi-object scenes with a COCO-format ``annotations.json`` (a box per object, classes
  colour + shape, six of the 36 marked novel) and ``images/``: what ``un2clip eval detect`` reads.

Each writer draws from its own random stream of the world seed. Pure PIL + numpy.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from un2clip.world.render import render, render_with_mask
from un2clip.world.scenes import COLORS, SHAPES, Scene, sample_scene, split_rng
from un2clip.world.words import ZEROSHOT_TEMPLATES

DETECT_SIZE = 64  # px: two objects side by side, each crop still a few patches of the tiny CLIP


def detect_classes() -> list[str]:
    """The 36 detection classes, colour + shape ("red circle"), colour-major."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def novel_detect_classes() -> list[str]:
    """Six classes held out as novel: one per colour and one per shape (a Latin-square diagonal)."""
    colors = list(COLORS)
    return [f"{colors[k]} {SHAPES[k]}" for k in range(min(len(colors), len(SHAPES)))]


def object_box(scene: Scene, index: int, size: int) -> list[int]:
    """[x, y, w, h] in pixels of object ``index`` of a straight-view scene: the box of its drawn pixels."""
    alone = replace(scene, objects=(scene.objects[index],), count=1)
    _, mask = render_with_mask(alone, size)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise ValueError(f"object {index} of the scene draws no pixels at {size} px")
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def write_detect(root: Path, seed: int, n: int, size: int = DETECT_SIZE) -> Path:
    """``root/detect/``: ``n`` scenes of one or two filled objects, ``annotations.json`` (COCO format, categories
    carrying ``split`` base/novel), ``images/``, ``novel.txt``, ``templates.txt``."""
    folder = root / "detect"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    classes, novel = detect_classes(), set(novel_detect_classes())
    cat_id = {name: k + 1 for k, name in enumerate(classes)}
    rng = split_rng(seed, "detect")
    images, annotations = [], []
    for i in range(n):
        scene = sample_scene(rng, filled_only=True, allow_glyph=False, view="straight")
        name = f"{i:06d}.png"
        render(scene, size).save(folder / "images" / name, format="PNG")
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for k, obj in enumerate(scene.objects):
            box = object_box(scene, k, size)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": cat_id[f"{obj.color} {obj.shape}"], "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": cat_id[c], "name": c, "split": "novel" if c in novel else "base"} for c in classes]
    coco = {"info": {"description": "shapes world detection set", "seed": seed}, "images": images,
            "annotations": annotations, "categories": categories}
    (folder / "annotations.json").write_text(json.dumps(coco) + "\n", encoding="utf-8")
    (folder / "novel.txt").write_text("".join(c + "\n" for c in novel_detect_classes()), encoding="utf-8")
    (folder / "templates.txt").write_text("\n".join(ZEROSHOT_TEMPLATES) + "\n", encoding="utf-8")
    return folder



def write_downstream(root: Path, seed: int, *, n_detect: int = 40) -> None:
    """Write the downstream sets of a world (a count of 0 leaves that set out)."""
    if n_detect:
        write_detect(root, seed, n_detect)


def ensure_downstream(world: Path) -> None:
    """Write the downstream sets a world made before they existed lacks (seed from its world.json)."""
    params = json.loads((world / "world.json").read_text(encoding="utf-8"))
    seed = int(params["seed"])
    if "n_detect" not in params and not (world / "detect" / "annotations.json").is_file():
        write_detect(world, seed, 40)
