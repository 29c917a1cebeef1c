"""Training-free open-vocabulary semantic segmentation with a frozen CLIP image encoder.

``evaluate(model, data, method=..., dataset=...)`` runs one method (``heads.METHODS``:
vanilla, maskclip, sclip, clearclip, naclip; or a model's own, ``dense.DENSE_METHODS``: lseg, groupvit) on one dataset (``datasets.DATASETS``) and
returns mIoU, aAcc, mAcc (percent), the image counts and ``IoU.<class>`` per class. The
method x dataset settings come from ``presets``; every one can be overridden by name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from un2clip.eval.seg.datasets import (
    BENCHMARK_DIRS,
    BENCHMARKS,
    DATASETS,
    SegDataset,
    SegPairs,
    load_dataset,
    size_mismatch,
)
from un2clip.eval.seg.dense import DENSE_METHODS, DenseScorer
from un2clip.eval.seg.heads import HEADS, METHODS, HeadSpec, dense_features, gaussian_bias
from un2clip.eval.seg.infer import (
    TextClassifier,
    class_probabilities,
    inference_context,
    pamr,
    predict_classes,
    prepare_image,
    slide_logits,
    text_classifier,
    window_logits,
)
from un2clip.eval.seg.metrics import SegHistogram, intersect_and_union
from un2clip.eval.seg.presets import SegSettings, check_method, resolve_settings
from un2clip.eval.seg.reference import SegReferences, geometry_of, reference_scores

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

log = logging.getLogger(__name__)

__all__ = [
    "BENCHMARKS", "BENCHMARK_DIRS", "DATASETS", "DENSE_METHODS", "HEADS", "METHODS", "HeadSpec", "SegDataset", "SegHistogram",
    "SegSettings", "TextClassifier", "dense_features", "evaluate", "gaussian_bias", "intersect_and_union",
    "SegReferences", "load_dataset", "reference_scores", "resolve_settings", "segment_image", "text_classifier",
]


def segment_image(model: ClipModel, pixels: torch.Tensor, classifier: TextClassifier, *, method: str | HeadSpec,
                  settings: SegSettings, out_size: tuple[int, int] | None = None, background: int | None = None,
                  batch_size: int = 16, scorer: DenseScorer | None = None) -> torch.Tensor:
    """(3, H, W) uint8 image -> (H', W') long class map at ``out_size`` (default the image's size).

    ``scorer`` scores the windows instead of a last-block head (the ``lseg`` and ``groupvit`` methods)."""
    proc = model.processing
    image = prepare_image(pixels.to(model.device), settings.short_side, proc.mean, proc.std)
    if not settings.background_query:
        if background is None:
            raise ValueError("background_query=False needs a dataset with a background class")
        classifier = classifier.without_class(background)
    queries = classifier.queries.to(model.device)

    pad = settings.pad_windows and settings.crop > 0  # the whole image is never padded, as in every reference

    def logits_fn(crops: torch.Tensor) -> torch.Tensor:
        if scorer is not None:
            return scorer.window_logits(crops, queries)
        return window_logits(model, crops, queries, method, gaussian_std=settings.gaussian_std, pad=pad)

    logits = slide_logits(logits_fn, image, len(queries), crop=settings.crop, stride=settings.stride,
                          batch_size=batch_size)  # (Q, h, w)
    size = out_size or tuple(pixels.shape[-2:])
    logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)  # (1, Q, H, W)
    logits = pamr(image, logits, steps=settings.pamr_steps, dilations=settings.pamr_dilations)[0]
    probs = class_probabilities(logits, classifier.query_class.to(logits.device), classifier.num_classes,
                                settings.logit_scale)
    return predict_classes(probs, prob_threshold=settings.prob_threshold, area_threshold=settings.area_threshold,
                           background=background)


def evaluate(model: ClipModel, data: str | Path | SegDataset, *, method: str = "vanilla", dataset: str = "generic",
             classes: str | Path | list[list[str]] | None = None, templates: list[str] | None = None,
             split: str = "val", max_images: int | None = None, classifier: TextClassifier | None = None,
             batch_size: int = 16, num_workers: int = 2, precision: str = "auto", progress: bool = True,
             resize_masks: bool = False, scorer: DenseScorer | None = None, **settings) -> dict[str, float]:
    """mIoU, aAcc, mAcc (percent), n_images, n_skipped, n_out_of_range and ``IoU.<class>`` of ``method`` on a dataset,
    with the two reference points of the same label maps (``reference``): background_mIoU and background_aAcc of the
    constant predictor (the background class, else the most frequent one), oracle_mIoU and oracle_aAcc of the
    patch-resolution oracle on the model's patch grid and this method's windows.

    A label map must have its image's size (ValueError naming the pair), unless ``resize_masks``
    (nearest neighbour). Label values outside the classes are left out like the ignore index, with a
    warning that counts them (``n_out_of_range`` pixels); a dataset with no pixel left to evaluate is
    a ValueError.

    ``settings`` override the method x dataset preset by name: short_side, crop, stride,
    logit_scale, prob_threshold, area_threshold, gaussian_std, pamr_steps, pamr_dilations,
    pad_windows, class_names (whose shipped class-name files a named benchmark reads, unless
    ``classes`` is given; a ``SegDataset`` keeps its own). ``precision``: see
    ``infer.resolve_precision`` (auto: fp16 on CUDA, fp32 on CPU). Prompt templates: ``templates``,
    else the dataset's own (a generic folder's templates.txt), else CLIP's 80 ImageNet ones.
    ``classifier`` reuses text queries already computed for this model and these classes. The ``lseg`` and
    ``groupvit`` methods need their ``scorer`` (``dense.LSegScorer``, ``dense.GroupViTScorer``; ``model`` then
    the CLIP under the LSeg head, or the ``GroupViTClip``).
    """
    check_method(method)  # an unknown method fails before any data is read
    if method in DENSE_METHODS and scorer is None:
        raise ValueError(f"method {method!r} needs its scorer (an LSeg head or a GroupViT), see eval.seg.dense")
    if isinstance(data, SegDataset):
        ds = data  # its class names as the caller chose them
        cfg = resolve_settings(method, ds.name, **settings)
    else:
        cfg = resolve_settings(method, dataset, **settings)
        ds = load_dataset(data, dataset, classes=classes, split=split, max_images=max_images,
                          class_names=cfg.class_names)
    if not cfg.background_query and (method in DENSE_METHODS or ds.background is None):
        raise ValueError(f"background_query=False (--no-background-query) needs a training-free head and a dataset "
                         f"with a background class "
                         f"(got method {method!r}, dataset {ds.name!r})")
    if (cfg.prob_threshold > 0 or cfg.area_threshold > 0) and ds.background is None:
        raise ValueError(f"dataset {ds.name!r} has no background class, so prob_threshold and area_threshold "
                         "must be 0 (a generic dataset has one when its first class is 'background')")
    model.eval()
    if classifier is None:
        classifier = text_classifier(model, ds.classes, templates or ds.templates, precision=precision)
    if classifier.num_classes != ds.num_classes:
        raise ValueError(f"the text classifier has {classifier.num_classes} classes, the dataset {ds.num_classes}")
    hist = SegHistogram(ds.num_classes)
    refs = SegReferences(ds.num_classes, geometry_of(model.patch_size, cfg), background=ds.background)
    loader = torch.utils.data.DataLoader(SegPairs(ds, resize_masks=resize_masks), batch_size=None, shuffle=False,
                                         num_workers=num_workers)
    skipped, outside_masks = 0, []
    with inference_context(model.device, precision):
        for pixels, label, i in tqdm(loader, total=len(ds), desc=f"{method} on {ds.name}", disable=not progress,
                                     leave=False):
            if pixels is None:
                skipped += 1
                continue
            if tuple(label.shape) != tuple(pixels.shape[-2:]):
                raise ValueError(size_mismatch(ds.images[i], ds.labels[i], (pixels.shape[-1], pixels.shape[-2]),
                                               (label.shape[1], label.shape[0])))
            label = label.to(model.device)
            pred = segment_image(model, pixels, classifier, method=method, settings=cfg,
                                 out_size=tuple(label.shape), background=ds.background, batch_size=batch_size,
                                 scorer=scorer)
            if hist.update(pred, label):
                outside_masks.append(i)
            refs.update(label)
    if hist.n_images == 0:
        raise ValueError(f"none of the {len(ds)} images of {ds.root} could be read")
    _check_labels(ds, hist, outside_masks)
    out = hist.summary(ds.display)
    out["n_skipped"] = float(skipped)
    out["n_out_of_range"] = float(hist.n_out_of_range)
    out.update(refs.summary())
    return out


def _check_labels(ds: SegDataset, hist: SegHistogram, outside_masks: list[int]) -> None:
    """Warn about label values outside the classes; refuse a dataset whose masks leave no pixel to evaluate."""
    n = ds.num_classes
    known = f"the {n} classes (0..{n - 1})"
    if hist.n_evaluated == 0:
        ignored = f"the ignore index {hist.ignore_index}"
        if ds.reduce_zero_label:
            ignored += f" (the {ds.name} layout ignores 0 too and shifts the other labels down by one)"
        outside = f" or outside {known}" if hist.n_out_of_range else ""
        raise ValueError(f"no pixel of the {hist.n_images} mask(s) of {ds.root} can be evaluated: every label is "
                         f"{ignored}{outside}; check --dataset and --classes")
    if outside_masks:
        example = ", ".join(str(ds.labels[i]) for i in outside_masks[:3])
        log.warning("%d pixel(s) in %d of %d mask(s) of %s have labels outside %s and were ignored like %d "
                    "(e.g. %s); check --classes and --dataset", hist.n_out_of_range, len(outside_masks),
                    hist.n_images, ds.root, known, hist.ignore_index, example)
