"""Two reference points that say what an mIoU is worth on a given dataset and patch grid.

- **Constant predictor** (``background_mIoU``): every pixel gets the dataset's background class
  (the all-background predictor), or, for a dataset without one, its most frequent labelled class.
  Any segmentation below it measures nothing.
- **Patch-resolution oracle** (``oracle_mIoU``): the ground truth pooled to the encoder's patch
  grid, then upsampled back the way a head's logits are. Per window of the inference path
  (``infer.slide_logits``, the windows and padding of ``infer.window_logits``), each patch votes:
  its class is the most frequent label among its pixels (the lowest class index on a tie). Pixels
  labelled with the ignore index, or with a value outside the classes, do not vote; a patch with no
  labelled pixel votes for nothing (all-zero logits), as does the zero padding of a padded window.
  The votes as one-hot logits on the grid are upsampled bilinearly to the window, overlapping
  windows averaged, the result upsampled bilinearly to the label map and its argmax taken. The
  labels are first resized (nearest neighbour) to the size the image is resized to (``short_side``);
  the rows and columns past the last whole patch of a window are dropped, as the patch embedding
  drops them. No PAMR and no background threshold: the oracle is the best a per-patch classifier
  could score through this upsampling, so a head near it is limited by the grid, not by its features.

Both go through :class:`~un2clip.eval.seg.metrics.SegHistogram`, the code that scores the heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from un2clip.eval.seg.infer import padding_to_multiple, resized_shape, slide_logits
from un2clip.eval.seg.metrics import SegHistogram


@dataclass(frozen=True)
class OracleGeometry:
    """The parts of the inference path that decide where patches fall."""

    patch_size: int
    short_side: int = 0  # 0: the image keeps its size
    crop: int = 0  # sliding-window side; 0: the whole image
    stride: int = 0
    pad: bool = False  # windows zero-padded to a multiple of the patch, centred (ClearCLIP)

    def __post_init__(self) -> None:
        if self.patch_size <= 0:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}")
        if self.crop > 0 and self.stride <= 0:
            raise ValueError(f"stride must be positive with a sliding window, got {self.stride}")


def patch_votes(labels: torch.Tensor, num_classes: int, patch_size: int, *, ignore_index: int = 255,
                pad: bool = False) -> torch.Tensor:
    """(B, 1, h, w) labels of windows -> (B, C, h, w) bilinearly upsampled one-hot votes of each patch.

    With ``pad`` the window is padded (centred, with ``ignore_index``) to a multiple of the patch and the
    padding cut off after upsampling; without it, the rows and columns past the last whole patch are dropped
    before voting and the grid's logits stretched over the whole window.
    """
    b, _, h, w = labels.shape
    left, right, top, bottom = padding_to_multiple(h, w, patch_size) if pad else (0, 0, 0, 0)
    lab = labels[:, 0].round().long()
    if left or right or top or bottom:
        lab = F.pad(lab, (left, right, top, bottom), value=ignore_index)
    full_h, full_w = lab.shape[-2:]
    gh, gw = full_h // patch_size, full_w // patch_size
    if gh == 0 or gw == 0:
        raise ValueError(f"a {h} x {w} window holds no whole {patch_size} px patch")
    lab = lab[:, :gh * patch_size, :gw * patch_size]
    cell_y = torch.arange(gh * patch_size, device=lab.device) // patch_size
    cell_x = torch.arange(gw * patch_size, device=lab.device) // patch_size
    cell = (torch.arange(b, device=lab.device)[:, None, None] * gh * gw + cell_y[None, :, None] * gw
            + cell_x[None, None, :])  # (B, gh p, gw p): the patch each pixel falls in
    valid = (lab != ignore_index) & (lab >= 0) & (lab < num_classes)
    counts = torch.bincount((cell * num_classes + lab)[valid], minlength=b * gh * gw * num_classes)
    counts = counts.view(b, gh, gw, num_classes)
    votes = F.one_hot(counts.argmax(dim=-1), num_classes) * (counts.sum(dim=-1, keepdim=True) > 0)
    grid = votes.permute(0, 3, 1, 2).float()  # (B, C, gh, gw)
    up = F.interpolate(grid, size=(full_h, full_w), mode="bilinear", align_corners=False)
    return up[:, :, top:top + h, left:left + w]


def oracle_prediction(label: torch.Tensor, num_classes: int, geometry: OracleGeometry, *,
                      ignore_index: int = 255) -> torch.Tensor:
    """(H, W) labels -> (H, W) long: the patch-resolution oracle's class map (see the module docstring)."""
    height, width = label.shape
    size = resized_shape(height, width, geometry.short_side)
    lab = label.float()[None, None]
    if size != (height, width):
        lab = F.interpolate(lab, size=size, mode="nearest")

    def votes(crops: torch.Tensor) -> torch.Tensor:
        return patch_votes(crops, num_classes, geometry.patch_size, ignore_index=ignore_index, pad=geometry.pad)

    logits = slide_logits(votes, lab, num_classes, crop=geometry.crop, stride=geometry.stride)  # (C, h, w)
    logits = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return logits.argmax(dim=0)


class SegReferences:
    """Running constant-predictor and patch-oracle scores over a dataset's label maps."""

    def __init__(self, num_classes: int, geometry: OracleGeometry, *, background: int | None = None,
                 ignore_index: int = 255):
        if background is not None and not 0 <= background < num_classes:
            raise ValueError(f"background class {background} is not one of the {num_classes} classes")
        self.num_classes = num_classes
        self.geometry = geometry
        self.background = background
        self.ignore_index = ignore_index
        self.oracle = SegHistogram(num_classes, ignore_index)
        self._label_counts: list[torch.Tensor] = []  # per image: labelled pixels of each class

    def update(self, label: torch.Tensor) -> None:
        """Add one (H, W) label map."""
        label = label.cpu()
        self.oracle.update(oracle_prediction(label, self.num_classes, self.geometry,
                                             ignore_index=self.ignore_index), label)
        keep = (label != self.ignore_index) & (label >= 0) & (label < self.num_classes)
        self._label_counts.append(torch.bincount(label[keep].long(), minlength=self.num_classes))

    def constant_class(self) -> int:
        """The class the constant predictor paints: the background, else the most frequent labelled class."""
        if self.background is not None:
            return self.background
        if not self._label_counts:
            raise ValueError("no label map was added")
        return int(torch.stack(self._label_counts).sum(dim=0).argmax())

    def constant(self) -> SegHistogram:
        """The constant predictor's histogram: each image's labelled pixels scored against that one class."""
        k = self.constant_class()
        hist = SegHistogram(self.num_classes, self.ignore_index)
        for counts in self._label_counts:  # a constant prediction's score depends only on how many of each label
            label = torch.repeat_interleave(torch.arange(self.num_classes), counts)
            hist.update(torch.full_like(label, k), label)
        return hist

    def summary(self) -> dict[str, float]:
        """background_mIoU, background_aAcc (the constant predictor), oracle_mIoU, oracle_aAcc, in percent."""
        const, oracle = self.constant().summary(), self.oracle.summary()
        return {"background_mIoU": const["mIoU"], "background_aAcc": const["aAcc"],
                "oracle_mIoU": oracle["mIoU"], "oracle_aAcc": oracle["aAcc"]}


def geometry_of(patch_size: int, settings) -> OracleGeometry:
    """The oracle's geometry for a model's patch size and a method's ``SegSettings`` (the same windows)."""
    return OracleGeometry(patch_size=patch_size, short_side=settings.short_side, crop=settings.crop,
                          stride=settings.stride, pad=settings.pad_windows and settings.crop > 0)


def reference_scores(dataset, patch_size: int, settings, *, resize_masks: bool = False) -> dict[str, float]:
    """The two references of a ``SegDataset`` read from its label maps alone (no model): see ``SegReferences``.

    Masks of another size than their image are resized to it (nearest) only with ``resize_masks``, as
    ``evaluate`` does; the image files are opened for their size only then.
    """
    import numpy as np
    from PIL import Image

    from un2clip.eval.seg.datasets import read_label

    refs = SegReferences(dataset.num_classes, geometry_of(patch_size, settings), background=dataset.background)
    for image, path in zip(dataset.images, dataset.labels):
        try:
            label = read_label(path, dataset.reduce_zero_label)
        except (OSError, ValueError):
            continue
        if resize_masks:
            with Image.open(image) as im:
                if im.size != (label.shape[1], label.shape[0]):
                    label = np.asarray(Image.fromarray(label).resize(im.size, Image.NEAREST))
        refs.update(torch.from_numpy(np.array(label)))  # a writable copy
    return refs.summary()
