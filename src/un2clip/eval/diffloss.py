"""The diffusion-loss diagnostic: the un²CLIP objective, without gradients, on held-out images.

Each image is centre-cropped to a square and seen twice, as in training: the encoder's
view conditions the frozen decoder, whose denoising loss on the decoder's view is
measured. Timesteps and noise of image i come from seeds derived from (seed, i), so two
encoders are compared on identical draws whatever the batch size. Lower means the
embedding carries more of the image.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from un2clip.data import transforms as T
from un2clip.eval.embed import ImageList, SourceImages, image_batches, inference_context
from un2clip.eval.metrics import diffusion_loss_summary

if TYPE_CHECKING:
    from PIL import Image

    from un2clip.models.clip import ClipModel, ImageProcessing
    from un2clip.models.unclip import UnclipDecoder


def draw_seeds(seed: int, indices: torch.Tensor | Sequence[int], draws_per_image: int = 1) -> torch.Tensor:
    """(B,) image indices -> (B * K,) seeds, one per (image, draw), each a function of (seed, index, draw) only."""
    out = []
    for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices):
        for k in range(draws_per_image):
            hi, lo = np.random.SeedSequence([int(seed), int(i), k]).generate_state(2, np.uint32).tolist()
            out.append((hi << 30) | (lo >> 2))  # 62 bits: fits int64 and Generator.manual_seed
    return torch.tensor(out, dtype=torch.int64)


class TwoViews:
    """Image -> (encoder input (3, S, S), decoder pixels (3, H, H) in [-1, 1]) of one centred square crop."""

    def __init__(self, processing: ImageProcessing, decoder_size: int):
        self.processing = processing
        self.decoder_size = decoder_size

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        image = T.to_rgb(image)
        crop = image.crop(T.center_square_box(image.width, image.height))
        return self.processing(crop), T.decoder_view(crop, self.decoder_size)


def default_decoder_spec(model_spec: str) -> str | None:
    """The decoder that belongs to a model spec: a preset's own, or the one a run directory trained against."""
    from un2clip.models.presets import PRESETS, RUN_MARKER

    if model_spec in PRESETS:
        return model_spec if PRESETS[model_spec].decoder is not None else None
    marker = Path(model_spec) / RUN_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("decoder") or (Path(model_spec) / "decoder" / "unet").is_dir():
            return model_spec
    return None


def open_data(data: str | Path):
    """The images to measure: anything :func:`un2clip.data.sources.open_source` opens."""
    from un2clip.data.sources import open_source

    return open_source(data)


def diffusion_losses(model: ClipModel, decoder: UnclipDecoder, images: ImageList, *, seed: int = 0,
                     draws_per_image: int = 1, noise_level: int = 0, batch_size: int = 16, num_workers: int = 0,
                     precision: str = "auto", progress: bool = True) -> dict[str, torch.Tensor]:
    """Per-draw losses of every readable image: ``index``, ``draw``, ``timestep``, ``loss``, each (N * K,)."""
    from un2clip.models.presets import check_pair

    check_pair(model, decoder)
    if draws_per_image < 1:
        raise ValueError(f"draws_per_image must be >= 1, got {draws_per_image}")
    model.eval()
    decoder.eval()
    device = model.device
    index, draw, steps, losses = [], [], [], []
    with inference_context(device, precision):
        for (clip_px, dec_px), idx, _ in image_batches(images, batch_size=batch_size, num_workers=num_workers,
                                                       progress=progress, desc="diffusion loss"):
            embeds = model.encode_image(clip_px.to(device)).float()  # (B, D)
            latents = decoder.encode_pixels(dec_px.to(decoder.device))  # (B, C, h, w) fp32
            k = draws_per_image
            embeds = embeds.to(decoder.device).repeat_interleave(k, 0)
            latents = latents.repeat_interleave(k, 0)
            t, noise, embed_noise = decoder.draws_from_seeds(draw_seeds(seed, idx, k), latents)
            loss = decoder.diffusion_loss(embeds, latents, timesteps=t, noise=noise, embed_noise=embed_noise,
                                          noise_level=noise_level, reduction="none")  # (B * K,)
            index.append(idx.repeat_interleave(k))
            draw.append(torch.arange(k).repeat(len(idx)))
            steps.append(t.cpu())
            losses.append(loss.float().cpu())
    if not losses:
        raise ValueError(f"none of the {len(images)} images could be read")
    return {"index": torch.cat(index), "draw": torch.cat(draw), "timestep": torch.cat(steps),
            "loss": torch.cat(losses).clone()}


def evaluate(model: ClipModel, data: str | Path, *, decoder: UnclipDecoder, seed: int = 0, draws_per_image: int = 1,
             num_buckets: int = 10, noise_level: int = 0, limit: int | None = None, batch_size: int = 16,
             num_workers: int = 0, precision: str = "auto", progress: bool = True,
             samples_csv: str | Path | None = None) -> dict[str, float]:
    """loss_mean, loss_sem, the mean per timestep bucket (``loss_t000-099`` ...), and the counts.

    ``data`` is anything :func:`un2clip.data.sources.open_source` opens (an image folder, a
    CSV/TSV, webdataset shards); ``limit`` keeps its first images. With ``samples_csv``
    also write one row per draw (index, key, draw, timestep, loss) for paired comparisons.
    """
    source = open_data(data)
    n = len(source) if limit is None else min(int(limit), len(source))
    images = ImageList(SourceImages(source), n, TwoViews(model.processing, decoder.image_size))
    out = diffusion_losses(model, decoder, images, seed=seed, draws_per_image=draws_per_image,
                           noise_level=noise_level, batch_size=batch_size, num_workers=num_workers,
                           precision=precision, progress=progress)
    metrics = diffusion_loss_summary(out["loss"], out["timestep"], decoder.num_train_timesteps, num_buckets)
    n_read = int(out["index"].unique().numel())
    metrics.update(n_images=n_read, n_draws=int(out["loss"].numel()), n_skipped_images=n - n_read)
    if samples_csv is not None:
        write_samples_csv(samples_csv, out, [source.key(i) for i in range(n)])
    return metrics


def write_samples_csv(path: str | Path, out: dict[str, torch.Tensor], keys: Sequence[str]) -> Path:
    """One row per draw: image index, its key, draw number, timestep, loss."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["index", "key", "draw", "timestep", "loss"])
        for i, d, t, loss in zip(*(out[k].tolist() for k in ("index", "draw", "timestep", "loss"))):
            w.writerow([i, keys[i], d, t, f"{loss:.8g}"])
    return path
