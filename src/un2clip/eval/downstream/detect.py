"""Open-vocabulary detection with a frozen CLIP: ViLD's image branch (Gu et al., 2022) on given boxes.

Each box to classify (a ground-truth box, or a proposal from a detector) is cropped twice, at 1x and at
1.5x its size around its centre (clipped to the image), each crop resized as CLIP preprocesses an image
(short side to the input size, centre crop); as in ViLD's image branch the two crops' raw embeddings are
summed, then L2-normalised (``region="unit-mean"``: our earlier mean of the unit embeddings; ``crop_resize=
"squash"``: each crop stretched to a square). Class text embeddings are prompt ensembles over ViLD's 63
templates ("This is a photo of a {}." and the like, article and "This is" as ViLD writes them; CLIP's 80
ImageNet templates or a file instead). With ``background`` the embedding of the word "background" under the
same templates joins the softmax as one more class, so a box that looks like nothing takes probability away
from every class; ViLD learns its background embedding while training its detector, so this word embedding
is a training-free stand-in, not ViLD's. Each box
gives a detection for each of its ``classes_per_box`` best classes, scored by the softmax probability;
proposals go through per-class non-maximum suppression. COCO box AP and AP50 come from pycocotools
(``pip install 'un2clip[detect]'``), over all classes and, given a novel split, over the base and novel
classes apart (what OVR-CNN / ViLD report on COCO's 48/17 split).

Layout: a COCO-format annotations JSON (``images`` with ``id``, ``file_name``, ``width``, ``height``;
``annotations`` with ``image_id``, ``category_id``, ``bbox`` [x, y, w, h]; ``categories`` with ``id``,
``name``) and a folder holding each ``file_name`` — COCO, LVIS and the shapes world's ``detect/`` set.
The base/novel split: categories marked ``"split": "novel"`` or ``"unseen"`` are novel and those marked
``"seen"`` or ``"base"`` base (OVR-CNN's 48/17 files write seen/unseen); a names file or a COCO JSON whose
categories carry those marks can give it instead. Duplicate ids (images, annotations, categories) and
non-finite box coordinates are refused naming the row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from un2clip.data import transforms as T
from un2clip.data.sources import decode_image
from un2clip.eval.core.embed import embed_texts, inference_context
from un2clip.eval.core.metrics import coco_box_ap, greedy_nms, require_pycocotools
from un2clip.eval.downstream.common import report_skipped
from un2clip.eval.encoder.zeroshot import _lines, fill_template, imagenet_templates, zeroshot_classifier

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

LAYOUT = ("expected DIR/annotations.json (COCO format: images with id/file_name/width/height, annotations with "
          "image_id/category_id/bbox [x, y, w, h], categories with id/name) and DIR/images/<file_name>, or "
          "--data FILE.json with --images DIR")
CROP_SCALES = (1.0, 1.5)  # ViLD: the region and a 1.5x context crop, raw embeddings summed
REGIONS = ("vild", "unit-mean")  # sum of raw crop embeddings (ViLD), or mean of unit ones (ours before)
CROP_RESIZES = ("clip", "squash")  # CLIP's preprocessing of each crop (ViLD), or stretched to a square
NOVEL_MARKS, BASE_MARKS = ("novel", "unseen"), ("base", "seen")
# ViLD's prompt set (its demo notebook, prompt_engineering with this_is): {article} is "a" or "an"; a prompt
# that starts with "a" or "the" is read after "This is "
VILD_TEMPLATES = (
    "There is {article} {} in the scene.", "There is the {} in the scene.", "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.", "a photo of one {} in the scene.", "itap of {article} {}.", "itap of my {}.",
    "itap of the {}.", "a photo of {article} {}.", "a photo of my {}.", "a photo of the {}.", "a photo of one {}.",
    "a photo of many {}.", "a good photo of {article} {}.", "a good photo of the {}.", "a bad photo of {article} {}.",
    "a bad photo of the {}.", "a photo of a nice {}.", "a photo of the nice {}.", "a photo of a cool {}.",
    "a photo of the cool {}.", "a photo of a weird {}.", "a photo of the weird {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.", "a photo of a clean {}.",
    "a photo of the clean {}.", "a photo of a dirty {}.", "a photo of the dirty {}.",
    "a bright photo of {article} {}.", "a bright photo of the {}.", "a dark photo of {article} {}.",
    "a dark photo of the {}.", "a photo of a hard to see {}.", "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.", "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.", "a cropped photo of the {}.", "a close-up photo of {article} {}.",
    "a close-up photo of the {}.", "a jpeg corrupted photo of {article} {}.", "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.", "a blurry photo of the {}.", "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.", "a black and white photo of the {}.", "a black and white photo of {article} {}.",
    "a plastic {}.", "the plastic {}.", "a toy {}.", "the toy {}.", "a plushie {}.", "the plushie {}.",
    "a cartoon {}.", "the cartoon {}.", "an embroidered {}.", "the embroidered {}.", "a painting of the {}.",
    "a painting of a {}.",
)


# -- pure prompts and boxes ---------------------------------------------------------------------------


def vild_prompts(classname: str) -> list[str]:
    """ViLD's prompts of one class: its name lower-cased ('_' a space, '/' read "or", a trailing dot dropped),
    put in each of :data:`VILD_TEMPLATES` with its article, "This is " before those starting "a" or "the"."""
    name = classname.replace("_", " ").replace("/", " or ").lower().rstrip(".")
    article = "an" if classname[:1].lower() in "aeiou" else "a"
    texts = [t.replace("{article}", article).replace("{}", name) for t in VILD_TEMPLATES]
    return ["This is " + t if t.startswith("a") or t.startswith("the") else t for t in texts]


def box_problem(box: Sequence[float]) -> str | None:
    """What makes an [x, y, w, h] box unusable before any clipping, or None: not four numbers, a non-finite
    coordinate, a zero or negative width or height."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return f"box {box!r} is not four numbers [x, y, w, h]"
    if not all(map(math.isfinite, (x, y, w, h))):
        return f"box {list(box)} has a non-finite coordinate"
    if w <= 0 or h <= 0:
        what = "width" if w <= 0 else "height"
        return f"box {list(box)} has {'zero' if min(w, h) == 0 else 'negative'} {what} (w={w:g}, h={h:g})"
    return None



def scale_box(box: Sequence[float], scale: float, width: int, height: int) -> tuple[float, float, float, float]:
    """[x, y, w, h] grown ``scale`` times around its centre, clipped to the image -> (x0, y0, x1, y1)."""
    x, y, w, h = (float(v) for v in box)
    cx, cy = x + w / 2, y + h / 2
    hw, hh = w * scale / 2, h * scale / 2
    return max(0.0, cx - hw), max(0.0, cy - hh), min(float(width), cx + hw), min(float(height), cy + hh)


def clip_box(box: Sequence[float], width: int, height: int) -> list[float] | None:
    """[x, y, w, h] clipped to the image; None when nothing of it (under a pixel) lies inside."""
    x0, y0, x1, y1 = scale_box(box, 1.0, width, height)
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) boxes [x, y, w, h] -> (N, M) intersection over union."""
    a0, a1 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b0, b1 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp(min=0).prod(-1)  # (N, M)
    union = a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter
    return inter / union.clamp(min=1e-12)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression of (N, 4) boxes [x, y, w, h]: indices of the kept boxes, best score first."""
    return greedy_nms(box_iou(boxes, boxes), scores, iou)


# -- pure scoring --------------------------------------------------------------------------------------


def region_probabilities(region_embeds: torch.Tensor, classifier: torch.Tensor, *, background: torch.Tensor | None = None,
                         logit_scale: float = 100.0) -> torch.Tensor:
    """(N, D) unit region embeddings, (D, C) class embeddings -> (N, C) class probabilities.

    With ``background`` (D,) a background class joins the softmax and its probability is dropped.
    """
    weights = classifier if background is None else torch.cat([classifier, background.reshape(-1, 1)], dim=1)
    probs = (logit_scale * region_embeds @ weights).softmax(dim=-1)  # (N, C [+1])
    return probs[:, :classifier.shape[1]]


def detections(image_id: int, boxes: torch.Tensor, probs: torch.Tensor, category_ids: Sequence[int], *,
               classes_per_box: int = 3, nms_iou: float | None = None) -> list[dict]:
    """COCO result records: each box with each of its ``classes_per_box`` most probable classes; per-class
    non-maximum suppression at ``nms_iou`` when given. boxes (N, 4) [x, y, w, h], probs (N, C)."""
    k = min(classes_per_box, probs.shape[1])
    top = probs.topk(k, dim=1)
    box_index = torch.arange(len(boxes)).repeat_interleave(k)
    cls, score = top.indices.reshape(-1), top.values.reshape(-1)
    keep = torch.arange(len(cls))
    if nms_iou is not None and len(cls):
        kept = []
        for c in cls.unique().tolist():
            idx = (cls == c).nonzero().reshape(-1)
            kept.append(idx[nms(boxes[box_index[idx]], score[idx], nms_iou)])
        keep = torch.cat(kept).sort().values
    return [{"image_id": int(image_id), "category_id": int(category_ids[int(cls[j])]),
             "bbox": [round(float(v), 3) for v in boxes[box_index[j]]], "score": float(score[j])}
            for j in keep.tolist()]


# -- data ---------------------------------------------------------------------------------------------


@dataclass
class DetectionSet:
    """Images, classes, ground truth and the boxes to classify per image."""

    annotations: Path
    ground_truth: dict  # the COCO dict
    image_paths: dict[int, Path]
    classnames: list[str]
    category_ids: list[int]
    boxes: dict[int, list[list[float]]]  # image id -> [x, y, w, h] boxes to classify, inside the image
    novel: list[int] = field(default_factory=list)  # category ids of the novel classes (empty: no split)
    n_boxes_skipped: int = 0  # proposals with nothing inside their image
    templates: list[str] = field(default_factory=lambda: list(VILD_TEMPLATES))
    base: list[int] = field(default_factory=list)  # category ids of the base classes (empty: no split)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {LAYOUT}") from None


def split_ids(categories: Sequence[dict], where: str | Path) -> tuple[list[int], list[int]] | None:
    """(base, novel) category ids from the categories' ``split`` marks ("seen"/"base", "unseen"/"novel"); None
    when no category carries a mark; an error naming the file when some do but none is novel, or a mark is
    unknown. Unmarked categories count as base only when no category is marked base."""
    marked = [c for c in categories if "split" in c]
    if not marked:
        return None
    unknown = [c for c in marked if str(c["split"]).lower() not in NOVEL_MARKS + BASE_MARKS]
    if unknown:
        raise ValueError(f"{where}: category {unknown[0].get('name')!r} has split {unknown[0]['split']!r}; known "
                         f"marks: {', '.join(NOVEL_MARKS + BASE_MARKS)}")
    novel = [int(c["id"]) for c in marked if str(c["split"]).lower() in NOVEL_MARKS]
    base = [int(c["id"]) for c in marked if str(c["split"]).lower() in BASE_MARKS]
    if not novel:
        raise ValueError(f"{where} marks {len(marked)} categories with a split but none novel/unseen: no novel AP "
                         "can be reported; mark the novel ones (\"split\": \"unseen\" as OVR-CNN writes them)")
    if not base:
        base = [int(c["id"]) for c in categories if int(c["id"]) not in novel]
    return base, novel


def _split(categories: list[dict], novel: Sequence[str] | str | Path | None, where: Path
           ) -> tuple[list[int], list[int]]:
    """(base, novel) category ids: from the annotations' own marks (``novel`` None), a names file (base: every
    other category) or a COCO JSON with marks; ([], []) without a split."""
    by_name = {c["name"]: int(c["id"]) for c in categories}
    base_names: list[str] | None = None
    if novel is None:  # the annotations may mark the split themselves (OVR-CNN's COCO split files do)
        split = split_ids(categories, where)
        return split if split else ([], [])
    if isinstance(novel, (str, Path)) and str(novel).lower().endswith(".json"):  # a COCO file with split marks
        path = Path(novel)
        if not path.is_file():
            raise FileNotFoundError(f"split file {path} not found")
        cats = _load_json(path)
        cats = cats.get("categories") if isinstance(cats, dict) else cats
        if not isinstance(cats, list) or not all(isinstance(c, dict) and "name" in c for c in cats):
            raise ValueError(f"split file {path} must hold COCO categories (name, split)")
        split = split_ids([{**c, "id": k} for k, c in enumerate(cats)], path)
        if split is None:
            raise ValueError(f"split file {path} marks no category with a split (\"split\": \"seen\"/\"unseen\" "
                             "or \"base\"/\"novel\")")
        names = [cats[k]["name"] for k in split[1]]
        base_names = [cats[k]["name"] for k in split[0]]
    else:
        names = _lines(novel) or []
        if not names:
            raise ValueError(f"novel class list {novel} names no class")
    unknown = [n for n in names + (base_names or []) if n not in by_name]
    if unknown:
        raise ValueError(f"{'novel' if unknown[0] in names else 'base'} class {unknown[0]!r} is not a category of "
                         f"{where} (known: {', '.join(list(by_name)[:8])}...)")
    novel_ids = [by_name[n] for n in names]
    base_ids = [by_name[n] for n in base_names] if base_names is not None else [
        int(c["id"]) for c in categories if int(c["id"]) not in novel_ids]
    return base_ids, novel_ids


def _refuse_duplicate_ids(rows: Sequence[dict], key: str, path: Path) -> None:
    """An error naming the first repeated ``id`` among ``rows`` (pycocotools would merge them silently)."""
    seen: dict[int, int] = {}
    for k, row in enumerate(rows):
        if "id" not in row:
            if key == "annotations":
                continue  # filled in by position
            raise ValueError(f"{path}: {key} entry {k} has no id")
        i = int(row["id"])
        if i in seen:
            raise ValueError(f"{path}: {key} id {i} appears twice (entries {seen[i]} and {k}); ids must be unique")
        seen[i] = k


def read_detection_set(data: str | Path, *, images: str | Path | None = None, proposals: str | Path | None = None,
                       novel: Sequence[str] | str | Path | None = None,
                       templates: Sequence[str] | str | Path | None = None) -> DetectionSet:
    """Open a COCO-format detection set: ``data`` a folder (annotations.json, images/) or the JSON itself.

    Ground-truth boxes are clipped to their image; one with nothing inside it is an error naming the file
    and the annotation. Proposals (a JSON list of ``{"image_id", "bbox"}``, COCO's result format) are
    clipped too, and one with nothing inside is skipped and counted (``n_boxes_skipped``).
    """
    root = Path(data)
    if root.is_dir():
        ann_path, image_root = root / "annotations.json", Path(images) if images else root / "images"
    else:
        ann_path, image_root = root, Path(images) if images else root.parent / "images"
    if not ann_path.is_file():
        raise FileNotFoundError(f"{ann_path} not found; {LAYOUT}")
    if not image_root.is_dir():
        raise FileNotFoundError(f"image folder {image_root} not found; {LAYOUT}")
    coco = _load_json(ann_path)
    if not isinstance(coco, dict) or not all(k in coco for k in ("images", "annotations", "categories")):
        raise ValueError(f"{ann_path} lacks images, annotations or categories; {LAYOUT}")
    categories = sorted(coco["categories"], key=lambda c: int(c["id"]))
    if len(categories) < 2:
        raise ValueError(f"{ann_path} has {len(categories)} categories: classification needs two or more")
    for key, rows in (("categories", coco["categories"]), ("images", coco["images"]),
                      ("annotations", coco["annotations"])):
        _refuse_duplicate_ids(rows, key, ann_path)
    known_cats = {int(c["id"]) for c in categories}
    sizes, paths = {}, {}
    for im in coco["images"]:
        i = int(im["id"])
        sizes[i] = (int(im["width"]), int(im["height"]))
        paths[i] = image_root / im["file_name"]
    boxes: dict[int, list[list[float]]] = {i: [] for i in sizes}
    for a in coco["annotations"]:
        where = f"{ann_path}: annotation {a.get('id', '?')} of image {a.get('image_id')}"
        if int(a["image_id"]) not in sizes:
            raise ValueError(f"{where} names an image that is not in the images list")
        if int(a["category_id"]) not in known_cats:
            raise ValueError(f"{where} has category {a['category_id']}, not in the categories list")
        problem = box_problem(a.get("bbox"))
        if problem:
            raise ValueError(f"{where}: {problem}")
        w, h = sizes[int(a["image_id"])]
        box = clip_box(a["bbox"], w, h)
        if box is None:
            raise ValueError(f"{where} ({paths[int(a['image_id'])].name}, {w}x{h}): box {a['bbox']} lies outside "
                             "the image")
        if not a.get("iscrowd", 0) and proposals is None:
            boxes[int(a["image_id"])].append(box)
    skipped, skipped_why = 0, []
    if proposals is not None:
        prop_path = Path(proposals)
        if not prop_path.is_file():
            raise FileNotFoundError(f"proposals {prop_path} not found (a JSON list of {{image_id, bbox}})")
        records = _load_json(prop_path)
        if not isinstance(records, list):
            raise ValueError(f"{prop_path} must hold a JSON list of {{image_id, bbox [x, y, w, h]}}")
        for row, r in enumerate(records):
            i = int(r["image_id"])
            if i not in sizes:
                raise ValueError(f"{prop_path}: proposal {row} for image {i}, which {ann_path} does not list")
            problem = box_problem(r.get("bbox"))
            if problem and ("non-finite" in problem or "not four" in problem):
                raise ValueError(f"{prop_path}: proposal {row} (image {i}): {problem}")
            box = None if problem else clip_box(r["bbox"], *sizes[i])
            if box is None:
                skipped += 1
                skipped_why.append(f"proposal {row} (image {i}): {problem or 'box ' + str(r['bbox']) + ' outside'}")
            else:
                boxes[i].append(box)
    if isinstance(templates, str) and templates in ("vild", "imagenet"):
        temps = list(VILD_TEMPLATES) if templates == "vild" else imagenet_templates()
    else:
        temps = _lines(templates)
        for t in temps or []:
            fill_template(t, "x")
        if temps is None and root.is_dir() and (root / "templates.txt").is_file():
            temps = _lines(root / "templates.txt")
    report_skipped("proposals", skipped_why)
    base, novel_ids = _split(categories, novel, ann_path)
    return DetectionSet(ann_path, coco, paths, [c["name"] for c in categories], [int(c["id"]) for c in categories],
                        boxes, novel_ids, skipped, temps or list(VILD_TEMPLATES), base)


# -- model ---------------------------------------------------------------------------------------------


def crop_inputs(image: Image.Image, boxes: Sequence[Sequence[float]], model: ClipModel,
                scales: Sequence[float] = CROP_SCALES, crop_resize: str = "clip") -> torch.Tensor:
    """(S * N, 3, size, size) model inputs: every box cropped at each scale (scale-major), then resized as CLIP
    preprocesses an image (``clip``: short side to size, centre crop) or stretched to a square (``squash``)."""
    if crop_resize not in CROP_RESIZES:
        raise ValueError(f"unknown crop resize {crop_resize!r}; known: {', '.join(CROP_RESIZES)}")
    proc = model.processing
    crops = []
    for s in scales:
        for box in boxes:
            crop = image.crop(scale_box(box, s, image.width, image.height))
            if crop_resize == "squash":
                crop = crop.resize((proc.size, proc.size), Image.BICUBIC)
            else:
                crop = T.center_crop(T.resize_short_side(T.to_rgb(crop), proc.size), proc.size)
            crops.append(T.normalize(T.pil_to_tensor(crop), proc.mean, proc.std))
    return torch.stack(crops)


def combine_crops(crop_embeds: torch.Tensor, region: str = "vild") -> torch.Tensor:
    """(S, N, D) raw crop embeddings -> (N, D) unit region embeddings. ``vild``: the raw embeddings summed over
    the S scales, then normalised (ViLD); ``unit-mean``: each crop normalised first, then the mean normalised."""
    if region not in REGIONS:
        raise ValueError(f"unknown region embedding {region!r}; known: {', '.join(REGIONS)}")
    x = crop_embeds.float()
    if region == "unit-mean":
        x = torch.nn.functional.normalize(x, dim=-1)
    return torch.nn.functional.normalize(x.sum(0), dim=-1)


def region_embeddings(model: ClipModel, image: Image.Image, boxes: Sequence[Sequence[float]], *,
                      batch_size: int = 64, scales: Sequence[float] = CROP_SCALES, region: str = "vild",
                      crop_resize: str = "clip") -> torch.Tensor:
    """(N, D) unit embeddings of the boxes from their crops at ``scales`` (:func:`combine_crops`)."""
    pixels = crop_inputs(image, boxes, model, scales, crop_resize)
    chunks = [model.encode_image(pixels[i:i + batch_size].to(model.device)).float()
              for i in range(0, len(pixels), batch_size)]
    emb = torch.cat(chunks).cpu()  # (S * N, D), raw
    return combine_crops(emb.reshape(len(scales), len(boxes), -1), region)


def class_embeddings(model: ClipModel, classnames: Sequence[str], templates: Sequence[str], *,
                     precision: str = "auto", progress: bool = True) -> torch.Tensor:
    """(D, C) class embeddings, the normalised mean of each class's normalised prompt embeddings: ViLD's prompts
    (:func:`vild_prompts`) when ``templates`` is :data:`VILD_TEMPLATES`, else the templates filled in."""
    if list(templates) != list(VILD_TEMPLATES):
        return zeroshot_classifier(model, classnames, templates, precision=precision, progress=progress)
    prompts = [vild_prompts(c) for c in classnames]
    emb = embed_texts(model, [p for ps in prompts for p in ps], precision=precision, progress=progress,
                      desc="class prompts")
    per_class = torch.stack([chunk.mean(dim=0) for chunk in emb.split([len(ps) for ps in prompts])])
    return torch.nn.functional.normalize(per_class, dim=-1).T


def evaluate(model: ClipModel, data: str | Path, *, images: str | Path | None = None,
             proposals: str | Path | None = None, novel: Sequence[str] | str | Path | None = None,
             templates: Sequence[str] | str | Path | None = None, background: bool = False,
             classes_per_box: int = 3, nms_iou: float = 0.5, region: str = "vild", crop_resize: str = "clip",
             batch_size: int = 64, precision: str = "auto", progress: bool = True) -> dict[str, float]:
    """AP, AP50 (fractions; AP_base/AP_novel and AP50_* with a novel split) and counts of images, boxes, skips."""
    if classes_per_box < 1:
        raise ValueError(f"classes_per_box must be >= 1, got {classes_per_box}")
    if not 0.0 <= nms_iou <= 1.0:
        raise ValueError(f"nms_iou must be in [0, 1], got {nms_iou}")
    if region not in REGIONS or crop_resize not in CROP_RESIZES:
        raise ValueError(f"region must be one of {REGIONS} and crop_resize one of {CROP_RESIZES}")
    require_pycocotools()
    model.eval()
    ds = read_detection_set(data, images=images, proposals=proposals, novel=novel, templates=templates)
    classifier = class_embeddings(model, ds.classnames, ds.templates, precision=precision, progress=progress)
    bg = class_embeddings(model, ["background"], ds.templates, precision=precision,
                          progress=False)[:, 0] if background else None
    results: list[dict] = []
    evaluated, n_boxes, unreadable = [], 0, []
    with inference_context(model.device, precision):
        for image_id, path in tqdm(ds.image_paths.items(), desc="detect images", disable=not progress, leave=False):
            image = decode_image(path)
            if image is None:
                unreadable.append(str(path))
                continue
            evaluated.append(image_id)
            boxes = ds.boxes[image_id]
            if not boxes:
                continue
            probs = region_probabilities(region_embeddings(model, image, boxes, batch_size=batch_size, region=region,
                                                           crop_resize=crop_resize), classifier, background=bg)
            results += detections(image_id, torch.tensor(boxes), probs, ds.category_ids,
                                  classes_per_box=classes_per_box, nms_iou=nms_iou if proposals else None)
            n_boxes += len(boxes)
    if not evaluated:
        raise ValueError(f"none of the {len(ds.image_paths)} images of {ds.annotations} could be read")
    report_skipped("images (unreadable)", unreadable)
    groups = {}
    if ds.novel:
        groups = {"base": list(ds.base), "novel": list(ds.novel)}
    metrics = coco_box_ap(ds.ground_truth, results, image_ids=evaluated, groups=groups)
    metrics.update(n_images=len(evaluated), n_boxes=n_boxes, n_classes=len(ds.classnames),
                   n_skipped_images=len(unreadable), n_skipped_boxes=ds.n_boxes_skipped)
    return metrics
