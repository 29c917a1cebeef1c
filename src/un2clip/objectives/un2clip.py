"""The un²CLIP objective: train the CLIP image encoder through a frozen unCLIP decoder.

One image -> one square crop -> two views of the same crop: the CLIP view (encoder
resolution, CLIP normalisation) and the decoder view (decoder resolution, [-1, 1]).
The encoder's pooled projected embedding conditions the frozen decoder, whose
diffusion loss on the decoder view is minimised; gradients reach the encoder only.

Ablations of the paper: ``projector`` ("none" | "random" | "identity") puts a trainable
linear layer between encoder and decoder (the encoder alone is what the run saves and what
is evaluated); ``train_decoder`` also updates the decoder.

Beyond the paper, to keep the embeddings aligned with the text tower: ``anchor_weight``
adds a pull towards a frozen copy of the original image tower, and ``lora_rank`` trains
low-rank adapters on the tower's linear layers instead of all of its weights.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from un2clip.data import transforms as T
from un2clip.data.latent_cache import CachedSample
from un2clip.data.sources import Record
from un2clip.load import check_pair
from un2clip.models.clip import ClipModel, pool_image
from un2clip.models.lora import DEFAULT_TARGETS, add_lora, has_lora, merge_lora
from un2clip.models.unclip import UnclipDecoder
from un2clip.objectives.base import Objective

PROJECTORS = ("none", "random", "identity")


def make_projector(kind: str, dim: int) -> nn.Module:
    """The paper's projector ablation: identity map, random linear, or identity-initialised linear."""
    if kind not in PROJECTORS:
        raise ValueError(f"projector must be one of {PROJECTORS}, got {kind!r}")
    if kind == "none":
        return nn.Identity()
    layer = nn.Linear(dim, dim)
    if kind == "identity":
        with torch.no_grad():
            layer.weight.copy_(torch.eye(dim))
            layer.bias.zero_()
    return layer


def anchor_distance(embeds: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - cosine similarity of (B, D) embeddings to the original ones (B, D).

    0 when every embedding points where the original encoder's does; blind to the norm, as
    text matching (cosine similarity) is.
    """
    return (1.0 - nn.functional.cosine_similarity(embeds.float(), original.float(), dim=-1)).mean()


class FrozenImageTower(nn.Module):
    """A frozen copy of a ClipModel's image tower (vision transformer + projection): the anchor."""

    def __init__(self, clip: ClipModel):
        super().__init__()
        self.vision_model = copy.deepcopy(clip.vision_model)
        self.visual_projection = copy.deepcopy(clip.visual_projection)
        self.image_size = clip.image_size
        self.pooling = clip.meta.pooling
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D), as ``ClipModel.encode_image`` computes it."""
        first = next(self.vision_model.parameters())
        kwargs = {"interpolate_pos_encoding": True} if pixels.shape[-1] != self.image_size else {}
        out = self.vision_model(pixel_values=pixels.to(first.device, first.dtype), **kwargs)
        return pool_image(out, self.vision_model, self.visual_projection, self.pooling)


def two_views(record: Record, rng: random.Random, clip_processing, decoder_size: int, *,
              random_crop: bool = True) -> dict[str, torch.Tensor]:
    """One square crop, two views of it (CLIP's and the decoder's), and a seed for the sample's draws."""
    image = T.to_rgb(record.image)
    crop = image.crop(T.square_box(image.width, image.height, rng, random_crop=random_crop))
    return {
        "clip_pixels": clip_processing(crop),  # (3, S_clip, S_clip)
        "decoder_pixels": T.decoder_view(crop, decoder_size),  # (3, S_dec, S_dec)
        "draw_seed": torch.tensor(rng.getrandbits(62), dtype=torch.int64),
    }


def cached_views(sample: CachedSample, rng: random.Random, clip_processing, *,
                 random_crop: bool = True) -> dict[str, torch.Tensor]:
    """A sample of `un2clip cache-latents`: its CLIP view, its latents, and the draw seed ``two_views`` would give.

    The crop is the cache's; drawing (and discarding) a crop box first consumes ``rng`` as
    ``two_views`` does, so the seed of the sample's diffusion draws is the on-the-fly path's.
    """
    T.square_box(sample.width, sample.height, rng, random_crop=random_crop)
    return {
        "clip_pixels": clip_processing.from_uint8(sample.clip_pixels),  # (3, S_clip, S_clip), bit-identical
        "latents": sample.latents,  # (C, h, w) float16
        "draw_seed": torch.tensor(rng.getrandbits(62), dtype=torch.int64),
    }


class Un2ClipObjective(Objective):
    kind = "un2clip"

    def __init__(
        self,
        clip: ClipModel,
        decoder: UnclipDecoder,
        *,
        projector: str = "none",
        train_decoder: bool = False,
        noise_level: int = 0,
        random_crop: bool = True,
        timesteps_per_image: int = 1,
        max_timestep: int | None = None,
        anchor_weight: float = 0.0,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] = DEFAULT_TARGETS,
    ):
        """``anchor_weight`` λ adds λ · mean_batch(1 - cos(e, e_original)), e_original from a frozen copy of
        the image tower made here (only when λ > 0). ``lora_rank`` > 0 trains LoRA adapters of that rank
        (scale ``lora_alpha / lora_rank``, alpha defaults to the rank) on ``lora_targets`` instead of the tower.
        """
        super().__init__()
        check_pair(clip, decoder)
        if timesteps_per_image < 1:
            raise ValueError(f"timesteps_per_image must be >= 1, got {timesteps_per_image}")
        if max_timestep is not None and not 1 <= max_timestep <= decoder.num_train_timesteps:
            raise ValueError(f"max_timestep must be in [1, {decoder.num_train_timesteps}], got {max_timestep}")
        if anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {anchor_weight}")
        if lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {lora_rank}")
        self.clip = clip
        self.decoder = decoder
        self.projector = make_projector(projector, clip.embed_dim)
        self.projector_kind = projector
        self.train_decoder = train_decoder
        self.noise_level = noise_level
        self.random_crop = random_crop
        self.timesteps_per_image = timesteps_per_image
        # beyond the paper: draw t in [0, max_timestep) only, where the loss depends most on the embedding
        self.t_range = None if max_timestep is None else (0, int(max_timestep))
        # only the image tower (and the ablation's projector / decoder) trains
        self.anchor_weight = float(anchor_weight)
        # the original tower, copied before anything trains; absent (no memory) when λ = 0
        self.anchor = FrozenImageTower(clip) if anchor_weight > 0 else None
        clip.requires_grad_(False)
        if lora_rank > 0:  # adapters only; the projection and the base weights stay as they are
            add_lora(clip.vision_model, rank=lora_rank, alpha=lora_alpha, targets=lora_targets)
        else:
            for p in clip.vision_parameters():
                p.requires_grad_(True)
        if train_decoder:
            decoder.unet.requires_grad_(True)
        else:
            decoder.freeze()

    def cast_frozen(self, dtype: torch.dtype) -> None:
        if not self.train_decoder:
            self.decoder.to(dtype)
        if self.anchor is not None:
            self.anchor.to(dtype)

    def set_train_mode(self) -> None:
        self.train()
        self.clip.model.text_model.eval()
        if not self.train_decoder:
            self.decoder.eval()
        if self.anchor is not None:
            self.anchor.eval()

    def compile_targets(self) -> list[nn.Module]:
        return [self.clip.vision_model, self.decoder.unet]

    # -- data ------------------------------------------------------------------------------------
    def transform(self, record: Record | CachedSample, rng: random.Random) -> dict[str, torch.Tensor]:
        if isinstance(record, CachedSample):  # the VAE already ran: `un2clip cache-latents`
            return cached_views(record, rng, self.clip.processing, random_crop=self.random_crop)
        return two_views(record, rng, self.clip.processing, self.decoder.image_size, random_crop=self.random_crop)

    # -- step --------------------------------------------------------------------------------------
    def embed(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D): encoder then projector, what the decoder is conditioned on."""
        return self.projector(self.clip.encode_image(clip_pixels).float())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image_embeds = self.clip.encode_image(batch["clip_pixels"]).float()  # (B, D)
        embeds = self.projector(image_embeds)  # (B, D)
        if "latents" in batch:  # cached by `un2clip cache-latents`
            latents = batch["latents"].to(embeds.device, torch.float32)
        else:
            latents = self.decoder.encode_pixels(batch["decoder_pixels"].to(embeds.device))  # (B, C, h, w)
        seeds = batch["draw_seed"].reshape(-1)
        k = self.timesteps_per_image
        if k > 1:  # one encoder pass, K independent noisings of the same latents
            embeds = embeds.repeat_interleave(k, 0)
            latents = latents.repeat_interleave(k, 0)
            seeds = (seeds.repeat_interleave(k) * 1_000_003 + torch.arange(k).repeat(seeds.numel())) % (2**62)
        t, noise, embed_noise = self.decoder.draws_from_seeds(seeds, latents, t_range=self.t_range)
        loss = self.decoder.diffusion_loss(embeds, latents, timesteps=t, noise=noise,
                                           noise_level=self.noise_level, embed_noise=embed_noise)
        out = {"loss": loss, "embed_norm": embeds.detach().norm(dim=-1).mean()}
        if self.anchor is not None:  # the encoder's own embedding (before any projector) vs the original's
            anchor = anchor_distance(image_embeds, self.anchor(batch["clip_pixels"]))
            out.update(loss=loss + self.anchor_weight * anchor, diffusion_loss=loss.detach(), anchor=anchor.detach())
        return out

    # -- outputs -----------------------------------------------------------------------------------
    def save_outputs(self, folder: Path) -> None:
        clip = self.clip
        if has_lora(clip.vision_model):  # a plain HF folder: adapters merged into a copy, training model untouched
            clip = copy.deepcopy(clip)
            merge_lora(clip.vision_model)
        clip.save_pretrained(Path(folder) / "clip")
        if self.projector_kind != "none":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.projector.state_dict().items()},
                      str(Path(folder) / "projector.safetensors"))
        if self.train_decoder:
            self.decoder.save_pretrained(Path(folder) / "decoder")
