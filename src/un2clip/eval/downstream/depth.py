"""Zero-shot monocular depth with a frozen CLIP: DepthCLIP (Zhang et al., ACM MM 2022).

Every patch feature of the image (joint space, L2-normalised) is compared with the text embeddings of
seven distance words in "This object is {}" prompts; a softmax over the words at temperature 0.1
(logits = 100 x cosine / 0.1) weights DepthCLIP's bin depths (1.00 ... 3.00 m).

The input follows DepthCLIP's NYUv2 evaluation by default (``input="depthclip"``): a 480 x 640 frame is
cropped to rows 56-471 and columns 60-603 (416 x 544) and fed at that native resolution, normalised with
ImageNet's mean and std (what its loader does); another size is fed whole at native resolution. The grid of
depths is averaged with that of the horizontally flipped input (flipped back), upsampled bilinearly with
``align_corners=True`` over the crop, and only the crop is scored; a 480 x 640 frame is scored inside the
Eigen crop (rows 45-470, columns 46-600; with the input crop that leaves columns 60-600). Our alternative
(``input="resize"``): the image resized to a short side, CLIP's mean and std, the depth upsampled over the
whole frame; ``flip`` and ``align_corners`` are options of their own.

Metrics as NYU-Depth-v2 papers report them (BTS / AdaBins evaluation), each per image over the valid pixels
and then averaged over images: ``delta1`` (fraction of pixels with max(pred/gt, gt/pred) < 1.25; also
``delta2``, ``delta3``), ``abs_rel`` (mean |pred - gt| / gt), ``sq_rel`` (mean (pred - gt)^2 / gt),
``rmse`` (metres), ``rmse_log`` (root mean square of ln pred - ln gt), ``log10`` (mean |log10 pred - log10
gt|), ``silog`` (100 sqrt(mean(e^2) - mean(e)^2), e = ln pred - ln gt).

Layouts: ``DIR/images/<name>.<jpg|png>`` with ``DIR/depths/<name>.png``, or BTS's NYUv2 export
(``rgb_<n>.jpg`` next to ``sync_depth_<n>.png``, any folder depth). Depth PNGs are 16-bit, metres =
value / depth scale (NYUv2 exports: 1000; ``DIR/depth_scale.txt`` or the option overrides); zero is
"no measurement". An 8-bit PNG is refused naming the file (its 0-255 values are no depth unit we can
tell), as is a ``depth_scale.txt`` that is not one positive number.
"""

from __future__ import annotations

import math
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
from un2clip.data.sources import IMAGE_EXTENSIONS, decode_image
from un2clip.eval.core.embed import embed_texts, inference_context
from un2clip.eval.core.metrics import depth_metrics, mean_metrics
from un2clip.eval.downstream.common import report_skipped

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

DEPTH_WORDS = ("giant", "extremely close", "close", "not in distance", "a little remote", "far", "unseen")
BIN_DEPTHS = (1.00, 1.50, 2.00, 2.25, 2.50, 2.75, 3.00)  # metres, DepthCLIP's bins for the seven words
DEPTH_TEMPLATE = "This object is {}"  # DepthCLIP: "This {} is {}" with the object word "object"
TEMPERATURE = 0.1
EIGEN_CROP = (45, 471, 46, 601)  # rows, columns of NYUv2's 480 x 640 frames scored (DepthCLIP's compute_errors_NYU)
NYU_SIZE = (480, 640)  # (H, W) of the frames the crops are for
DEPTHCLIP_CROP = (56, 472, 60, 604)  # rows, columns of the 416 x 544 input DepthCLIP feeds (its test loader)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DepthCLIP's input normalisation
INPUTS = ("depthclip", "resize")
EIGEN_MODES = ("auto", "on", "off")
LAYOUT = ("expected DIR/images/<name>.<jpg|png> with DIR/depths/<name>.png (16-bit), or BTS's NYUv2 export "
          "(rgb_<n>.jpg beside sync_depth_<n>.png)")


# -- pure math -----------------------------------------------------------------------------------------


def depthclip_depth(patch_embeds: torch.Tensor, word_embeds: torch.Tensor, bins: Sequence[float] = BIN_DEPTHS, *,
                    temperature: float = TEMPERATURE) -> torch.Tensor:
    """(..., D) unit patch embeddings, (K, D) unit distance-word embeddings -> (...) depth in the bins' unit."""
    logits = 100.0 * patch_embeds @ word_embeds.T / temperature  # (..., K)
    bins_t = torch.as_tensor(bins, dtype=logits.dtype, device=logits.device)
    return (logits.softmax(dim=-1) * bins_t).sum(dim=-1)


# -- data ----------------------------------------------------------------------------------------------


@dataclass
class DepthSet:
    """Image and depth-map pairs; depths in metres = PNG value / ``depth_scale``."""

    pairs: list[tuple[Path, Path]]
    depth_scale: float


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_depth_set(data: str | Path, *, depth_scale: float | None = None) -> DepthSet:
    """Pair the images of ``data`` with their depth PNGs (see the module's layouts); an image without its
    depth map is an error naming both paths."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; {LAYOUT}")
    pairs: list[tuple[Path, Path]] = []
    if (root / "images").is_dir():
        for name in sorted(n for n in os.listdir(root / "images") if _is_image(n)):
            depth = root / "depths" / (os.path.splitext(name)[0] + ".png")
            if not depth.is_file():
                raise FileNotFoundError(f"{root / 'images' / name} has no depth map {depth}; {LAYOUT}")
            pairs.append((root / "images" / name, depth))
    else:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith("rgb_") and _is_image(name):
                    depth = Path(dirpath) / ("sync_depth_" + os.path.splitext(name)[0][4:] + ".png")
                    if not depth.is_file():
                        raise FileNotFoundError(f"{Path(dirpath) / name} has no depth map {depth}; {LAYOUT}")
                    pairs.append((Path(dirpath) / name, depth))
    if not pairs:
        raise ValueError(f"{root} holds no image + depth pairs; {LAYOUT}")
    if depth_scale is None:
        scale_file = root / "depth_scale.txt"
        depth_scale = read_depth_scale(scale_file) if scale_file.is_file() else 1000.0
    if not (math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth scale must be a positive number, got {depth_scale}")
    return DepthSet(pairs, float(depth_scale))


def read_depth_scale(path: Path) -> float:
    """The one positive number of a ``depth_scale.txt`` (PNG value per metre); an error naming the file."""
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path} must hold one number, the PNG value per metre (e.g. 1000), got "
                         f"{text[:40]!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{path} must hold a positive number (the PNG value per metre), got {text[:40]!r}")
    return value


def read_depth_png(path: Path, scale: float) -> torch.Tensor:
    """(H, W) float32 metres from a 16-bit single-channel PNG; an 8-bit or multi-channel map is an error naming
    the file (8-bit values are no unit we can read as depth)."""
    try:
        with Image.open(path) as im:
            im.load()
            array = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - any decoder failure: name the file
        raise ValueError(f"depth map {path} cannot be read ({e})") from None
    if array.ndim != 2:
        raise ValueError(f"depth map {path} has {array.shape[-1]} channels; expected a single-channel 16-bit PNG")
    if array.dtype.itemsize < 2 or array.dtype == np.bool_:
        raise ValueError(f"depth map {path} is {8 * array.dtype.itemsize if array.dtype != np.bool_ else 1}-bit; "
                         "expected a 16-bit PNG (value / depth scale = metres, NYUv2 exports 16-bit millimetres): "
                         "an 8-bit map holds no depth unit that can be read")
    return torch.from_numpy(array.astype(np.float32) / scale)


# -- model ---------------------------------------------------------------------------------------------


def model_input(image: Image.Image, model: ClipModel, short_side: int) -> torch.Tensor:
    """(1, 3, H, W): the image resized so its short side is ``short_side``, both sides multiples of the patch,
    normalised with the model's mean and std (``input="resize"``)."""
    p = model.patch_size
    scale = short_side / min(image.width, image.height)
    w = max(p, int(round(image.width * scale / p)) * p)
    h = max(p, int(round(image.height * scale / p)) * p)
    resized = image.resize((w, h), Image.BICUBIC)
    return T.normalize(T.pil_to_tensor(resized), model.processing.mean, model.processing.std)[None]


def input_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the region DepthCLIP feeds: its 416 x 544 crop of a 480 x 640 frame, the
    whole image for any other size."""
    return DEPTHCLIP_CROP if (height, width) == NYU_SIZE else (0, height, 0, width)


def depthclip_input(image: Image.Image, patch: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(1, 3, h, w) DepthCLIP input of ``image`` and the (top, bottom, left, right) region it covers: the
    :func:`input_crop` at native resolution, ImageNet mean and std; sides cut down to multiples of ``patch``
    (as a patch convolution drops the leftover), the region still the whole crop."""
    top, bottom, left, right = input_crop(image.height, image.width)
    x = T.pil_to_tensor(T.to_rgb(image))[:, top:bottom, left:right]
    h, w = max(patch, (x.shape[1] // patch) * patch), max(patch, (x.shape[2] // patch) * patch)
    if h > x.shape[1] or w > x.shape[2]:
        raise ValueError(f"an image of {image.width}x{image.height} is smaller than one {patch}-pixel patch")
    return T.normalize(x[:, :h, :w], IMAGENET_MEAN, IMAGENET_STD)[None], (top, bottom, left, right)


def grid_depth(model: ClipModel, x: torch.Tensor, word_embeds: torch.Tensor, bins: Sequence[float] = BIN_DEPTHS,
               *, flip: bool = False) -> torch.Tensor:
    """(1, h, w) DepthCLIP depth of the patch grid of input ``x``; with ``flip`` averaged with the depth of the
    horizontally flipped input, flipped back (DepthCLIP's test-time flip)."""
    h, w = x.shape[-2] // model.patch_size, x.shape[-1] // model.patch_size

    def one(inp: torch.Tensor) -> torch.Tensor:
        tokens = F.normalize(model.image_tokens(inp.to(model.device)).float(), dim=-1).cpu()  # (1, h * w, D)
        return depthclip_depth(tokens.reshape(1, h, w, -1), word_embeds, bins)  # (1, h, w)

    depth = one(x)
    return 0.5 * (depth + one(x.flip(-1)).flip(-1)) if flip else depth


def upsample(depth: torch.Tensor, size: tuple[int, int], *, align_corners: bool = True) -> torch.Tensor:
    """(1, h, w) grid depth -> (H, W), bilinear (DepthCLIP: ``align_corners=True``)."""
    return F.interpolate(depth[:, None], size=size, mode="bilinear", align_corners=align_corners)[0, 0]


def predict_depth(model: ClipModel, image: Image.Image, word_embeds: torch.Tensor, size: tuple[int, int], *,
                  short_side: int, bins: Sequence[float] = BIN_DEPTHS, input: str = "resize", flip: bool = False,
                  align_corners: bool = False) -> torch.Tensor:
    """(H, W) DepthCLIP depth of ``image`` at ``size`` (H, W). ``input="depthclip"``: only the fed crop holds a
    prediction (:func:`depthclip_input`), 0 elsewhere (not scored); ``resize``: the whole frame."""
    if input not in INPUTS:
        raise ValueError(f"unknown depth input {input!r}; known: {', '.join(INPUTS)}")
    if input == "resize":
        x = model_input(image, model, short_side)  # (1, 3, h * p, w * p)
        return upsample(grid_depth(model, x, word_embeds, bins, flip=flip), size, align_corners=align_corners)
    if size != (image.height, image.width):
        raise ValueError(f"depthclip input predicts at the image's size {image.height}x{image.width}, asked {size}")
    x, (top, bottom, left, right) = depthclip_input(image, model.patch_size)
    out = torch.zeros(size)
    out[top:bottom, left:right] = upsample(grid_depth(model, x, word_embeds, bins, flip=flip),
                                           (bottom - top, right - left), align_corners=align_corners)
    return out


def score_mask(gt: torch.Tensor, *, min_depth: float, max_depth: float, eigen_crop: str, where: Path) -> torch.Tensor:
    """Pixels scored: ground truth in (min, max) depth, inside the Eigen crop when it applies (``auto``: on for a
    480 x 640 map, off otherwise; ``on``: a map of another size is an error naming the file; ``off``)."""
    if eigen_crop not in EIGEN_MODES:
        raise ValueError(f"unknown eigen_crop {eigen_crop!r}; known: {', '.join(EIGEN_MODES)}")
    valid = (gt > min_depth) & (gt < max_depth)
    nyu = tuple(gt.shape) == NYU_SIZE
    if eigen_crop == "on" and not nyu:
        raise ValueError(f"depth map {where} is {gt.shape[1]}x{gt.shape[0]}; the Eigen crop is for NYUv2's 640x480 "
                         "frames (eigen_crop auto / --eigen-crop auto scores other sizes whole)")
    if nyu and eigen_crop != "off":
        crop = torch.zeros_like(valid)
        r0, r1, c0, c1 = EIGEN_CROP
        crop[r0:r1, c0:c1] = True
        valid &= crop
    return valid


def evaluate(model: ClipModel, data: str | Path, *, depth_scale: float | None = None, min_depth: float = 1e-3,
             max_depth: float = 10.0, eigen_crop: str | bool = "auto", input: str = "depthclip", flip: bool = True,
             align_corners: bool = True, short_side: int | None = None, precision: str = "auto",
             progress: bool = True) -> dict[str, float]:
    """delta1/2/3, abs_rel, sq_rel, rmse, rmse_log, log10, silog averaged over images (predictions clamped to
    [min, max] depth, pixels with ground truth in (min, max) and a prediction scored), and counts of images
    and skipped unreadable images (named on the console)."""
    if isinstance(eigen_crop, bool):
        eigen_crop = "on" if eigen_crop else "off"
    if eigen_crop not in EIGEN_MODES or input not in INPUTS:
        raise ValueError(f"eigen_crop must be one of {EIGEN_MODES} and input one of {INPUTS}")
    if not (0 < min_depth < max_depth and math.isfinite(max_depth)):
        raise ValueError(f"need 0 < min_depth < max_depth (finite), got {min_depth} and {max_depth}")
    model.eval()
    ds = read_depth_set(data, depth_scale=depth_scale)
    word_embeds = embed_texts(model, [DEPTH_TEMPLATE.format(w) for w in DEPTH_WORDS], precision=precision,
                              progress=False)  # (7, D)
    side = short_side or model.image_size
    per_image, skipped = [], []
    with inference_context(model.device, precision):
        for image_path, depth_path in tqdm(ds.pairs, desc="depth images", disable=not progress, leave=False):
            image = decode_image(image_path)
            if image is None:
                skipped.append(str(image_path))
                continue
            gt = read_depth_png(depth_path, ds.depth_scale)
            if tuple(gt.shape) != (image.height, image.width):
                raise ValueError(f"depth map {depth_path} is {gt.shape[1]}x{gt.shape[0]} but its image {image_path} "
                                 f"is {image.width}x{image.height}")
            valid = score_mask(gt, min_depth=min_depth, max_depth=max_depth, eigen_crop=eigen_crop, where=depth_path)
            pred = predict_depth(model, image, word_embeds, tuple(gt.shape), short_side=side, input=input, flip=flip,
                                 align_corners=align_corners)
            valid &= pred > 0  # outside the fed crop nothing is predicted (DepthCLIP scores pred > 1e-3)
            if not valid.any():
                raise ValueError(f"depth map {depth_path} has no pixel within ({min_depth}, {max_depth}) m")
            per_image.append(depth_metrics(pred.clamp(min_depth, max_depth), gt, valid))
    if not per_image:
        raise ValueError(f"none of the {len(ds.pairs)} images of {data} could be read")
    report_skipped("images (unreadable)", skipped)
    return {**mean_metrics(per_image), "n_images": len(per_image), "n_skipped_images": len(skipped)}
