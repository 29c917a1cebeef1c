"""Open-vocabulary detection with a frozen CLIP: ViLD's image branch (Gu et al., 2022) on given boxes.

Each box to classify (a ground-truth box, or a proposal from a detector) is cropped twice, at 1x and at
1.5x its size around its centre (clipped to the image), each crop squashed to the model's input size;
the two L2-normalised embeddings are averaged and normalised again. Class text embeddings are prompt
ensembles (:func:`un2clip.eval.encoder.zeroshot.zeroshot_classifier`); with ``background`` a "background" class
joins the softmax, so a box that looks like nothing takes probability away from every class. Each box
gives a detection for each of its ``classes_per_box`` best classes, scored by the softmax probability;
proposals go through per-class non-maximum suppression. COCO box AP and AP50 come from pycocotools
(``pip install 'un2clip[detect]'``), over all classes and, given a novel split, over the base and novel
classes apart (what OVR-CNN / ViLD report on COCO's 48/17 split).

Layout: a COCO-format annotations JSON (``images`` with ``id``, ``file_name``, ``width``, ``height``;
``annotations`` with ``image_id``, ``category_id``, ``bbox`` [x, y, w, h]; ``categories`` with ``id``,
``name``) and a folder holding each ``file_name`` — COCO, LVIS and the shapes world's ``detect/`` set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from un2clip.data import transforms as T
from un2clip.data.sources import decode_image
from un2clip.eval.core.embed import inference_context
from un2clip.eval.core.metrics import coco_box_ap, require_pycocotools
from un2clip.eval.encoder.zeroshot import _lines, fill_template, imagenet_templates, zeroshot_classifier

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

LAYOUT = ("expected DIR/annotations.json (COCO format: images with id/file_name/width/height, annotations with "
          "image_id/category_id/bbox [x, y, w, h], categories with id/name) and DIR/images/<file_name>, or "
          "--data FILE.json with --images DIR")
CROP_SCALES = (1.0, 1.5)  # ViLD: the region and a 1.5x context crop, embeddings averaged


# -- pure box arithmetic ------------------------------------------------------------------------------


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
    """Greedy non-maximum suppression: indices of the kept boxes, best score first."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    overlaps = box_iou(boxes, boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou
    return torch.tensor(keep, dtype=torch.long)


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
    templates: list[str] = field(default_factory=imagenet_templates)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {LAYOUT}") from None


def _novel_ids(categories: list[dict], novel: Sequence[str] | str | Path | None, where: Path) -> list[int]:
    by_name = {c["name"]: int(c["id"]) for c in categories}
    if novel is None:  # the annotations may mark the split themselves (OVR-CNN's COCO split files do)
        return [int(c["id"]) for c in categories if c.get("split") == "novel"]
    names = _lines(novel) or []
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"novel class {unknown[0]!r} is not a category of {where} "
                         f"(known: {', '.join(list(by_name)[:8])}...)")
    return [by_name[n] for n in names]


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
        w, h = sizes[int(a["image_id"])]
        box = clip_box(a["bbox"], w, h)
        if box is None:
            raise ValueError(f"{where} ({paths[int(a['image_id'])].name}, {w}x{h}): box {a['bbox']} lies outside "
                             "the image")
        if not a.get("iscrowd", 0) and proposals is None:
            boxes[int(a["image_id"])].append(box)
    skipped = 0
    if proposals is not None:
        prop_path = Path(proposals)
        if not prop_path.is_file():
            raise FileNotFoundError(f"proposals {prop_path} not found (a JSON list of {{image_id, bbox}})")
        records = _load_json(prop_path)
        if not isinstance(records, list):
            raise ValueError(f"{prop_path} must hold a JSON list of {{image_id, bbox [x, y, w, h]}}")
        for r in records:
            i = int(r["image_id"])
            if i not in sizes:
                raise ValueError(f"{prop_path}: proposal for image {i}, which {ann_path} does not list")
            box = clip_box(r["bbox"], *sizes[i])
            if box is None:
                skipped += 1
            else:
                boxes[i].append(box)
    temps = _lines(templates)
    for t in temps or []:
        fill_template(t, "x")
    if temps is None and root.is_dir() and (root / "templates.txt").is_file():
        temps = _lines(root / "templates.txt")
    return DetectionSet(ann_path, coco, paths, [c["name"] for c in categories], [int(c["id"]) for c in categories],
                        boxes, _novel_ids(categories, novel, ann_path), skipped, temps or imagenet_templates())


# -- model ---------------------------------------------------------------------------------------------


def crop_inputs(image: Image.Image, boxes: Sequence[Sequence[float]], model: ClipModel,
                scales: Sequence[float] = CROP_SCALES) -> torch.Tensor:
    """(S * N, 3, size, size) model inputs: every box cropped at each scale (scale-major), squashed to size."""
    proc = model.processing
    crops = []
    for s in scales:
        for box in boxes:
            x0, y0, x1, y1 = scale_box(box, s, image.width, image.height)
            crop = image.crop((x0, y0, x1, y1)).resize((proc.size, proc.size), Image.BICUBIC)
            crops.append(T.normalize(T.pil_to_tensor(crop), proc.mean, proc.std))
    return torch.stack(crops)


def region_embeddings(model: ClipModel, image: Image.Image, boxes: Sequence[Sequence[float]], *,
                      batch_size: int = 64, scales: Sequence[float] = CROP_SCALES) -> torch.Tensor:
    """(N, D) unit embeddings of the boxes: the mean of their crops' unit embeddings over ``scales``, normalised."""
    pixels = crop_inputs(image, boxes, model, scales)
    chunks = [model.encode_image(pixels[i:i + batch_size].to(model.device)).float()
              for i in range(0, len(pixels), batch_size)]
    emb = torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu()  # (S * N, D)
    return torch.nn.functional.normalize(emb.reshape(len(scales), len(boxes), -1).mean(0), dim=-1)


def evaluate(model: ClipModel, data: str | Path, *, images: str | Path | None = None,
             proposals: str | Path | None = None, novel: Sequence[str] | str | Path | None = None,
             templates: Sequence[str] | str | Path | None = None, background: bool = False,
             classes_per_box: int = 3, nms_iou: float = 0.5, batch_size: int = 64, precision: str = "auto",
             progress: bool = True) -> dict[str, float]:
    """AP, AP50 (fractions; AP_base/AP_novel and AP50_* with a novel split) and counts of images, boxes, skips."""
    require_pycocotools()
    model.eval()
    ds = read_detection_set(data, images=images, proposals=proposals, novel=novel, templates=templates)
    classifier = zeroshot_classifier(model, ds.classnames, ds.templates, precision=precision, progress=progress)
    bg = zeroshot_classifier(model, ["background"], ds.templates, precision=precision,
                             progress=False)[:, 0] if background else None
    results: list[dict] = []
    evaluated, n_boxes, unreadable = [], 0, 0
    with inference_context(model.device, precision):
        for image_id, path in tqdm(ds.image_paths.items(), desc="detect images", disable=not progress, leave=False):
            image = decode_image(path)
            if image is None:
                unreadable += 1
                continue
            evaluated.append(image_id)
            boxes = ds.boxes[image_id]
            if not boxes:
                continue
            probs = region_probabilities(region_embeddings(model, image, boxes, batch_size=batch_size), classifier,
                                         background=bg)
            results += detections(image_id, torch.tensor(boxes), probs, ds.category_ids,
                                  classes_per_box=classes_per_box, nms_iou=nms_iou if proposals else None)
            n_boxes += len(boxes)
    if not evaluated:
        raise ValueError(f"none of the {len(ds.image_paths)} images of {ds.annotations} could be read")
    groups = {}
    if ds.novel:
        groups = {"base": [c for c in ds.category_ids if c not in ds.novel], "novel": list(ds.novel)}
    metrics = coco_box_ap(ds.ground_truth, results, image_ids=evaluated, groups=groups)
    metrics.update(n_images=len(evaluated), n_boxes=n_boxes, n_classes=len(ds.classnames),
                   n_skipped_images=unreadable, n_skipped_boxes=ds.n_boxes_skipped)
    return metrics
