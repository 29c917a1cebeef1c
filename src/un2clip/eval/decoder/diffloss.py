"""The diffusion-loss diagnostic: the un²CLIP objective, without gradients, on held-out images.

Each image is centre-cropped to a square and seen twice, as in training: the encoder's
view conditions the frozen decoder, whose denoising loss on the decoder's view is
measured. Timesteps and noise of image i come from seeds derived from (seed, i), so two
encoders are compared on identical draws whatever the batch size. Lower means the
embedding carries more of the image.

``condition="shuffled"`` conditions image i on the embedding of another image (a fixed
derangement drawn from the seed) with the same draws: the ratio of that loss to the own-embedding
loss, per timestep bucket, says how much the decoder uses its condition at all; a decoder that
ignores it scores 1.
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
from un2clip.eval.core.embed import ImageList, SourceImages, image_batches, inference_context
from un2clip.eval.core.metrics import diffusion_loss_summary

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
    from un2clip.models.presets import PRESETS
    from un2clip.runs import RUN_MARKER

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
    from un2clip.data import open_source

    return open_source(data)


CONDITIONS = ("own", "shuffled")


def derangement(indices: torch.Tensor, seed: int) -> dict[int, int]:
    """{index: another index}: one cycle through a seeded random order of ``indices`` (no fixed point)."""
    order = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(int(seed)))].tolist()
    if len(order) < 2:
        raise ValueError("a shuffled condition needs at least 2 readable images")
    return {a: b for a, b in zip(order, order[1:] + order[:1])}


def _all_embeddings(model: ClipModel, images: ImageList, *, batch_size: int, num_workers: int,
                    progress: bool) -> dict[int, torch.Tensor]:
    out = {}
    for (clip_px, _), idx, _ in image_batches(images, batch_size=batch_size, num_workers=num_workers,
                                              progress=progress, desc="embeddings to shuffle"):
        out.update(zip(idx.tolist(), model.encode_image(clip_px.to(model.device)).float()))
    return out


def diffusion_losses(model: ClipModel, decoder: UnclipDecoder, images: ImageList, *, seed: int = 0,
                     draws_per_image: int = 1, noise_level: int = 0, batch_size: int = 16, num_workers: int = 0,
                     precision: str = "auto", progress: bool = True, condition: str = "own") -> dict[str, torch.Tensor]:
    """Per-draw losses of every readable image: ``index``, ``draw``, ``timestep``, ``loss``, each (N * K,).

    ``condition``: "own" (each image conditions its own loss) or "shuffled" (another image's embedding,
    see :func:`derangement`; the draws are the same as with "own").
    """
    from un2clip.load import check_pair

    check_pair(model, decoder)
    if draws_per_image < 1:
        raise ValueError(f"draws_per_image must be >= 1, got {draws_per_image}")
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    model.eval()
    decoder.eval()
    device = model.device
    index, draw, steps, losses = [], [], [], []
    with inference_context(device, precision):
        partner, shuffled = None, None
        if condition == "shuffled":
            shuffled = _all_embeddings(model, images, batch_size=batch_size, num_workers=num_workers,
                                       progress=progress)
            partner = derangement(torch.tensor(sorted(shuffled)), seed)
        for (clip_px, dec_px), idx, _ in image_batches(images, batch_size=batch_size, num_workers=num_workers,
                                                       progress=progress, desc="diffusion loss"):
            if shuffled is None:
                embeds = model.encode_image(clip_px.to(device)).float()  # (B, D)
            else:
                embeds = torch.stack([shuffled[partner[i]] for i in idx.tolist()])
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
             samples_csv: str | Path | None = None, condition: str = "own") -> dict[str, float]:
    """loss_mean, loss_sem, the mean per timestep bucket (``loss_t000-099`` ...), and the counts.

    ``data`` is anything :func:`un2clip.data.sources.open_source` opens (an image folder, a
    CSV/TSV, webdataset shards); ``limit`` keeps its first images. With ``samples_csv``
    also write one row per draw (index, key, draw, timestep, loss) for paired comparisons.
    ``condition="shuffled"``: each image's loss conditioned on another image's embedding.
    """
    source = open_data(data)
    n = len(source) if limit is None else min(int(limit), len(source))
    images = ImageList(SourceImages(source), n, TwoViews(model.processing, decoder.image_size))
    out = diffusion_losses(model, decoder, images, seed=seed, draws_per_image=draws_per_image,
                           noise_level=noise_level, batch_size=batch_size, num_workers=num_workers,
                           precision=precision, progress=progress, condition=condition)
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
