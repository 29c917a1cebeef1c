"""The un²CLIP objective: train the CLIP image encoder through a frozen unCLIP decoder.

One image -> one square crop -> two views of the same crop: the CLIP view (encoder
resolution, CLIP normalisation) and the decoder view (decoder resolution, [-1, 1]).
The encoder's pooled projected embedding conditions the frozen decoder, whose
diffusion loss on the decoder view is minimised; gradients reach the encoder only.

Ablations of the paper: ``projector`` ("none" | "random" | "identity") puts a trainable
linear layer between encoder and decoder; ``train_decoder`` also updates the decoder.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from un2clip.data import transforms as T
from un2clip.data.sources import Record
from un2clip.models.clip import ClipModel
from un2clip.models.presets import check_pair
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


def two_views(record: Record, rng: random.Random, clip_processing, decoder_size: int, *,
              random_crop: bool = True) -> dict[str, torch.Tensor]:
    """One square crop, two views of it (CLIP's and the decoder's), and a seed for the sample's draws."""
    image = T.to_rgb(record.image)
    box = T.random_square_box(image.width, image.height, rng) if random_crop else \
        T.center_square_box(image.width, image.height)
    crop = image.crop(box)
    return {
        "clip_pixels": clip_processing(crop),  # (3, S_clip, S_clip)
        "decoder_pixels": T.decoder_view(crop, decoder_size),  # (3, S_dec, S_dec)
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
    ):
        super().__init__()
        check_pair(clip, decoder)
        if timesteps_per_image < 1:
            raise ValueError("timesteps_per_image must be >= 1")
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
        clip.requires_grad_(False)
        for p in clip.vision_parameters():
            p.requires_grad_(True)
        if train_decoder:
            decoder.unet.requires_grad_(True)
        else:
            decoder.freeze()

    def cast_frozen(self, dtype: torch.dtype) -> None:
        if not self.train_decoder:
            self.decoder.to(dtype)

    def set_train_mode(self) -> None:
        self.train()
        self.clip.model.text_model.eval()
        if not self.train_decoder:
            self.decoder.eval()

    # -- data ------------------------------------------------------------------------------------
    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor]:
        return two_views(record, rng, self.clip.processing, self.decoder.image_size, random_crop=self.random_crop)

    # -- step --------------------------------------------------------------------------------------
    def embed(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D): encoder then projector, what the decoder is conditioned on."""
        return self.projector(self.clip.encode_image(clip_pixels).float())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds = self.embed(batch["clip_pixels"])  # (B, D)
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
        return {"loss": loss, "embed_norm": embeds.detach().norm(dim=-1).mean()}

    # -- outputs -----------------------------------------------------------------------------------
    def save_outputs(self, folder: Path) -> None:
        self.clip.save_pretrained(Path(folder) / "clip")
        if self.projector_kind != "none":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.projector.state_dict().items()},
                      str(Path(folder) / "projector.safetensors"))
        if self.train_decoder:
            self.decoder.save_pretrained(Path(folder) / "decoder")
