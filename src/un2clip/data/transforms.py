"""Image transforms without torchvision: PIL in, float tensors out.

CLIP's preprocessing is: resize the short side (bicubic), centre crop, scale to
[0, 1], normalise by mean/std. Decoders take [-1, 1] pixels.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


#: single-channel modes whose samples are 16-bit (PIL keeps 16-bit grey in "I;16*", or widened in "I")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB image; transparent pixels are composited on white; 16-bit grey is scaled to 8 bits.

    PIL's own ``convert("RGB")`` clips 16-bit values at 255, which turns a 16-bit greyscale PNG
    almost white; here 0..65535 maps linearly onto 0..255 (v / 257, rounded).
    """
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, 65535)  # (H, W)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def resize_short_side(image: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    """Resize so that the shorter side equals ``size``, keeping the aspect ratio."""
    w, h = image.size
    if min(w, h) == size:
        return image
    # long side truncated, as HF's image processors compute it
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return image.resize((new_w, new_h), resample=resample)


def center_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred square."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def random_square_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest square at a random offset."""
    side = min(width, height)
    left = rng.randint(0, width - side)
    top = rng.randint(0, height - side)
    return left, top, left + side, top + side


def square_box(width: int, height: int, rng: random.Random, *, random_crop: bool = True) -> tuple[int, int, int, int]:
    """The largest square of a ``width`` x ``height`` image: at a random offset, or centred."""
    return random_square_box(width, height, rng) if random_crop else center_square_box(width, height)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Centre ``size`` x ``size`` crop; offsets rounded down, as HF's CLIPImageProcessor does."""
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    array = np.asarray(to_rgb(image), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Channel-wise (x - mean) / std for (..., 3, H, W) tensors."""
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    return (pixels - m) / s


def clip_view(
    image: Image.Image,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """CLIP preprocessing: short-side bicubic resize, centre crop, normalise -> (3, size, size)."""
    image = center_crop(resize_short_side(to_rgb(image), size), size)
    return normalize(pil_to_tensor(image), mean, std)


def decoder_view(image: Image.Image, size: int) -> torch.Tensor:
    """A square image resized to ``size`` and scaled to [-1, 1] -> (3, size, size)."""
    image = center_crop(resize_short_side(to_rgb(image), size), size)
    return pil_to_tensor(image).mul_(2.0).sub_(1.0)


def tensor_to_pil(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL RGB."""
    array = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())
