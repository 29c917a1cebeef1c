"""Train the first stage of a latent decoder: its VAE (diffusers ``AutoencoderKL``), as latent diffusion does
before the UNet ever trains.

Loss: mean absolute reconstruction error of a latent *sample* plus ``kl_weight`` times the KL divergence of the
latent distribution from N(0, I), both per element (latent diffusion's first stage adds a perceptual and an
adversarial term; the shapes world's flat colours do not need them). The UNet is not touched. A running estimate
of the latents' variance sets the VAE's ``scaling_factor`` (1 / std) when the run saves, so the UNet later
denoises latents of unit variance, the role of Stable Diffusion's 0.18215.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from un2clip.data import transforms as T
from un2clip.data.sources import Record
from un2clip.models.diffusion import DiffusionDecoder
from un2clip.objectives.base import Objective


def seeded_normal(seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) standard normal draws, row i from generator seed ``seeds[i]`` (B,): independent of batching."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds.tolist()])


class AutoencoderObjective(Objective):
    kind = "autoencoder"

    def __init__(self, decoder: DiffusionDecoder, *, kl_weight: float = 1e-4, random_crop: bool = True,
                 std_momentum: float = 0.99):
        super().__init__()
        if decoder.vae is None:
            raise ValueError("this decoder works in pixel space: it has no VAE to train "
                             "(a latent decoder such as --preset tiny-latent has one)")
        if kl_weight < 0 or not 0 <= std_momentum < 1:
            raise ValueError(f"need kl_weight >= 0 and 0 <= std_momentum < 1, got {kl_weight}, {std_momentum}")
        self.decoder = decoder
        self.kl_weight = kl_weight
        self.random_crop = random_crop
        self.std_momentum = std_momentum
        decoder.requires_grad_(False)
        decoder.vae.requires_grad_(True)
        # running variance of the latents, NaN until the first batch
        self.register_buffer("latent_var", torch.tensor(float("nan"), dtype=torch.float64))

    def set_train_mode(self) -> None:
        self.eval()
        self.decoder.vae.train()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().trainable_state_dict(), "latent_var": self.latent_var.detach().clone()}

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor]:
        image = T.to_rgb(record.image)
        crop = image.crop(T.square_box(image.width, image.height, rng, random_crop=self.random_crop))
        return {
            "decoder_pixels": T.decoder_view(crop, self.decoder.image_size),  # (3, S, S) in [-1, 1]
            "draw_seed": torch.tensor(rng.getrandbits(62), dtype=torch.int64),
        }

    def update_latent_var(self, latents: torch.Tensor) -> None:
        """Fold one batch's latent variance into the running estimate (the first batch sets it)."""
        var = latents.detach().double().var()
        if torch.isnan(self.latent_var):
            self.latent_var.copy_(var)
        else:
            self.latent_var.mul_(self.std_momentum).add_((1 - self.std_momentum) * var)

    def scaling_factor(self) -> float:
        """1 / std of the latents seen so far (the VAE's own factor before any batch)."""
        if torch.isnan(self.latent_var):
            return float(self.decoder.vae.config.scaling_factor)
        return 1.0 / math.sqrt(max(float(self.latent_var), 1e-12))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vae = self.decoder.vae
        pixels = batch["decoder_pixels"].to(self.decoder.device, vae.dtype)  # (B, 3, S, S)
        dist = vae.encode(pixels).latent_dist
        eps = seeded_normal(batch["draw_seed"].reshape(-1), tuple(dist.mean.shape[1:])).to(dist.mean)
        latents = dist.mean + dist.std * eps  # (B, C, S/f, S/f)
        recon = vae.decode(latents).sample
        l1 = (recon.float() - pixels.float()).abs().mean()
        kl = dist.kl().float().mean() / latents[0].numel()
        self.update_latent_var(latents)
        return {"loss": l1 + self.kl_weight * kl, "l1": l1.detach(), "kl": kl.detach()}

    def save_outputs(self, folder: Path) -> None:
        """The whole decoder (its UNet as built, its trained VAE with the measured scaling factor) in decoder/."""
        factor = self.scaling_factor()
        self.decoder.vae.register_to_config(scaling_factor=factor)
        self.decoder.vae_scale = factor
        self.decoder.save_pretrained(Path(folder) / "decoder")
