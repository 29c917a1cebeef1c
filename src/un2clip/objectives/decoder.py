"""Train a generator: an unCLIP decoder on a frozen CLIP's image embeddings (how Stable unCLIP was
made), or a text-to-image decoder on captions (the generator of the DIVA baseline).

The unCLIP decoder learns to denoise images given the embedding, with Stable unCLIP's noise
augmentation: each sample's embedding is noised at a random level in [0, max_noise_level)
and the level's sinusoidal embedding is appended. With probability ``p_uncond`` the class
labels are zeroed, so generation can use classifier-free guidance.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from un2clip.data import transforms as T
from un2clip.data.sources import Record, Source
from un2clip.load import check_pair
from un2clip.models.clip import ClipModel
from un2clip.models.t2i import TextToImageDecoder
from un2clip.models.unclip import UnclipDecoder
from un2clip.objectives.base import Objective
from un2clip.objectives.un2clip import two_views


@torch.no_grad()
def embedding_statistics(clip: ClipModel, source: Source, *, n: int = 2048, batch_size: int = 64,
                         seed: int = 0, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (1, D) of the CLIP image embeddings of up to ``n`` images: the image normaliser's stats."""
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(source)), min(n, len(source))))
    embeds = []
    for start in tqdm(range(0, len(idx), batch_size), desc="embedding statistics", disable=not progress):
        images = [r.image for r in (source.load(i) for i in idx[start:start + batch_size]) if r is not None]
        if images:
            embeds.append(clip.encode_image(clip.preprocess(images).to(clip.device)).float().cpu())
    if not embeds:
        raise ValueError("no readable image to compute embedding statistics from")
    e = torch.cat(embeds)
    return e.mean(0, keepdim=True), e.std(0, keepdim=True).clamp_min(1e-6)


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) per sample: min(SNR(t), γ) divided by what the prediction's
    MSE already carries (SNR for epsilon, SNR + 1 for v, 1 for the sample), so no timestep dominates training.

    SNR(t) = ᾱ_t / (1 - ᾱ_t); ``timesteps`` (B,) index ``alphas_cumprod`` (T,).
    """
    abar = alphas_cumprod.to(torch.float64)[timesteps.cpu().long()]
    snr = abar / (1.0 - abar)
    clipped = snr.clamp(max=gamma)
    divisor = {"epsilon": snr, "v_prediction": snr + 1.0, "sample": torch.ones_like(snr)}.get(prediction_type)
    if divisor is None:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    return (clipped / divisor).float()


class DecoderObjective(Objective):
    kind = "decoder"

    def __init__(self, clip: ClipModel, decoder: UnclipDecoder, *, max_noise_level: int = 1000,
                 p_uncond: float = 0.1, random_crop: bool = True, snr_gamma: float | None = None):
        super().__init__()
        check_pair(clip, decoder)
        if not 0 <= max_noise_level <= decoder.image_noising_scheduler.config.num_train_timesteps:
            raise ValueError(f"max_noise_level must be in [0, {decoder.image_noising_scheduler.config.num_train_timesteps}]")
        self.clip = clip
        self.decoder = decoder
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive, got {snr_gamma}")
        self.max_noise_level = max_noise_level
        self.p_uncond = p_uncond
        self.snr_gamma = snr_gamma
        self.random_crop = random_crop
        clip.requires_grad_(False)
        decoder.requires_grad_(False)
        decoder.unet.requires_grad_(True)

    def set_train_mode(self) -> None:
        self.train()
        self.clip.eval()

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor]:
        return two_views(record, rng, self.clip.processing, self.decoder.image_size, random_crop=self.random_crop)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            embeds = self.clip.encode_image(batch["clip_pixels"]).float()  # (B, D)
        latents = batch["latents"] if "latents" in batch else self.decoder.encode_pixels(batch["decoder_pixels"])
        latents = latents.to(embeds.device, torch.float32)
        seeds = batch["draw_seed"].reshape(-1)
        t, noise, embed_noise = self.decoder.draws_from_seeds(seeds, latents)
        # per-sample noise level and unconditional drop, from the same per-sample seeds
        g = [torch.Generator().manual_seed(int(s) ^ 0x5DEECE66D) for s in seeds.tolist()]
        levels = torch.tensor([int(torch.randint(0, max(1, self.max_noise_level), (1,), generator=gi)) for gi in g])
        drop = torch.tensor([float(torch.rand((), generator=gi)) < self.p_uncond for gi in g])
        labels = self.decoder.condition(embeds, levels.to(embeds.device), noise=embed_noise)
        labels = torch.where(drop.to(labels.device)[:, None], torch.zeros_like(labels), labels)
        per_sample = self.decoder.denoising_loss(latents, noise, t, lambda noisy: self.decoder.predict(noisy, t, labels),
                                                 reduction="none")  # (B,)
        if self.snr_gamma is not None:
            weights = min_snr_weights(self.decoder.train_scheduler.alphas_cumprod, t, self.snr_gamma,
                                      self.decoder.prediction_type)
            per_sample = per_sample * weights.to(per_sample.device)
        loss = per_sample.mean()
        return {"loss": loss}

    def save_outputs(self, folder: Path) -> None:
        self.decoder.save_pretrained(Path(folder) / "decoder")


class TextToImageDecoderObjective(Objective):
    """Train a text-to-image UNet on (image, caption) pairs; text encoder (and VAE) frozen.

    With probability ``p_uncond`` a caption is replaced by the empty prompt, so generation can
    use classifier-free guidance (as Stable Diffusion was trained).
    """

    kind = "t2i-decoder"

    def __init__(self, decoder: TextToImageDecoder, *, p_uncond: float = 0.1, random_crop: bool = True):
        super().__init__()
        if decoder.text_encoder is None or decoder.tokenizer is None:
            raise ValueError("training a text-to-image decoder needs its text encoder and tokenizer")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        self.decoder = decoder
        self.p_uncond = p_uncond
        self.random_crop = random_crop
        decoder.requires_grad_(False)
        decoder.unet.requires_grad_(True)

    def cast_frozen(self, dtype: torch.dtype) -> None:
        self.decoder.text_encoder.to(dtype)
        if self.decoder.vae is not None:
            self.decoder.vae.to(dtype)

    def set_train_mode(self) -> None:
        self.train()
        self.decoder.text_encoder.eval()
        if self.decoder.vae is not None:
            self.decoder.vae.eval()

    def compile_targets(self) -> list[torch.nn.Module]:
        return [self.decoder.unet]

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor]:
        if record.text is None:
            raise ValueError(f"record {record.key} has no caption: a text-to-image decoder trains on image-text pairs")
        image = T.to_rgb(record.image)
        box = T.random_square_box(image.width, image.height, rng) if self.random_crop else \
            T.center_square_box(image.width, image.height)
        caption = "" if rng.random() < self.p_uncond else record.text
        return {
            "decoder_pixels": T.decoder_view(image.crop(box), self.decoder.image_size),  # (3, S, S)
            "input_ids": self.decoder.tokenize(caption)[0],  # (L,)
            "draw_seed": torch.tensor(rng.getrandbits(62), dtype=torch.int64),
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context = self.decoder.encode_ids(batch["input_ids"])  # (B, L, C), no gradient
        if "latents" in batch:
            latents = batch["latents"].to(self.decoder.device, torch.float32)
        else:
            latents = self.decoder.encode_pixels(batch["decoder_pixels"])
        t, noise = self.decoder.draws_from_seeds(batch["draw_seed"].reshape(-1), latents)
        return {"loss": self.decoder.diffusion_loss(latents, context, timesteps=t, noise=noise)}

    def save_outputs(self, folder: Path) -> None:
        self.decoder.save_pretrained(Path(folder) / "decoder")
