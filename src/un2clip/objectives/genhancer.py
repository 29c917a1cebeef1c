"""GenHancer (arXiv 2503.19480) as its ``Continuous/`` code runs it: two stages around a light flow denoiser.

Stage 1 (``flow-decoder``): the CLIP stays frozen; a randomly initialised small FLUX transformer and
the two LayerNorm-MLPs that feed it the class token (:mod:`un2clip.models.flow`) learn to denoise
the VAE latents of the image by rectified flow, with logit-normal timesteps. GenHancer's settings:
AdamW lr 1e-4, weight decay 0.01, constant after 10 warm-up steps, gradient clipping at 1.0.

Stage 2 (``genhancer``): the denoiser and its projections frozen (``train_OpenAICLIP_stage2_only.py``),
the image tower tuned through LoRA adapters (rank 16, alpha 16, dropout 0.1, every linear layer of
the tower and its projection, peft's ``bias="lora_only"``) on the same loss; AdamW lr 1e-5, weight
decay 0.01. The saved ``clip/`` has the adapters merged.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import torch
from torch import nn

from un2clip.data.sources import Record
from un2clip.models.clip import ClipModel
from un2clip.models.flow import FlowDecoder
from un2clip.models.lora import LORA_BIAS, add_lora, has_lora, linear_layers, merge_lora
from un2clip.objectives.base import Objective
from un2clip.objectives.un2clip import two_views

#: the image tower's modules whose linear layers stage 2 adapts (peft's "all-linear" on the image side)
IMAGE_TOWER = ("vision_model", "visual_projection")


def flow_draws(seeds: torch.Tensor, latents: torch.Tensor, *, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (t (B,) logit-normal, noise like latents) from (B,) integer seeds (batch-independent)."""
    ts, noises = [], []
    for s in seeds.reshape(-1).tolist():
        g = torch.Generator("cpu").manual_seed(int(s))
        ts.append(torch.sigmoid(scale * torch.randn(1, generator=g)))
        noises.append(torch.randn(latents.shape[1:], generator=g))
    return torch.cat(ts).to(latents.device), torch.stack(noises).to(latents.device, latents.dtype)


def _check_pair(clip: ClipModel, decoder: FlowDecoder) -> None:
    if clip.embed_dim != decoder.embed_dim:
        raise ValueError(f"encoder and flow decoder do not fit: the CLIP gives {clip.embed_dim}-d embeddings, the "
                         f"decoder's projections take {decoder.embed_dim}-d ones")


class FlowDecoderObjective(Objective):
    """GenHancer's stage 1: CLIP frozen; the flow transformer and its two projections trainable."""

    kind = "flow-decoder"

    def __init__(self, clip: ClipModel, decoder: FlowDecoder, *, logit_normal_scale: float = 1.0,
                 random_crop: bool = True):
        super().__init__()
        _check_pair(clip, decoder)
        self.clip = clip
        self.decoder = decoder
        self.scale = float(logit_normal_scale)
        self.random_crop = random_crop
        clip.requires_grad_(False).eval()
        decoder.requires_grad_(False)
        for m in decoder.trainable_modules():
            m.requires_grad_(True)

    def set_train_mode(self) -> None:
        self.train()
        self.clip.eval()
        self.decoder.vae.eval()

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor]:
        return two_views(record, rng, self.clip.processing, self.decoder.image_size, random_crop=self.random_crop)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            embeds = self.clip.encode_image(batch["clip_pixels"]).float()
        latents = self.decoder.encode_pixels(batch["decoder_pixels"])
        t, noise = flow_draws(batch["draw_seed"], latents, scale=self.scale)
        return {"loss": self.decoder.flow_loss(embeds, latents, t=t, noise=noise)}

    def save_outputs(self, folder: Path) -> None:
        self.decoder.save_pretrained(Path(folder) / "decoder")


class GenHancerObjective(Objective):
    """GenHancer's stage 2: the flow decoder frozen; LoRA adapters on every linear layer of the image tower."""

    kind = "genhancer"

    def __init__(self, clip: ClipModel, decoder: FlowDecoder, *, lora_rank: int = 16, lora_alpha: float = 16.0,
                 lora_dropout: float = 0.1, lora_bias: str = "lora_only", logit_normal_scale: float = 1.0,
                 random_crop: bool = True, lora_seed: int = 0):
        super().__init__()
        _check_pair(clip, decoder)
        if lora_bias not in LORA_BIAS:
            raise ValueError(f"lora_bias must be one of {LORA_BIAS}, got {lora_bias!r}")
        self.clip = clip
        self.decoder = decoder.freeze()
        self.scale = float(logit_normal_scale)
        self.random_crop = random_crop
        clip.requires_grad_(False)
        targets = linear_layers(clip.model, IMAGE_TOWER)
        if not targets:
            raise ValueError("the CLIP's image tower has no linear layers to adapt")
        add_lora(clip.model, rank=lora_rank, alpha=lora_alpha, targets=targets, dropout=lora_dropout,
                 bias=lora_bias, seed=lora_seed)

    def set_train_mode(self) -> None:
        self.train()
        self.clip.model.text_model.eval()
        self.decoder.eval()

    def cast_frozen(self, dtype: torch.dtype) -> None:
        self.decoder.to(dtype)

    def compile_targets(self) -> list[nn.Module]:
        return [self.clip.vision_model, self.decoder.transformer]

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor]:
        return two_views(record, rng, self.clip.processing, self.decoder.image_size, random_crop=self.random_crop)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds = self.clip.encode_image(batch["clip_pixels"]).float()  # (B, D): the class token, projected
        latents = self.decoder.encode_pixels(batch["decoder_pixels"])
        t, noise = flow_draws(batch["draw_seed"], latents, scale=self.scale)
        loss = self.decoder.flow_loss(embeds, latents, t=t, noise=noise)
        return {"loss": loss, "embed_norm": embeds.detach().norm(dim=-1).mean()}

    def save_outputs(self, folder: Path) -> None:
        """``clip/`` with the adapters merged into a copy (the training model keeps them)."""
        clip = self.clip
        if has_lora(clip.model):
            clip = copy.deepcopy(clip)
            merge_lora(clip.model)
        clip.save_pretrained(Path(folder) / "clip")
