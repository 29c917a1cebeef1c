"""Inference settings per method and dataset, as the methods' own evaluation configs set them.

- vanilla, maskclip, sclip: SCLIP's protocol (its ``configs/cfg_*.py``): short side 336
  (COCO-Stuff 448, Cityscapes 560), sliding window 224 / stride 112, logit scale 40; VOC21
  65 with background threshold 0.1, Context60 and COCO-Object 50 with 0.1. SCLIP's VOC21
  config also drops predicted classes covering under 10% of the foreground
  (``area_threshold``). PAMR off (SCLIP's ``pamr_steps=0``).
- clearclip: ClearCLIP's configs: short side 448, window 448 / stride 224 (Cityscapes
  224 / 224), logit scale 50; background thresholds VOC21 0.5, Context60 0.15, COCO-Object
  0.4; windows zero-padded (centred) to a multiple of the patch as its sliding window does;
  its own single-name class files (``class_names="clearclip"``).
- naclip: NACLIP's configs and its README's main-results command
  (``test_all.sh reduced naclip 5 on``): short side 336 on every benchmark (Cityscapes 560;
  COCO-Stuff 336, unlike SCLIP's 448), sliding window 224 / 112 except VOC21 and VOC20,
  which run the whole image (``slide_crop=0``); logit scale 40; background threshold 0.1 on
  VOC21, Context60, COCO-Object; Gaussian std 5; PAMR on, 10 steps, dilations (8, 16).
  These are the settings of NACLIP's README table (ViT-B/16: VOC21 64.07, PC60 34.99,
  COCO-Object 36.19, VOC20 83.03, Cityscapes 38.27, PC59 38.35, ADE20K 19.05, COCO-Stuff
  25.69 mIoU); ``pamr_steps=0`` gives its PAMR-off variant.

The SCLIP presets are those of SCLIP's README table (ViT-B/16: VOC21 59.63, VOC20 81.54,
PC60 31.74, PC59 34.46, COCO-Object 33.52, COCO-Stuff164k 22.77, Cityscapes 32.34, ADE20K
16.45). Every method but ClearCLIP reads SCLIP's class-name files (synonyms per class,
``class_names="sclip"``); NACLIP ships the same files.

PAMR (``pamr_steps``) uses dilations (8, 16) as SCLIP's and NACLIP's segmentors do
(``pamr_dilations``). Sliding windows are not padded except ClearCLIP's (``pad_windows``);
the whole image (``crop=0``) is never padded: the patch embedding drops the rows and
columns past the last whole patch, as in all three reference repos.

Every value can be overridden: ``resolve_settings(method, dataset, crop=..., ...)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from un2clip.eval.seg.heads import METHODS, get_head

CLASS_NAME_SETS = ("sclip", "clearclip")  # whose class-name files (eval/seg/classes/ and classes/clearclip/)


@dataclass(frozen=True)
class SegSettings:
    """How one method is run on one dataset."""

    short_side: int = 336  # resize so the short side is this (long side at most 2048); 0: keep the size
    crop: int = 224  # sliding-window side; 0: the whole image at once
    stride: int = 112  # sliding-window step
    logit_scale: float = 40.0  # multiplies cosine similarities before the softmax over all names
    prob_threshold: float = 0.0  # pixels whose top class probability is below this become background
    area_threshold: float = 0.0  # classes predicted on less than this fraction of the foreground are dropped
    gaussian_std: float = 5.0  # NACLIP's neighbourhood std, in patches
    pamr_steps: int = 0  # PAMR refinement iterations of the upsampled logits (0: off)
    pamr_dilations: tuple[int, ...] = (8, 16)  # PAMR's neighbourhood rings (SCLIP's and NACLIP's (8, 16))
    pad_windows: bool = False  # zero-pad each sliding window to a multiple of the patch (ClearCLIP) or not
    class_names: str = "sclip"  # shipped class-name files: "sclip" (synonym sets) or "clearclip" (one name each)
    # False: the background class gets no text query; a pixel is background only when its top probability among
    # the other classes is under prob_threshold (GroupViT and TCL also decide background by a threshold on their
    # class scores, not by a query; for words the text tower never learnt)
    background_query: bool = True

    def __post_init__(self) -> None:
        if self.short_side < 0 or self.crop < 0:
            raise ValueError("short_side and crop must be >= 0 (0 turns them off)")
        if self.crop and self.stride <= 0:
            raise ValueError(f"stride must be positive, got {self.stride}")
        if not 0.0 <= self.prob_threshold <= 1.0 or not 0.0 <= self.area_threshold <= 1.0:
            raise ValueError("prob_threshold and area_threshold must lie in [0, 1]")
        if self.pamr_steps < 0:
            raise ValueError(f"pamr_steps must be >= 0, got {self.pamr_steps}")
        if self.gaussian_std <= 0:
            raise ValueError(f"gaussian_std must be positive, got {self.gaussian_std}")
        dilations = tuple(self.pamr_dilations)
        if not dilations or any(not isinstance(d, int) or d <= 0 for d in dilations):
            raise ValueError(f"pamr_dilations must be positive integers, got {self.pamr_dilations!r}")
        object.__setattr__(self, "pamr_dilations", dilations)
        if not self.background_query and self.prob_threshold <= 0:
            raise ValueError("background_query=False (--no-background-query) decides background by prob_threshold "
                             "(--prob-threshold) alone: give it a threshold in (0, 1]")
        if self.class_names not in CLASS_NAME_SETS:
            raise ValueError(f"class_names must be one of {', '.join(CLASS_NAME_SETS)}, got {self.class_names!r}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["pamr_dilations"] = list(self.pamr_dilations)
        return out


SCLIP_BASE = SegSettings()
SCLIP_DATASETS = {
    "voc21": {"logit_scale": 65.0, "prob_threshold": 0.1},
    "context60": {"logit_scale": 50.0, "prob_threshold": 0.1},
    "coco_object": {"logit_scale": 50.0, "prob_threshold": 0.1},
    "coco_stuff": {"short_side": 448},
    "cityscapes": {"short_side": 560},
}
CLEARCLIP_BASE = SegSettings(short_side=448, crop=448, stride=224, logit_scale=50.0, pad_windows=True,
                             class_names="clearclip")
CLEARCLIP_DATASETS = {
    "voc21": {"prob_threshold": 0.5},
    "context60": {"prob_threshold": 0.15},
    "coco_object": {"prob_threshold": 0.4},
    "cityscapes": {"crop": 224},
}
NACLIP_BASE = SegSettings(pamr_steps=10)
NACLIP_DATASETS = {
    "voc21": {"prob_threshold": 0.1, "crop": 0},
    "voc20": {"crop": 0},
    "context60": {"prob_threshold": 0.1},
    "coco_object": {"prob_threshold": 0.1},
    "cityscapes": {"short_side": 560},
}

# lseg: LSeg's own scale 1/0.07; the windows' side is the head's training crop, set by the runner (its image_size)
LSEG_BASE = SegSettings(logit_scale=1.0 / 0.07)
# groupvit: NVlabs' segmentation configs: short side 448, sliding window 448 / stride 224; its own background
# rule (threshold 0.95, eval.seg.dense), no probability threshold; scores are arg-maxed, the scale moves nothing
GROUPVIT_BASE = SegSettings(short_side=448, crop=448, stride=224, logit_scale=1.0, class_names="clearclip")
DENSE_PRESETS = {"lseg": (LSEG_BASE, {}), "groupvit": (GROUPVIT_BASE, {})}

PRESETS: dict[str, tuple[SegSettings, dict[str, dict]]] = {
    "vanilla": (SCLIP_BASE, SCLIP_DATASETS),
    "maskclip": (SCLIP_BASE, SCLIP_DATASETS),
    "sclip": (SCLIP_BASE, {**SCLIP_DATASETS, "voc21": {**SCLIP_DATASETS["voc21"], "area_threshold": 0.1}}),
    "clearclip": (CLEARCLIP_BASE, CLEARCLIP_DATASETS),
    "naclip": (NACLIP_BASE, NACLIP_DATASETS),
}
PRESETS.update(DENSE_PRESETS)
ALL_METHODS = (*METHODS, *DENSE_PRESETS)
assert set(PRESETS) == set(ALL_METHODS)

OPTION_NAMES = tuple(f.name for f in fields(SegSettings))


def check_method(method: str | object) -> None:
    """A last-block head (name or HeadSpec) or a dense method; anything else is one error listing them all."""
    if isinstance(method, str) and method in DENSE_PRESETS:
        return
    try:
        get_head(method)
    except (KeyError, ValueError):
        raise ValueError(f"unknown segmentation method {method!r}; known: {', '.join(ALL_METHODS)}") from None


def resolve_settings(method: str, dataset: str = "generic", **overrides) -> SegSettings:
    """The preset of ``method`` on ``dataset``, with every non-None override applied."""
    check_method(method)  # an unknown method: one error, listing the known ones
    unknown = set(overrides) - set(OPTION_NAMES)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; settings are {', '.join(OPTION_NAMES)}")
    base, per_dataset = PRESETS[method]
    values = {**per_dataset.get(dataset, {}), **{k: v for k, v in overrides.items() if v is not None}}
    return replace(base, **values)
