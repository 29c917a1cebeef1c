"""mIoU, aAcc and per-class IoU as mmsegmentation's ``IoUMetric`` computes them.

Per image: drop pixels whose label is the ignore index or lies outside the classes 0..C-1
(mmsegmentation would count the prediction there; a label the class list does not know is
treated as unknown ground truth, and :class:`SegHistogram` counts such pixels so that the
caller can warn), then histogram over the classes the intersection (pixels where
prediction == label), the prediction and the label (predictions outside 0..C-1 fall out of
the histograms, as with ``torch.histc``); union = prediction + label - intersection. The histograms are summed over the whole dataset and
only then divided: IoU_c = ΣI_c / ΣU_c, mIoU = mean over classes with a non-zero union
(the others are NaN), aAcc = ΣI / Σlabel, mAcc = mean over classes with labelled pixels of
ΣI_c / Σlabel_c. Numbers are in percent, as mmsegmentation and the papers report them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def intersect_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                        ignore_index: int = 255) -> torch.Tensor:
    """(H, W) predicted and true labels -> (4, C) int64: intersection, union, prediction, label areas."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
    pred, label = pred[keep].long(), label[keep].long()

    def hist(values: torch.Tensor) -> torch.Tensor:
        values = values[(values >= 0) & (values < num_classes)]
        return torch.bincount(values, minlength=num_classes)

    inter = hist(pred[pred == label])
    area_pred, area_label = hist(pred), hist(label)
    return torch.stack([inter, area_pred + area_label - inter, area_pred, area_label]).cpu()


class SegHistogram:
    """Running sums of intersection, union, prediction and label areas over a dataset."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.totals = torch.zeros(4, num_classes, dtype=torch.int64)
        self.n_images = 0
        self.n_out_of_range = 0  # pixels whose label is neither a class nor the ignore index (left out)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> int:
        """Add one image; returns its number of pixels with a label outside the classes (left out)."""
        self.totals += intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.n_images += 1
        outside = int(((label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))).sum())
        self.n_out_of_range += outside
        return outside

    @property
    def n_evaluated(self) -> int:
        """Labelled pixels that took part (neither ignored nor outside the classes)."""
        return int(self.totals[3].sum())

    def per_class_iou(self) -> torch.Tensor:
        """(C,) float64 IoU in percent; NaN where the union is empty."""
        inter, union = self.totals[0].double(), self.totals[1].double()
        return torch.where(union > 0, 100.0 * inter / union.clamp(min=1), torch.full_like(union, math.nan))

    def summary(self, class_names: Sequence[str] | None = None) -> dict[str, float]:
        """mIoU, aAcc, mAcc (percent), n_images and ``IoU.<class>`` per class (NaN: class absent)."""
        iou = self.per_class_iou()
        inter, area_label = self.totals[0].double(), self.totals[3].double()
        acc = torch.where(area_label > 0, 100.0 * inter / area_label.clamp(min=1),
                          torch.full_like(area_label, math.nan))
        total_label = float(area_label.sum())
        out = {
            "mIoU": float(iou.nanmean()) if bool((~iou.isnan()).any()) else math.nan,
            "aAcc": 100.0 * float(inter.sum()) / total_label if total_label > 0 else math.nan,
            "mAcc": float(acc.nanmean()) if bool((~acc.isnan()).any()) else math.nan,
            "n_images": float(self.n_images),
        }
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        for name, value in zip(names, iou.tolist()):
            out[f"IoU.{name}"] = value
        return out
