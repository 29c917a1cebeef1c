"""Every training-free segmentation head on the world's segmentation sets, with and without PAMR (issue 28).

The demo's report scores ClearCLIP alone on the shape set; ``un2clip compare --seg-heads`` scores vanilla, MaskCLIP,
SCLIP, ClearCLIP and NACLIP, each once without PAMR and once with it (10 steps, dilations scaled to the world's
64 px), on every variant's encoder, on two sets of the same scenes, with the report's geometry (short side 64,
windows 32 / 16):

- ``seg/`` (objects labelled by shape; metrics ``seg_heads/<head>[+pamr]``): as the report runs it, the word
  "background" a query and background under 0.7;
- ``seg-color/`` (labelled by colour, :func:`un2clip.world.evalsets.write_seg_color`; metrics
  ``segcolor_heads/<head>[+pamr]``): background by the threshold alone (the tiny text tower never read the word
  "background"), each head's threshold the best of 0.3 / 0.5 / 0.7 / 0.9 on the validation world (seed 100) for a
  max-pooled tiny CLIP (docs/world_segmentation.md).

Each set also gives its two reference points (``<prefix>/background_mIoU``, ``<prefix>/oracle_mIoU``); cached per
model, remade when the model, the world or the settings change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from un2clip.world.stages import cached_metrics, made_at

HEADS = ("vanilla", "maskclip", "sclip", "clearclip", "naclip")


# background thresholds of the colour set, per head (without and with PAMR the validation world picked the same)
COLOR_THRESHOLDS = {"vanilla": 0.9, "maskclip": 0.5, "sclip": 0.3, "clearclip": 0.9, "naclip": 0.9}
SETS = {"seg": "seg_heads", "seg-color": "segcolor_heads"}  # world folder -> metric prefix


@dataclass(frozen=True)
class SegHeadSettings:
    heads: tuple[str, ...] = HEADS
    pamr_steps: int = 10  # the "+pamr" runs
    # SCLIP's and NACLIP's dilations (8, 16) are for images of short side 336-448; the world's segmentation runs at
    # 64 px, so the rings are scaled by 64 / 448 (a dilation of 8 would span an object)
    pamr_dilations: tuple[int, ...] = (1, 2)
    max_images: int | None = None  # None: the world's whole segmentation set


SEG_HEADS_QUICK = SegHeadSettings(heads=("vanilla", "clearclip"), max_images=4)


def head_scores(spec: str, world: Path, settings: SegHeadSettings, progress: bool) -> dict[str, float]:
    """The metrics of one model on both sets (see the module)."""
    from un2clip.eval import seg
    from un2clip.load import load_clip
    from un2clip.world.report import SEG_SETTINGS

    model = load_clip(spec)
    out: dict[str, float] = {}
    for folder, prefix in SETS.items():
        data = seg.load_dataset(world / folder, max_images=settings.max_images)
        classifier = seg.text_classifier(model, data.classes, data.templates)
        for head in settings.heads:
            geometry = dict(SEG_SETTINGS)
            if folder == "seg-color":
                geometry.update(prob_threshold=COLOR_THRESHOLDS[head], background_query=False)
            for suffix, steps in (("", 0), ("+pamr", settings.pamr_steps)):
                s = seg.evaluate(model, data, method=head, classifier=classifier, progress=progress, num_workers=0,
                                 pamr_steps=steps, pamr_dilations=settings.pamr_dilations, **geometry)
                out[f"{prefix}/{head}{suffix}"] = s["mIoU"]
        out.update({f"{prefix}/{k}": s[k] for k in ("background_mIoU", "oracle_mIoU")})  # the same for every head
    return out


def seg_head_results(seed_dir: Path, models: dict[str, str], *, settings: SegHeadSettings, fresh: bool = False,
                     progress: bool = True) -> dict[str, dict[str, float]]:
    """``{model: metrics}`` for each model spec of one seed, on the seed's world (``seed_dir/world``; its colour set
    is written first when missing)."""
    import json

    from un2clip.world.evalsets import write_seg_color

    world = seed_dir / "world"
    if not (world / "seg-color" / "classes.txt").is_file():
        meta = json.loads((world / "world.json").read_text(encoding="utf-8"))
        write_seg_color(world, meta["seed"], meta["n_seg"], meta["image_size"], progress=progress)
    recipe = {"world": made_at(str(world / "seg")), "settings": asdict(settings), "thresholds": COLOR_THRESHOLDS}
    return {name: cached_metrics(seed_dir / "eval" / f"seg_heads_{name}.json",
                                 partial(head_scores, spec, world, settings, progress),
                                 recipe={"model": made_at(spec), **recipe}, fresh=fresh)
            for name, spec in models.items()}
