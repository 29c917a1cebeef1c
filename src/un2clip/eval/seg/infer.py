"""Dense prediction: text classifier, sliding-window logits, per-pixel classes.

The protocol of MaskCLIP / SCLIP / ClearCLIP / NACLIP on mmsegmentation:

1. text classifier: every name of every class filled into the 80 ImageNet templates,
   each prompt embedding L2-normalised, averaged over templates, normalised again ->
   one query per name (Q >= C);
2. the image resized so that its short side is ``short_side`` (long side at most 2048, as
   mmsegmentation's ``Resize(scale=(2048, short_side), keep_ratio=True)``) with OpenCV's
   bilinear resize of the uint8 image, as mmcv does, then normalised with the model's mean/std;
3. sliding windows (mmsegmentation's grid: the last window of a row or column is shifted
   back inside the image), or the whole image as one window; a window's patch features
   (``heads.dense_features``; rows and columns past the last whole patch are dropped by the
   patch embedding, as in the reference repos) compared with the queries (cosine) and
   upsampled bilinearly to the window; overlapping windows averaged. ClearCLIP instead pads
   each sliding window with zeros to a multiple of the patch (centred) and cuts the padding
   off the upsampled logits (``pad=True``);
4. logits upsampled bilinearly to the label map's size; optionally refined there by PAMR
   (``pamr``, the post-processing SCLIP and NACLIP offer, dilations (8, 16)); times
   ``logit_scale``, softmax over all Q names; a class's probability is the max over its
   names; argmax; pixels whose top probability is under ``prob_threshold`` become background.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from un2clip.eval.encoder.zeroshot import (  # the prompts CLIP and the eval suite use
    fill_template,
    imagenet_templates,
)
from un2clip.eval.seg.heads import HeadSpec, dense_features

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

MAX_LONG_SIDE = 2048


def read_templates(path: str | Path) -> list[str]:
    """Prompt templates from a text file, one per line, ``{c}`` (or ``{}``) where the name goes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected prompt templates, one per line with {{c}}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no templates")
    for line in lines:
        fill_template(line, "x")  # every line must have a place for the name
    return lines


PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision a run uses: ``auto`` is fp16 on CUDA and fp32 elsewhere, as the reference repos run.

    SCLIP and NACLIP load CLIP with OpenAI's ``clip.load``, whose weights are half precision on
    CUDA and float32 on the CPU; ClearCLIP builds it with ``precision='fp16'``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    return precision


@contextlib.contextmanager
def inference_context(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """``torch.inference_mode()``, with fp16 or bf16 autocast as ``resolve_precision`` decides.

    Autocast runs matrix products in half precision and keeps norms and softmax in float32:
    close to, not bit-equal with, the references' half-precision weights.
    """
    used = resolve_precision(device, precision)
    with torch.inference_mode():
        if used in _AUTOCAST:
            with torch.autocast(device_type=torch.device(device).type, dtype=_AUTOCAST[used]):
                yield
        else:
            yield


# -- text ------------------------------------------------------------------------------------------------


@dataclass
class TextClassifier:
    """One L2-normalised query embedding per class name, and the class each name belongs to."""

    queries: torch.Tensor  # (Q, D) float32
    query_class: torch.Tensor  # (Q,) long, values in [0, C)
    num_classes: int

    def without_class(self, c: int) -> TextClassifier:
        """The same classifier with class ``c``'s names dropped: ``c`` keeps its index and gets probability 0."""
        keep = self.query_class != c
        if not bool(keep.any()):
            raise ValueError(f"class {c} is the only class with names")
        return TextClassifier(self.queries[keep], self.query_class[keep], self.num_classes)


def text_classifier(model: ClipModel, classes: Sequence[Sequence[str]], templates: Sequence[str] | None = None, *,
                    batch_size: int = 256, precision: str = "auto") -> TextClassifier:
    """Per class, per name: mean of the normalised template embeddings, normalised."""
    templates = list(templates) if templates is not None else imagenet_templates()
    if not templates:
        raise ValueError("no prompt templates")
    names = [n for names in classes for n in names]
    owner = [c for c, names in enumerate(classes) for _ in names]
    if not names or len(set(owner)) != len(classes):
        raise ValueError("every class needs at least one name")
    prompts = [fill_template(t, n) for n in names for t in templates]
    chunks = []
    with inference_context(model.device, precision):
        for start in range(0, len(prompts), batch_size):
            emb = model.encode_text(prompts[start:start + batch_size]).float()  # (b, D)
            chunks.append(F.normalize(emb, dim=-1))
    per_prompt = torch.cat(chunks).reshape(len(names), len(templates), -1)  # (Q, T, D)
    queries = F.normalize(per_prompt.mean(dim=1), dim=-1)  # (Q, D)
    return TextClassifier(queries.clone(), torch.tensor(owner, dtype=torch.long), len(classes))


# -- geometry ----------------------------------------------------------------------------------------------


def resized_shape(height: int, width: int, short_side: int, max_long: int = MAX_LONG_SIDE) -> tuple[int, int]:
    """mmsegmentation's keep-ratio rescale to ``(max_long, short_side)``: one factor, sides rounded."""
    if short_side <= 0:
        return height, width
    scale = min(max_long / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_uint8(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, h, w) uint8 with OpenCV's INTER_LINEAR, as mmcv's ``imresize`` does."""
    import cv2  # opencv-python-headless, a dependency of the segmentation evaluation

    if pixels.dtype != torch.uint8 or pixels.dim() != 3:
        raise ValueError(f"resize_uint8 expects a (3, H, W) uint8 image, got {tuple(pixels.shape)} {pixels.dtype}")
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    hwc = pixels.permute(1, 2, 0).cpu().numpy()
    out = cv2.resize(np.ascontiguousarray(hwc), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out).permute(2, 0, 1).to(pixels.device)


def prepare_image(pixels: torch.Tensor, short_side: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) uint8 -> (1, 3, h, w) float normalised model input, resized to ``short_side`` as mmcv does."""
    size = resized_shape(pixels.shape[-2], pixels.shape[-1], short_side)
    x = resize_uint8(pixels, size).float().unsqueeze(0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
    return (x - m) / s


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of mmsegmentation's sliding windows; windows never leave the image."""
    def starts(size: int) -> list[tuple[int, int]]:
        n = max(size - crop + stride - 1, 0) // stride + 1
        spans = []
        for i in range(n):
            end = min(i * stride + crop, size)
            spans.append((max(end - crop, 0), end))
        return spans

    return [(y1, y2, x1, x2) for y1, y2 in starts(height) for x1, x2 in starts(width)]


def padding_to_multiple(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that makes both sides multiples of ``multiple``, centred."""
    pad_w, pad_h = (-width) % multiple, (-height) % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


# -- logits ----------------------------------------------------------------------------------------------


def window_logits(model: ClipModel, crops: torch.Tensor, queries: torch.Tensor, head: str | HeadSpec, *,
                  gaussian_std: float = 5.0, pad: bool = False) -> torch.Tensor:
    """(B, 3, h, w) windows -> (B, Q, h, w) cosine similarities of patch features and queries.

    Without ``pad`` (SCLIP, NACLIP, and every reference's whole-image path) the patch grid is
    (h // p, w // p): the rows and columns past the last whole patch are dropped, and the grid's
    logits are stretched over the whole window. With ``pad`` (ClearCLIP's sliding window) the
    window is zero-padded to a multiple of the patch, centred, and the padding cut afterwards.
    """
    h, w = crops.shape[-2:]
    left, right, top, bottom = padding_to_multiple(h, w, model.patch_size) if pad else (0, 0, 0, 0)
    if left or right or top or bottom:
        crops = F.pad(crops, (left, right, top, bottom))
    feats = dense_features(model, crops, head, gaussian_std=gaussian_std)  # (B, gh, gw, D)
    logits = torch.einsum("bhwd,qd->bqhw", feats, queries.to(feats.device, feats.dtype))
    logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
    return logits[:, :, top:top + h, left:left + w]


def slide_logits(logits_fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, num_queries: int, *,
                 crop: int, stride: int, batch_size: int = 16) -> torch.Tensor:
    """(1, 3, H, W) -> (Q, H, W): ``logits_fn`` on each window ((B, 3, h, w) -> (B, Q, h, w)), averaged.

    ``crop`` 0 runs the whole image at once.
    """
    height, width = image.shape[-2:]
    if crop <= 0:
        return logits_fn(image)[0].float()
    boxes = window_boxes(height, width, crop, stride)
    total = torch.zeros(num_queries, height, width, device=image.device)
    count = torch.zeros(1, height, width, device=image.device)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        crops = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])  # all windows share a size
        out = logits_fn(crops).float()  # (b, Q, h, w)
        for (y1, y2, x1, x2), logits in zip(chunk, out):
            total[:, y1:y2, x1:x2] += logits
            count[:, y1:y2, x1:x2] += 1
    return total / count


PAMR_DILATIONS = (8, 16)  # SCLIP's and NACLIP's pamr_stride
_RING = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _neighbours(x: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> Iterator[torch.Tensor]:
    """x (B, C, H, W) read at (y + dy, x + dx) for each offset, edges replicated."""
    h, w = x.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    for dy, dx in offsets:
        yield padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def pamr(image: torch.Tensor, logits: torch.Tensor, *, steps: int = 10,
         dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020) of (B, Q, H, W) ``logits``.

    Each pixel's neighbours are the 8 pixels of the 3 x 3 ring at each dilation. Their weights
    come from the image (resized to H x W): per channel, minus the absolute colour difference
    divided by 0.1 x the standard deviation of the 3 x 3 windows (centre included) over all
    dilations; averaged over channels; softmax over the neighbours. ``steps`` times, every
    pixel's logits become the weighted mean of its neighbours'. Edges are replicated.
    ``dilations`` default to (8, 16), SCLIP's and NACLIP's ``pamr_stride`` (PAMR's own code
    defaults to (1,); NACLIP's visualisation uses (1, 2, 4, 8, 12, 24)).
    """
    if logits.dim() != 4 or image.dim() != 4:
        raise ValueError("pamr expects (B, 3, H, W) images and (B, Q, H, W) logits")
    if steps <= 0:
        return logits
    size = logits.shape[-2:]
    image = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False)
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in _RING]
    window = torch.stack([image, *_neighbours(image, offsets)], dim=2)
    # the windows of all dilations, each with its centre: 1 + 8 per dilation, the centre counted once per dilation
    centre_repeats = torch.cat([window[:, :, :1]] * (len(dilations) - 1) + [window], dim=2)
    spread = centre_repeats.std(dim=2)  # (B, 3, H, W)
    diffs = (window[:, :, 1:] - image[:, :, None]).abs()  # (B, 3, K, H, W)
    scores = (-diffs / (1e-8 + 0.1 * spread[:, :, None])).mean(dim=1)  # (B, K, H, W)
    weights = scores.softmax(dim=1)
    out = logits.float()
    for _ in range(steps):
        out = sum(weights[:, k:k + 1] * shifted for k, shifted in enumerate(_neighbours(out, offsets)))
    return out.to(logits.dtype)


def class_probabilities(logits: torch.Tensor, query_class: torch.Tensor, num_classes: int,
                        logit_scale: float) -> torch.Tensor:
    """(Q, H, W) logits -> (C, H, W): softmax over all names, a class's probability the max over its names."""
    probs = torch.softmax(logits.float() * logit_scale, dim=0)
    if len(query_class) == num_classes and bool((query_class == torch.arange(num_classes)).all()):
        return probs
    out = probs.new_zeros((num_classes, *probs.shape[1:]))  # a class without names keeps probability 0
    owner = query_class.tolist()
    for c in range(num_classes):
        if idx := [q for q, o in enumerate(owner) if o == c]:
            out[c] = probs[idx].amax(dim=0)
    return out


def predict_classes(probs: torch.Tensor, *, prob_threshold: float = 0.0, area_threshold: float = 0.0,
                    background: int | None = None) -> torch.Tensor:
    """(C, H, W) class probabilities -> (H, W) long class indices.

    ``area_threshold``: SCLIP's rule; foreground classes predicted on at most this fraction
    of the foreground pixels get probability 0. ``prob_threshold``: pixels whose top
    probability is under it become ``background``.
    """
    if (prob_threshold > 0 or area_threshold > 0) and background is None:
        raise ValueError("prob_threshold and area_threshold need a dataset with a background class")
    if area_threshold > 0:
        num_classes = probs.shape[0]
        fg = [c for c in range(num_classes) if c != background]
        area = torch.bincount(probs.argmax(dim=0).flatten(), minlength=num_classes)[fg].float()
        small = area <= area_threshold * area.sum()
        probs = probs.clone()
        probs[torch.tensor(fg, device=probs.device)[small.to(probs.device)]] = 0.0
    top, pred = probs.max(dim=0)
    if prob_threshold > 0:
        pred = torch.where(top < prob_threshold, torch.full_like(pred, background), pred)
    return pred
