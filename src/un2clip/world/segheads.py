"""Every training-free segmentation head on the world's segmentation set, with and without PAMR (issue 28).

The demo's report scores ClearCLIP alone; ``un2clip compare --seg-heads`` scores vanilla, MaskCLIP, SCLIP, ClearCLIP
and NACLIP, each once without PAMR and once with it (10 steps, dilations scaled to the world's 64 px), on every variant's encoder, with the report's geometry and
background threshold (``world.report.SEG_SETTINGS``), beside the two reference points of the same masks on the same
path (all-background, patch-resolution oracle). Metrics: ``seg_heads/<head>`` and ``seg_heads/<head>+pamr`` (mIoU,
%), ``seg_heads/background_mIoU`` and ``seg_heads/oracle_mIoU``; cached per model, remade when the model or the
settings change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from un2clip.world.stages import cached_metrics, made_at

HEADS = ("vanilla", "maskclip", "sclip", "clearclip", "naclip")


@dataclass(frozen=True)
class SegHeadSettings:
    heads: tuple[str, ...] = HEADS
    pamr_steps: int = 10  # the "+pamr" runs
    # SCLIP's and NACLIP's dilations (8, 16) are for images of short side 336-448; the world's segmentation runs at
    # 64 px, so the rings are scaled by 64 / 448 (a dilation of 8 would span an object)
    pamr_dilations: tuple[int, ...] = (1, 2)
    max_images: int | None = None  # None: the world's whole segmentation set


SEG_HEADS_QUICK = SegHeadSettings(heads=("vanilla", "clearclip"), max_images=4)


def head_scores(spec: str, seg_dir: Path, settings: SegHeadSettings, progress: bool) -> dict[str, float]:
    """The metrics of one model (see the module)."""
    from un2clip.eval import seg
    from un2clip.load import load_clip
    from un2clip.world.report import SEG_SETTINGS

    model = load_clip(spec)
    data = seg.load_dataset(seg_dir, max_images=settings.max_images)
    classifier = seg.text_classifier(model, data.classes, data.templates)
    out: dict[str, float] = {}
    for head in settings.heads:
        for suffix, steps in (("", 0), ("+pamr", settings.pamr_steps)):
            s = seg.evaluate(model, data, method=head, classifier=classifier, progress=progress, num_workers=0,
                             pamr_steps=steps, pamr_dilations=settings.pamr_dilations, **SEG_SETTINGS)
            out[f"seg_heads/{head}{suffix}"] = s["mIoU"]
    out.update({f"seg_heads/{k}": s[k] for k in ("background_mIoU", "oracle_mIoU")})  # the same for every head
    return out


def seg_head_results(seed_dir: Path, models: dict[str, str], *, settings: SegHeadSettings, fresh: bool = False,
                     progress: bool = True) -> dict[str, dict[str, float]]:
    """``{model: metrics}`` for each model spec of one seed, on the seed's world (``seed_dir/world/seg``)."""
    seg_dir = seed_dir / "world" / "seg"
    return {name: cached_metrics(seed_dir / "eval" / f"seg_heads_{name}.json",
                                 partial(head_scores, spec, seg_dir, settings, progress),
                                 recipe={"model": made_at(spec), "world": made_at(str(seg_dir)),
                                         "settings": asdict(settings)}, fresh=fresh)
            for name, spec in models.items()}
