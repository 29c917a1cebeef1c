"""Zero-shot monocular depth with a frozen CLIP: DepthCLIP (Zhang et al., ACM MM 2022).

Every patch feature of the image (joint space, L2-normalised) is compared with the text embeddings of
seven distance words in "This object is {}" prompts; a softmax over the words at temperature 0.1
(logits = 100 x cosine / 0.1) weights DepthCLIP's bin depths (1.00 ... 3.00 m), and the patch grid of
depths is upsampled bilinearly to the ground truth's size. Metrics as NYU-Depth-v2 papers report them
(BTS / AdaBins evaluation), each per image over the valid pixels and then averaged over images:
``delta1`` (fraction of pixels with max(pred/gt, gt/pred) < 1.25; also ``delta2``, ``delta3``),
``abs_rel`` (mean |pred - gt| / gt), ``rmse`` (metres), ``log10`` (mean |log10 pred - log10 gt|).

Layouts: ``DIR/images/<name>.<jpg|png>`` with ``DIR/depths/<name>.png``, or BTS's NYUv2 export
(``rgb_<n>.jpg`` next to ``sync_depth_<n>.png``, any folder depth). Depth PNGs are 16-bit, metres =
value / depth scale (NYUv2 exports: 1000; ``DIR/depth_scale.txt`` or the option overrides); zero is
"no measurement".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from un2clip.data import transforms as T
from un2clip.data.sources import decode_image, is_image_name
from un2clip.eval.core.embed import embed_texts, inference_context

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

DEPTH_WORDS = ("giant", "extremely close", "close", "not in distance", "a little remote", "far", "unseen")
BIN_DEPTHS = (1.00, 1.50, 2.00, 2.25, 2.50, 2.75, 3.00)  # metres, DepthCLIP's bins for the seven words
DEPTH_TEMPLATE = "This object is {}"  # DepthCLIP: "This {} is {}" with the object word "object"
TEMPERATURE = 0.1
EIGEN_CROP = (45, 471, 41, 601)  # rows, columns of NYUv2's 480 x 640 frames (Eigen et al.)
LAYOUT = ("expected DIR/images/<name>.<jpg|png> with DIR/depths/<name>.png (16-bit), or BTS's NYUv2 export "
          "(rgb_<n>.jpg beside sync_depth_<n>.png)")


# -- pure math -----------------------------------------------------------------------------------------


def depthclip_depth(patch_embeds: torch.Tensor, word_embeds: torch.Tensor, bins: Sequence[float] = BIN_DEPTHS, *,
                    temperature: float = TEMPERATURE) -> torch.Tensor:
    """(..., D) unit patch embeddings, (K, D) unit distance-word embeddings -> (...) depth in the bins' unit."""
    logits = 100.0 * patch_embeds @ word_embeds.T / temperature  # (..., K)
    bins_t = torch.as_tensor(bins, dtype=logits.dtype, device=logits.device)
    return (logits.softmax(dim=-1) * bins_t).sum(dim=-1)


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """One image's metrics over ``valid`` pixels (default gt > 0): delta1/2/3, abs_rel, rmse, log10."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    valid = gt > 0 if valid is None else valid & (gt > 0)
    p, g = pred[valid].double(), gt[valid].double()
    if p.numel() == 0:
        raise ValueError("no valid ground-truth pixels to score")
    if (p <= 0).any():
        raise ValueError("predicted depths must be positive")
    ratio = torch.maximum(p / g, g / p)
    return {"delta1": float((ratio < 1.25).double().mean()), "delta2": float((ratio < 1.25 ** 2).double().mean()),
            "delta3": float((ratio < 1.25 ** 3).double().mean()), "abs_rel": float(((p - g).abs() / g).mean()),
            "rmse": float(((p - g) ** 2).mean().sqrt()), "log10": float((p.log10() - g.log10()).abs().mean())}


def mean_metrics(per_image: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over images."""
    if not per_image:
        raise ValueError("no images scored")
    return {k: float(np.mean([m[k] for m in per_image])) for k in per_image[0]}


# -- data ----------------------------------------------------------------------------------------------


@dataclass
class DepthSet:
    """Image and depth-map pairs; depths in metres = PNG value / ``depth_scale``."""

    pairs: list[tuple[Path, Path]]
    depth_scale: float


def read_depth_set(data: str | Path, *, depth_scale: float | None = None) -> DepthSet:
    """Pair the images of ``data`` with their depth PNGs (see the module's layouts); an image without its
    depth map is an error naming both paths."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; {LAYOUT}")
    pairs: list[tuple[Path, Path]] = []
    if (root / "images").is_dir():
        for name in sorted(n for n in os.listdir(root / "images") if is_image_name(n)):
            depth = root / "depths" / (os.path.splitext(name)[0] + ".png")
            if not depth.is_file():
                raise FileNotFoundError(f"{root / 'images' / name} has no depth map {depth}; {LAYOUT}")
            pairs.append((root / "images" / name, depth))
    else:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith("rgb_") and is_image_name(name):
                    depth = Path(dirpath) / ("sync_depth_" + os.path.splitext(name)[0][4:] + ".png")
                    if not depth.is_file():
                        raise FileNotFoundError(f"{Path(dirpath) / name} has no depth map {depth}; {LAYOUT}")
                    pairs.append((Path(dirpath) / name, depth))
    if not pairs:
        raise ValueError(f"{root} holds no image + depth pairs; {LAYOUT}")
    if depth_scale is None:
        scale_file = root / "depth_scale.txt"
        depth_scale = float(scale_file.read_text().strip()) if scale_file.is_file() else 1000.0
    if depth_scale <= 0:
        raise ValueError(f"depth scale must be positive, got {depth_scale}")
    return DepthSet(pairs, float(depth_scale))


def read_depth_png(path: Path, scale: float) -> torch.Tensor:
    """(H, W) float32 metres from a 16-bit (or 8-bit) single-channel PNG; a clear error for anything else."""
    try:
        with Image.open(path) as im:
            im.load()
            array = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - any decoder failure: name the file
        raise ValueError(f"depth map {path} cannot be read ({e})") from None
    if array.ndim != 2:
        raise ValueError(f"depth map {path} has {array.shape[-1]} channels; expected a single-channel 16-bit PNG")
    return torch.from_numpy(array.astype(np.float32) / scale)


# -- model ---------------------------------------------------------------------------------------------


def model_input(image: Image.Image, model: ClipModel, short_side: int) -> torch.Tensor:
    """(1, 3, H, W): the image resized so its short side is ``short_side``, both sides multiples of the patch."""
    p = model.patch_size
    scale = short_side / min(image.width, image.height)
    w = max(p, int(round(image.width * scale / p)) * p)
    h = max(p, int(round(image.height * scale / p)) * p)
    resized = image.resize((w, h), Image.BICUBIC)
    return T.normalize(T.pil_to_tensor(resized), model.processing.mean, model.processing.std)[None]


def predict_depth(model: ClipModel, image: Image.Image, word_embeds: torch.Tensor, size: tuple[int, int], *,
                  short_side: int, bins: Sequence[float] = BIN_DEPTHS) -> torch.Tensor:
    """(H, W) DepthCLIP depth of ``image`` upsampled bilinearly to ``size`` (H, W)."""
    x = model_input(image, model, short_side)  # (1, 3, h * p, w * p)
    h, w = x.shape[-2] // model.patch_size, x.shape[-1] // model.patch_size
    tokens = F.normalize(model.image_tokens(x.to(model.device)).float(), dim=-1).cpu()  # (1, h * w, D)
    depth = depthclip_depth(tokens.reshape(1, h, w, -1), word_embeds, bins)  # (1, h, w)
    return F.interpolate(depth[:, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def evaluate(model: ClipModel, data: str | Path, *, depth_scale: float | None = None, min_depth: float = 1e-3,
             max_depth: float = 10.0, eigen_crop: bool = False, short_side: int | None = None,
             precision: str = "auto", progress: bool = True) -> dict[str, float]:
    """delta1/2/3, abs_rel, rmse, log10 averaged over images (predictions clamped to [min, max] depth, pixels
    with ground truth in (min, max) scored), and counts of images and skipped unreadable images."""
    model.eval()
    ds = read_depth_set(data, depth_scale=depth_scale)
    word_embeds = embed_texts(model, [DEPTH_TEMPLATE.format(w) for w in DEPTH_WORDS], precision=precision,
                              progress=False)  # (7, D)
    side = short_side or model.image_size
    per_image, skipped = [], 0
    with inference_context(model.device, precision):
        for image_path, depth_path in tqdm(ds.pairs, desc="depth images", disable=not progress, leave=False):
            image = decode_image(image_path)
            if image is None:
                skipped += 1
                continue
            gt = read_depth_png(depth_path, ds.depth_scale)
            if tuple(gt.shape) != (image.height, image.width):
                raise ValueError(f"depth map {depth_path} is {gt.shape[1]}x{gt.shape[0]} but its image {image_path} "
                                 f"is {image.width}x{image.height}")
            pred = predict_depth(model, image, word_embeds, tuple(gt.shape), short_side=side)
            valid = (gt > min_depth) & (gt < max_depth)
            if eigen_crop:
                crop = torch.zeros_like(valid)
                r0, r1, c0, c1 = EIGEN_CROP
                crop[r0:r1, c0:c1] = True
                valid &= crop
            if not valid.any():
                raise ValueError(f"depth map {depth_path} has no pixel within ({min_depth}, {max_depth}) m")
            per_image.append(depth_metrics(pred.clamp(min_depth, max_depth), gt, valid))
    if not per_image:
        raise ValueError(f"none of the {len(ds.pairs)} images of {data} could be read")
    return {**mean_metrics(per_image), "n_images": len(per_image), "n_skipped_images": skipped}
