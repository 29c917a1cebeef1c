"""The shapes world's phrase-grounding set, in RefCOCO's layout (what `un2clip train-grounding` and `un2clip eval
grounding` read).

``grounding/``: ``images/<id>.png`` (64 px scenes of two filled objects side by side), ``instances.json`` (COCO
format: a box per object, from the renderer's own pixels) and ``refs(unc).p`` (RefCOCO's pickled refs list: one
ref per object, split train or val, two referring expressions each):

- the attributes: "the small red circle" (size, colour, shape: the two objects differ in shape or colour);
- the relation: "the square to the left of the star" (shapes alone when they differ, else with colours:
  "the red square to the left of the blue square").

Every fifth image is val, the rest train. It draws from its own random stream of the world seed, so it changes
nothing else a world holds; ``grounding/info.json`` records its parameters.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

from un2clip.world.downstream import DETECT_SIZE, object_box
from un2clip.world.render import render
from un2clip.world.scenes import WorldObject, sample_scene, split_rng

GROUNDING_SIZE = DETECT_SIZE  # px: two objects side by side, each a few patches of the tiny CLIP
VAL_EVERY = 5  # image i is val when i % 5 == 4


def attribute_expression(obj: WorldObject) -> str:
    """"the small red circle"."""
    return f"the {obj.size} {obj.color} {obj.shape}"


def relation_expression(obj: WorldObject, other: WorldObject) -> str:
    """"the square to the left of the star": where ``obj`` stands beside ``other`` (colours added when the two
    shapes are the same)."""
    side = "left" if obj.x < other.x else "right"
    if obj.shape == other.shape:
        return f"the {obj.color} {obj.shape} to the {side} of the {other.color} {other.shape}"
    return f"the {obj.shape} to the {side} of the {other.shape}"


def write_grounding(root: Path, seed: int, n: int, size: int = GROUNDING_SIZE) -> Path:
    """``root/grounding/`` with ``n`` scenes (see the module docstring); returns the folder."""
    folder = root / "grounding"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    rng = split_rng(seed, "grounding")
    images, annotations, refs = [], [], []
    for i in range(n):
        scene = sample_scene(rng, n_objects=2, count=1, filled_only=True, allow_glyph=False, view="straight")
        name = f"{i:06d}.png"
        render(scene, size).save(folder / "images" / name, format="PNG")
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        split = "val" if i % VAL_EVERY == VAL_EVERY - 1 else "train"
        for k, obj in enumerate(scene.objects):
            box = object_box(scene, k, size)
            ann_id = len(annotations) + 1
            annotations.append({"id": ann_id, "image_id": i + 1, "category_id": 1, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
            other = scene.objects[1 - k]
            sentences = [attribute_expression(obj), relation_expression(obj, other)]
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": i + 1, "split": split,
                         "category_id": 1, "file_name": name,
                         "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": 2 * len(refs) + j}
                                       for j, s in enumerate(sentences)]})
    coco = {"info": {"description": "shapes world grounding set", "seed": seed}, "images": images,
            "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    (folder / "instances.json").write_text(json.dumps(coco) + "\n", encoding="utf-8")
    with (folder / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    info = {"seed": seed, "n_images": n, "image_size": size, "val_every": VAL_EVERY}
    (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folder


def ensure_grounding(world: Path, n: int = 40) -> Path:
    """The world's grounding set, written first (seed from its world.json) when the world lacks it."""
    folder = world / "grounding"
    if not (folder / "info.json").is_file():
        seed = int(json.loads((world / "world.json").read_text(encoding="utf-8"))["seed"])
        write_grounding(world, seed, n)
    return folder


# -- grounding accuracy in `un2clip compare` ---------------------------------------------------------------


@dataclass(frozen=True)
class GroundingSettings:
    """How `un2clip compare --grounding` measures an encoder: a head trained on the seed's grounding set."""

    n_images: int = 400  # scenes of the set (every fifth val)
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3  # a head from scratch: ten times GLIP's fine-tuning rate
    hidden_dim: int = 64
    proj_dim: int = 32


GROUNDING_QUICK = GroundingSettings(n_images=10, steps=2, batch_size=4, hidden_dim=8, proj_dim=4)
GROUNDING_KEYS = ("accuracy", "recall@5", "recall@10", "accuracy_mean_box")


def _val_metrics(spec: str, data: Path, head: Path, progress: bool) -> dict[str, float]:
    """The grounding metrics of ``head`` on encoder ``spec``, val split of ``data``."""
    from un2clip.eval.downstream.grounding import evaluate
    from un2clip.load import load_clip

    return evaluate(load_clip(spec), data, head=head, split="val", precision="fp32", progress=progress)


def grounding_results(seed_dir: Path, models: dict[str, str], *, seed: int, settings: GroundingSettings,
                      fresh: bool = False, progress: bool = True) -> dict[str, dict[str, float]]:
    """``{model: {"grounding/accuracy": ..., ...}}``: per model a grounding head trained on the frozen encoder
    (cached stage ``seed_dir/grounding/<model>``) and scored on the val split of the seed's grounding set
    (``seed_dir/grounding-set``, drawn from the world seed), evaluations cached in ``seed_dir/eval``."""
    from functools import partial

    from un2clip.world.stages import cached_metrics, done_time, made_at, made_stage, trained_stage

    recipe = {"seed": seed, "n_images": settings.n_images}
    folder = made_stage(seed_dir, "grounding-set", recipe, partial(write_grounding, seed=seed, n=settings.n_images),
                        fresh=fresh)
    data = folder / "grounding"
    out = {}
    for name, spec in models.items():
        fields = {"objective": "grounding", "clip": spec, "data": str(data), "max_steps": settings.steps,
                  "batch_size": settings.batch_size, "lr": settings.lr, "weight_decay": 1e-4, "seed": seed,
                  "save_every": settings.steps, "objective_options": {"hidden_dim": settings.hidden_dim,
                                                                      "proj_dim": settings.proj_dim}}
        run_recipe = {"run": fields, "model": made_at(spec), "set": done_time(folder)}
        cached = seed_dir / "eval" / f"grounding_{name}.json"
        stage_dir, trained = trained_stage(seed_dir / "grounding", name, fields, run_recipe, fresh=fresh,
                                           progress=progress)
        if trained:
            cached.unlink(missing_ok=True)
        metrics = cached_metrics(cached, partial(_val_metrics, spec, data, stage_dir / "run", progress), fresh=fresh)
        out[name] = {f"grounding/{k}": metrics[k] for k in GROUNDING_KEYS}
    return out
