"""Encode -> decode pictures: which details of an image survive in each encoder's embedding.

Each row of the grid is one input image (the decoder's view of its centred square crop),
then the decoder's image generated from each model's embedding of it. Every model's
row is sampled with the same seeds, so differences come from the embeddings alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from un2clip.data import transforms as T
from un2clip.eval.core.embed import inference_context
from un2clip.eval.decoder.diffloss import TwoViews

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel
    from un2clip.models.unclip import UnclipDecoder


def first_images(data: str, n: int) -> list[Image.Image]:
    """The first ``n`` readable images of anything ``open_source`` opens (folder, CSV/TSV, shards)."""
    from un2clip.data import open_source

    source = open_source(data)
    found: list[Image.Image] = []
    for i in range(len(source)):
        record = source.load(i)
        if record is not None:
            found.append(record.image)
            if len(found) == n:
                break
    if not found:
        raise ValueError(f"none of the {len(source)} images of {data} could be read")
    return found


def reconstructions(models: Sequence[ClipModel], decoder: UnclipDecoder, images: Sequence[Image.Image], *,
                    seed: int = 0, num_inference_steps: int = 50, guidance_scale: float = 1.0,
                    noise_level: int = 0, batch_size: int = 8, precision: str = "auto",
                    progress: bool = True) -> list[torch.Tensor]:
    """[inputs, then one per model]: each (N, 3, H, W) in [-1, 1] on the CPU; batch b of every model uses seed + b."""
    from un2clip.load import check_pair

    for model in models:
        check_pair(model, decoder)
    decoder.eval()
    views = [TwoViews(models[0].processing, decoder.image_size)(im)[1] for im in images]
    columns = [torch.stack(views)]  # (N, 3, H, W)
    for m, model in enumerate(models):
        model.eval()
        views = TwoViews(model.processing, decoder.image_size)
        out = []
        starts = range(0, len(images), batch_size)
        for b, start in enumerate(tqdm(starts, desc=f"decoding model {m + 1}/{len(models)}", disable=not progress,
                                       leave=False)):
            pixels = torch.stack([views(im)[0] for im in images[start:start + batch_size]])
            with inference_context(model.device, precision):
                embeds = model.encode_image(pixels.to(model.device)).float()  # (B, D)
                out.append(decoder.generate(embeds, seed=seed + b, num_inference_steps=num_inference_steps,
                                            guidance_scale=guidance_scale, noise_level=noise_level).float().cpu())
        columns.append(torch.cat(out).clone())
    return columns


def grid_image(columns: Sequence[torch.Tensor], labels: Sequence[str] | None = None,
               cell_size: int | None = None) -> Image.Image:
    """Columns of (N, 3, H, W) images in [-1, 1] -> one picture, a row per image; ``labels`` head the columns."""
    n = columns[0].shape[0]
    side = cell_size or int(columns[0].shape[-1])
    header = 0
    font = ImageFont.load_default()
    if labels:
        header = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), lab, font=font)[3]
                     for lab in labels) + 6
    grid = Image.new("RGB", (side * len(columns), header + side * n), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, column in enumerate(columns):
        if labels:
            draw.text((c * side + 3, 3), _fit(draw, labels[c], font, side - 6), fill=(0, 0, 0), font=font)
        for r in range(n):
            cell = T.tensor_to_pil(column[r])
            if cell.size != (side, side):
                cell = cell.resize((side, side), Image.BICUBIC)
            grid.paste(cell, (c * side, header + r * side))
    return grid


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut from the left with '...' until it fits ``width`` pixels (run paths end in what matters)."""
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = "..." + (text[4:] if text.startswith("...") else text[1:])
    return text


def reconstruction_grid(models: Sequence[ClipModel], decoder: UnclipDecoder, images: Sequence[Image.Image], *,
                        labels: Sequence[str] | None = None, cell_size: int | None = None, seed: int = 0,
                        num_inference_steps: int = 50, guidance_scale: float = 1.0, noise_level: int = 0,
                        batch_size: int = 8, precision: str = "auto", progress: bool = True) -> Image.Image:
    """The PNG-ready grid: inputs, then each model's reconstructions; ``labels`` name the models."""
    columns = reconstructions(models, decoder, images, seed=seed, num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, noise_level=noise_level, batch_size=batch_size,
                              precision=precision, progress=progress)
    heads = ["input", *labels] if labels is not None else None
    return grid_image(columns, heads, cell_size)
