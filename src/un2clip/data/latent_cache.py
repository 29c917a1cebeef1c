"""Cached decoder latents: the frozen VAE run once over a dataset, read back as a Source.

``un2clip cache-latents`` makes one pass over the data. Sample ``i`` gets the crop that
the un²CLIP objective would draw for it in epoch 0 with the same seed (``two_views``:
one square crop from ``sample_rng(seed, 0, i)``), and two views of that crop are stored:

- the decoder view encoded by the frozen VAE (``DiffusionDecoder.encode_pixels``: the
  scaled mean of the latent distribution; for a pixel-space decoder the [-1, 1] pixels),
  as float16, (C, h, w);
- the CLIP view as uint8 pixels at the encoder's input size, before scaling and
  normalisation, (3, S, S). CLIP preprocessing resizes a PIL image and only then turns
  it into floats, so these bytes give the encoder input bit for bit
  (``ImageProcessing.from_uint8``) at half the size of float16 and with no new rounding;
  storing the crop box instead would mean decoding the full-size image again every step,
  which is the data-loading cost the cache exists to remove.

Folder layout::

    un2clip_latents.json        the index (written last: a folder without it is no cache)
    keys.txt                    one line per source sample: its key
    shard-00000.safetensors     latents (n, C, h, w) float16, clip_pixels (n, 3, S, S) uint8,
    shard-00001.safetensors     index (n,) int64 source indices, box (n, 4) int32 crop boxes,
    ...                         image_size (n, 2) int32 width and height of the original image

A cache keeps the source's numbering: unreadable images are absent from the shards and
load as ``None`` (skipped and counted by the training loop, as with the images
themselves), so the data order and every sample's draws are those of the image source.
What the cache gives up is the crop augmentation: every epoch sees the epoch-0 crop.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from un2clip.data import transforms as T
from un2clip.data.sources import Record, Source, Strings
from un2clip.files import atomic_path, atomic_write_text

CACHE_INDEX = "un2clip_latents.json"
CACHE_FORMAT = "un2clip-latent-cache"
CACHE_VERSION = 1
KEYS_FILE = "keys.txt"


@dataclass
class CachedSample:
    """One cached sample: what the un²CLIP step needs, without the image."""

    latents: torch.Tensor  # (C, h, w) float16: what the decoder's UNet denoises
    clip_pixels: torch.Tensor  # (3, S, S) uint8: the CLIP view before scaling and normalisation
    width: int  # of the original image (the crop box was drawn from it)
    height: int
    key: str
    text: str | None = None


def is_latent_cache(path: str | os.PathLike) -> bool:
    return (Path(path) / CACHE_INDEX).is_file()


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / CACHE_INDEX
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a latent cache: {CACHE_INDEX} not found "
                                "(write one with `un2clip cache-latents`)")
    index = json.loads(file.read_text())
    if index.get("format") != CACHE_FORMAT or int(index.get("version", 0)) > CACHE_VERSION:
        raise ValueError(f"{file}: not a version-{CACHE_VERSION} {CACHE_FORMAT} index")
    return index


class LatentCacheSource(Source):
    """A folder written by :func:`cache_latents`: ``load(i)`` -> :class:`CachedSample` or ``None``."""

    kind = "latent-cache"

    def __init__(self, root: str | os.PathLike):
        from safetensors import safe_open

        self.root = Path(root)
        self.spec = str(root)
        self.index = read_index(self.root)
        n = int(self.index["n_samples"])
        self._shard = np.full(n, -1, dtype=np.int32)  # source index -> shard number (-1: unreadable image)
        self._row = np.zeros(n, dtype=np.int32)  # source index -> row in its shard
        self._files = [str(self.root / s["file"]) for s in self.index["shards"]]
        for k, file in enumerate(self._files):
            if not Path(file).is_file():
                raise FileNotFoundError(f"{file} is listed in {self.root / CACHE_INDEX} but missing")
            with safe_open(file, framework="pt") as f:
                rows = f.get_tensor("index").numpy()
            self._shard[rows] = k
            self._row[rows] = np.arange(len(rows), dtype=np.int32)
        keys_file = self.root / KEYS_FILE
        self._keys = Strings(keys_file.read_text().split("\n")[:n]) if keys_file.is_file() else None
        self._handles: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # open shard handles stay in their process
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return len(self._shard)

    def key(self, i: int) -> str:
        return self._keys[i] if self._keys is not None else str(i)

    def _handle(self, k: int):
        from safetensors import safe_open

        if k not in self._handles:
            self._handles[k] = safe_open(self._files[k], framework="pt")
        return self._handles[k]

    def load(self, i: int) -> CachedSample | None:
        k = int(self._shard[i])
        if k < 0:
            return None
        r = int(self._row[i])
        f = self._handle(k)
        width, height = (int(v) for v in f.get_slice("image_size")[r:r + 1][0])
        return CachedSample(latents=f.get_slice("latents")[r:r + 1][0], clip_pixels=f.get_slice("clip_pixels")[r:r + 1][0],
                            width=width, height=height, key=self.key(i))

    @property
    def random_crop(self) -> bool:
        return bool(self.index["random_crop"])


# ----------------------------------------------------------------------------- writing


class CacheViews:
    """Record + rng -> the crop of ``two_views``, its uint8 CLIP view and float decoder view (picklable)."""

    def __init__(self, clip_processing, decoder_size: int, *, random_crop: bool = True):
        self.clip_processing = clip_processing
        self.decoder_size = int(decoder_size)
        self.random_crop = random_crop

    def __call__(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor]:
        image = T.to_rgb(record.image)
        box = T.square_box(image.width, image.height, rng, random_crop=self.random_crop)
        crop = image.crop(box)
        clip_u8 = torch.from_numpy(np.asarray(self.clip_processing.resize(crop), dtype=np.uint8).copy())
        return {
            "clip_pixels": clip_u8.permute(2, 0, 1).contiguous(),  # (3, S, S) uint8
            "decoder_pixels": T.decoder_view(crop, self.decoder_size),  # (3, S_dec, S_dec) in [-1, 1]
            "box": torch.tensor(box, dtype=torch.int32),
            "image_size": torch.tensor([image.width, image.height], dtype=torch.int32),
        }


def latent_shape(decoder) -> tuple[int, int, int]:
    """(C, h, w) of what ``decoder``'s UNet denoises at its image size."""
    side = decoder.image_size // decoder.vae_factor
    return int(decoder.unet.config.in_channels), side, side


def vae_fingerprint(decoder) -> str | None:
    """SHA-256 of the VAE's weights (as float32), or None for a pixel-space decoder."""
    if decoder.vae is None:
        return None
    h = hashlib.sha256()
    for name, value in sorted(decoder.vae.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _ShardWriter:
    """Rows of the cache gathered in memory and written ``shard_size`` at a time as safetensors shards."""

    KEYS = ("latents", "clip_pixels", "index", "box", "image_size")

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        self.shards: list[dict[str, Any]] = []
        self.buffer: dict[str, list[torch.Tensor]] = {k: [] for k in self.KEYS}

    def add(self, **rows: torch.Tensor) -> None:
        for k in self.KEYS:
            self.buffer[k].append(rows[k])
        if sum(t.shape[0] for t in self.buffer["index"]) >= self.shard_size:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Write every full shard held in the buffer (and, when ``final``, the rest)."""
        from safetensors.torch import save_file

        if not self.buffer["index"]:
            return
        rows = {k: torch.cat(v) for k, v in self.buffer.items()}
        n, start = rows["index"].shape[0], 0
        while n - start >= self.shard_size or (final and start < n):
            stop = min(start + self.shard_size, n)
            name = f"shard-{len(self.shards):05d}.safetensors"
            with atomic_path(self.out / name) as tmp:
                save_file({k: v[start:stop].contiguous() for k, v in rows.items()}, str(tmp))
            self.shards.append({"file": name, "n": stop - start})
            start = stop
        for k, v in self.buffer.items():
            v[:] = [rows[k][start:]] if start < n else []


def cache_latents(
    source: Source,
    clip_processing,
    decoder,
    output: str | os.PathLike,
    *,
    seed: int = 0,
    random_crop: bool = True,
    shard_size: int = 1024,
    batch_size: int = 16,
    num_workers: int = 0,
    info: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One pass over ``source``: crops as ``two_views`` draws them in epoch 0 of ``seed``, latents by the VAE.

    ``clip_processing`` is the encoder's ``ImageProcessing``; ``decoder`` a ``DiffusionDecoder``
    on the device it should run on. Returns the index (also written to ``output``).
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from un2clip.data.loader import TransformedDataset, collate_skip_bad

    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty: choose a new --output for the cache")
    out.mkdir(parents=True, exist_ok=True)
    transform = CacheViews(clip_processing, decoder.image_size, random_crop=random_crop)
    dataset = TransformedDataset(source, transform, seed=seed)  # bare index i -> sample_rng(seed, 0, i)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_bad)
    writer = _ShardWriter(out, shard_size)
    n_cached = 0
    bar = tqdm(total=len(source), disable=not progress, desc="cache-latents", unit="img", dynamic_ncols=True)
    with torch.no_grad():
        for batch in loader:
            if batch is None:  # every image of the batch unreadable
                continue
            latents = decoder.encode_pixels(batch["decoder_pixels"])  # (B, C, h, w) fp32
            writer.add(latents=latents.to(torch.float16).cpu(), clip_pixels=batch["clip_pixels"],
                       index=batch["index"].to(torch.int64), box=batch["box"], image_size=batch["image_size"])
            n_cached += int(batch["index"].numel())
            bar.update(int(batch["index"].numel()) + int(batch["n_bad"]))
    writer.flush(final=True)
    bar.close()
    (out / KEYS_FILE).write_text("\n".join(source.key(i).replace("\n", " ") for i in range(len(source))) + "\n")
    index = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION,
        "n_samples": len(source), "n_cached": n_cached, "n_bad": len(source) - n_cached,
        "seed": int(seed), "random_crop": bool(random_crop),
        "latents": {"dtype": "float16", "shape": list(latent_shape(decoder)),
                    "space": "vae" if decoder.vae is not None else "pixels",
                    "vae_scale": decoder.vae_scale, "vae_sha256": vae_fingerprint(decoder)},
        "decoder_image_size": int(decoder.image_size),
        "clip_view": {"dtype": "uint8", "size": int(clip_processing.size),
                      "resize_mode": clip_processing.resize_mode},
        "shards": writer.shards,
        **(info or {}),
    }
    atomic_write_text(out / CACHE_INDEX, json.dumps(index, indent=2))
    return index


def check_cache_fits(index: dict[str, Any], *, clip_processing, decoder, random_crop: bool) -> None:
    """Refuse a cache written for another encoder input, another decoder or another crop mode."""
    problems = []
    view = index["clip_view"]
    if (view["size"], view["resize_mode"]) != (clip_processing.size, clip_processing.resize_mode):
        problems.append(f"CLIP view {view['size']} px ({view['resize_mode']}) in the cache, the encoder takes "
                        f"{clip_processing.size} px ({clip_processing.resize_mode})")
    if int(index["decoder_image_size"]) != decoder.image_size:
        problems.append(f"decoder view {index['decoder_image_size']} px in the cache, the decoder works at "
                        f"{decoder.image_size} px")
    if tuple(index["latents"]["shape"]) != latent_shape(decoder):
        problems.append(f"latents of shape {tuple(index['latents']['shape'])} in the cache, the decoder's UNet "
                        f"denoises {latent_shape(decoder)}")
    cached_vae = index["latents"].get("vae_sha256")
    if cached_vae != vae_fingerprint(decoder):
        problems.append("the cache was encoded by a different VAE than this decoder's" if cached_vae and decoder.vae is not None
                        else "one of the cache and the decoder is in pixel space, the other in latent space")
    if bool(index["random_crop"]) != bool(random_crop):
        problems.append(f"the cache holds {'random' if index['random_crop'] else 'centre'} crops, the objective "
                        f"asks for {'random' if random_crop else 'centre'} crops")
    if problems:
        raise ValueError("the latent cache does not fit this run: " + "; ".join(problems)
                         + " (write a new cache with `un2clip cache-latents` for this encoder and decoder)")
