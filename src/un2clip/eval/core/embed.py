"""Step one of every evaluation: batched embeddings of images and texts.

Images come from an :class:`ImageList` (an index -> (PIL image or ``None``, payload)
function, e.g. a file path list or a webdataset source); unreadable images are skipped
and counted, never a crash. Embeddings come back L2-normalised in float32, computed
under ``torch.inference_mode()`` with bf16 autocast on CUDA unless told otherwise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from un2clip.data.sources import decode_image

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: auto is bf16 on CUDA and fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def inference_context(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """``torch.inference_mode()`` plus bf16 autocast where ``precision`` asks for it."""
    dtype = autocast_dtype(device, precision)
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


# -- image lists --------------------------------------------------------------------------------------


class PathImages:
    """Index -> (image read from ``paths[i]`` or ``None``, ``payloads[i]``); picklable for workers."""

    def __init__(self, paths: Sequence[str | os.PathLike], payloads: Sequence[Any] | None = None):
        self.paths = [os.fspath(p) for p in paths]
        self.payloads = list(payloads) if payloads is not None else [None] * len(self.paths)
        if len(self.payloads) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.payloads)} payloads")

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, i: int) -> tuple[Image.Image | None, Any]:
        return decode_image(self.paths[i]), self.payloads[i]


class SourceImages:
    """Index -> (image of a data source's record, ``payload(record.text)``); ``None`` for a bad image."""

    def __init__(self, source: Any, payload: Callable[[str | None], Any] | None = None):
        self.source = source
        self.payload = payload

    def __len__(self) -> int:
        return len(self.source)

    def __call__(self, i: int) -> tuple[Image.Image | None, Any]:
        record = self.source.load(i)
        if record is None:
            return None, None
        return record.image, (self.payload(record.text) if self.payload is not None else record.text)


class ImageList(torch.utils.data.Dataset):
    """Images to embed: item i -> (model input (3, S, S), i, payload), or ``None`` for an unreadable image."""

    def __init__(self, load: Callable[[int], tuple[Image.Image | None, Any]], n: int,
                 transform: Callable[[Image.Image], Any]):
        self.load = load
        self.n = n
        self.transform = transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        try:
            image, payload = self.load(i)
        except (ValueError, UnicodeError):  # a bad label or caption next to the image: skip like a bad image
            return None
        if image is None:
            return None
        return self.transform(image), i, payload


def collate_kept(batch: list) -> tuple[Any, torch.Tensor, list] | None:
    """Stack the readable items of a batch -> (inputs, indices (B,), payloads), or ``None`` if none was readable."""
    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    inputs = kept[0][0]
    if isinstance(inputs, tuple):  # several views per image
        stacked: Any = tuple(torch.stack([b[0][v] for b in kept]) for v in range(len(inputs)))
    else:
        stacked = torch.stack([b[0] for b in kept])
    return stacked, torch.tensor([b[1] for b in kept], dtype=torch.long), [b[2] for b in kept]


def image_batches(images: ImageList, *, batch_size: int, num_workers: int = 0, progress: bool = True,
                  desc: str = "images") -> Iterator[tuple[Any, torch.Tensor, list]]:
    """Readable images in batches of (inputs, indices, payloads), read by ``num_workers`` processes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loader = torch.utils.data.DataLoader(
        images, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_kept,
        persistent_workers=False,
    )
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            if batch is not None:
                yield batch
                bar.update(len(batch[1]))


@dataclass
class EmbeddedImages:
    """Embeddings of the readable images of a list, their indices in the list, and their payloads."""

    embeds: torch.Tensor  # (N, D) float32, L2-normalised, on the CPU
    index: torch.Tensor  # (N,) long
    payloads: list
    n_skipped: int  # unreadable images left out


def embed_images(model: ClipModel, images: ImageList, *, batch_size: int = 64, num_workers: int = 0,
                 precision: str = "auto", progress: bool = True, desc: str = "embedding images") -> EmbeddedImages:
    """Embed every readable image of ``images`` with ``model.encode_image``."""
    device = model.device
    chunks, index, payloads = [], [], []
    with inference_context(device, precision):
        for pixels, idx, pay in image_batches(images, batch_size=batch_size, num_workers=num_workers,
                                              progress=progress, desc=desc):
            emb = model.encode_image(pixels.to(device, non_blocking=True)).float()  # (B, D)
            chunks.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
            index.append(idx)
            payloads.extend(pay)
    if not chunks:
        raise ValueError(f"none of the {len(images)} images could be read")
    embeds = torch.cat(chunks)
    return EmbeddedImages(embeds.clone(), torch.cat(index), payloads, len(images) - embeds.shape[0])


def embed_texts(model: ClipModel, texts: Sequence[str], *, batch_size: int = 256, precision: str = "auto",
                progress: bool = True, desc: str = "embedding texts") -> torch.Tensor:
    """(T,) texts -> (T, D) float32 L2-normalised embeddings on the CPU."""
    if not texts:
        raise ValueError("no texts to embed")
    device = model.device
    chunks = []
    with inference_context(device, precision):
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
            emb = model.encode_text(list(texts[start:start + batch_size])).float()  # (B, D)
            chunks.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    return torch.cat(chunks).clone()
