"""UnclipDecoder: a frozen image generator conditioned on CLIP image embeddings.

Wraps the parts of diffusers' ``StableUnCLIPImg2ImgPipeline`` that un²CLIP needs:

- ``vae`` (AutoencoderKL, or ``None`` for a pixel-space decoder)
- ``unet`` (UNet2DConditionModel with ``class_embed_type="projection"``)
- ``image_normalizer`` (StableUnCLIPImageNormalizer: mean/std of the CLIP embeddings)
- ``image_noising_scheduler`` (noise augmentation of the embedding)
- ``scheduler`` (the diffusion schedule; its ``prediction_type`` sets the loss target)
- ``text_context`` (B=1, L, C): the text encoder's output for the empty prompt, computed
  once when loading a full pipeline folder; text encoder and tokenizer are then dropped.

A folder written by :meth:`UnclipDecoder.save_pretrained` holds the same sub-folders as the
diffusers pipeline (``unet/``, ``vae/``, ``image_normalizer/``, ``image_noising_scheduler/``,
``scheduler/``) plus ``text_context.safetensors`` in place of ``text_encoder/``/``tokenizer/``.
Latents, noise draws, loss targets, sampling and files common to every generator live in
:class:`un2clip.models.diffusion.DiffusionDecoder`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from un2clip.models.diffusion import DiffusionDecoder, encode_prompts, load_parts


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), cos first, as diffusers' unCLIP noise level uses."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class UnclipDecoder(DiffusionDecoder):
    """Frozen unCLIP generator: ``condition``, ``diffusion_loss``, ``generate``."""

    def __init__(
        self,
        unet: nn.Module,
        image_normalizer: nn.Module,
        image_noising_scheduler,
        scheduler,
        text_context: torch.Tensor,
        vae: nn.Module | None = None,
        *,
        image_size: int | None = None,
    ):
        super().__init__(unet, scheduler, vae, image_size=image_size)
        self.image_normalizer = image_normalizer
        self.image_noising_scheduler = image_noising_scheduler
        self.register_buffer("text_context", text_context.detach().clone(), persistent=False)
        ucfg = unet.config
        self.embed_dim: int = int(image_normalizer.config.embedding_dim)
        cond_width = int(ucfg.projection_class_embeddings_input_dim or 0)
        if cond_width != 2 * self.embed_dim:
            raise ValueError(
                f"decoder's UNet takes class labels of width {cond_width}, but its image normaliser "
                f"has embedding width {self.embed_dim}: expected {2 * self.embed_dim}"
            )

    @torch.no_grad()
    def set_embedding_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the image normaliser to the (1, D) mean and std of the CLIP embeddings it will see."""
        self.image_normalizer.mean.copy_(mean.reshape(1, -1))
        self.image_normalizer.std.copy_(std.reshape(1, -1))

    # -- conditioning -------------------------------------------------------------------------
    def condition(
        self,
        image_embeds: torch.Tensor,
        noise_level: int | torch.Tensor = 0,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, D) CLIP embeddings -> (B, 2D) UNet ``class_labels``.

        Normalise, noise at ``noise_level`` with the image noising scheduler, un-normalise,
        append the sinusoidal embedding of the level: the computation of diffusers'
        ``StableUnCLIPImg2ImgPipeline.noise_image_embeddings``. ``noise_level`` is an int or
        a (B,) tensor of per-sample levels (used when training a decoder).
        """
        b = image_embeds.shape[0]
        if noise is None:
            noise = torch.randn(image_embeds.shape, generator=generator, dtype=image_embeds.dtype,
                                device="cpu" if generator is None else generator.device).to(image_embeds.device)
        if isinstance(noise_level, torch.Tensor):
            levels = noise_level.to(image_embeds.device).long().reshape(-1).expand(b)
        else:
            levels = torch.full((b,), int(noise_level), device=image_embeds.device, dtype=torch.long)
        mean = self.image_normalizer.mean.to(image_embeds.device, image_embeds.dtype)
        std = self.image_normalizer.std.to(image_embeds.device, image_embeds.dtype)
        x = (image_embeds - mean) / std
        x = self.image_noising_scheduler.add_noise(x, noise=noise, timesteps=levels)
        x = x * std + mean
        level_emb = timestep_embedding(levels, x.shape[-1]).to(x.dtype)
        return torch.cat([x, level_emb], dim=1)  # (B, 2D)

    # -- loss ------------------------------------------------------------------------------------
    def draws_from_seeds(self, seeds: torch.Tensor, latents: torch.Tensor, *,
                         t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample (timesteps (B,), noise like latents, embedding noise (B, D)) from (B,) integer seeds.

        Each sample's draws depend on its own seed only, so they do not change with the batch
        composition, the number of processes or gradient accumulation.
        """
        t, noise, embed_noise = self.seeded_draws(seeds, latents, t_range=t_range, extra_shapes=[(self.embed_dim,)])
        return t, noise, embed_noise

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """One UNet call with the empty-prompt text context."""
        context = self.text_context.to(noisy.device, self.dtype).expand(noisy.shape[0], -1, -1)
        return self.unet(
            noisy.to(self.dtype), timesteps, encoder_hidden_states=context,
            class_labels=class_labels.to(self.dtype),
        ).sample

    def diffusion_loss(
        self,
        image_embeds: torch.Tensor,
        latents: torch.Tensor,
        *,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        noise_level: int | torch.Tensor = 0,
        embed_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Denoising loss of the decoder given CLIP embeddings (B, D) and latents (B, C, h, w).

        ``timesteps`` and ``noise`` are drawn from ``generator`` if not given. The target follows
        the scheduler's ``prediction_type``: epsilon -> noise, v_prediction -> velocity,
        sample -> clean latents. ``reduction="none"`` gives the (B,) per-sample losses.
        """
        if timesteps is None or noise is None:
            t_draw, n_draw = self.sample_draws(latents, generator)
            timesteps = t_draw if timesteps is None else timesteps
            noise = n_draw if noise is None else noise
        timesteps = timesteps.to(latents.device)
        labels = self.condition(image_embeds, noise_level, noise=embed_noise, generator=generator)
        return self.denoising_loss(latents, noise, timesteps, lambda noisy: self.predict(noisy, timesteps, labels),
                                   reduction=reduction)

    # -- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        image_embeds: torch.Tensor,
        *,
        seed: int = 0,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        noise_level: int = 0,
    ) -> torch.Tensor:
        """(B, D) embeddings -> (B, 3, H, W) images in [-1, 1] by DDIM sampling.

        With ``guidance_scale > 1`` classifier-free guidance uses zero class labels as the
        unconditional branch, as the diffusers unCLIP pipelines do.
        """
        gen = torch.Generator("cpu").manual_seed(seed)
        labels = self.condition(image_embeds.to(self.device, torch.float32), noise_level, generator=gen)

        def predict(inp: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            out = self.predict(inp, tt, labels).float()
            if guidance_scale > 1.0:
                uncond = self.predict(inp, tt, torch.zeros_like(labels)).float()
                out = uncond + guidance_scale * (out - uncond)
            return out

        return self.sample_loop(predict, image_embeds.shape[0], generator=gen, num_inference_steps=num_inference_steps)

    # -- saving and loading ------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the decoder in the pipeline's sub-folder layout (safetensors weights)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        self.save_parts(folder)
        self.image_normalizer.save_pretrained(folder / "image_normalizer", safe_serialization=True)
        self.image_noising_scheduler.save_pretrained(folder / "image_noising_scheduler")
        save_file({"text_context": self.text_context.detach().float().cpu().contiguous()},
                  str(folder / "text_context.safetensors"))
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, torch_dtype: torch.dtype | None = None) -> UnclipDecoder:
        """Load a Stable unCLIP pipeline (Hub id or folder) or a folder written by ``save_pretrained``."""
        from diffusers import DDPMScheduler
        from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
            StableUnCLIPImageNormalizer,
        )

        src = str(name_or_path)
        local = Path(src)
        if local.exists() and not (local / "unet").is_dir():
            raise FileNotFoundError(
                f"{local} is not an unCLIP decoder folder: expected sub-folders unet/, image_normalizer/, "
                "image_noising_scheduler/, scheduler/ and either text_context.safetensors or "
                "text_encoder/ + tokenizer/ (the StableUnCLIPImg2ImgPipeline layout)"
            )
        parts = load_parts(src, torch_dtype=torch_dtype)
        normalizer = StableUnCLIPImageNormalizer.from_pretrained(src, subfolder="image_normalizer")
        noising = DDPMScheduler.from_pretrained(src, subfolder="image_noising_scheduler")
        context = _load_text_context(src)
        return cls(parts["unet"], normalizer, noising, parts["scheduler"], context, parts["vae"],
                   image_size=parts["image_size"])


@torch.no_grad()
def _load_text_context(src: str) -> torch.Tensor:
    """(1, L, C) context of the empty prompt: from text_context.safetensors or by running the text encoder."""
    from safetensors.torch import load_file

    local = Path(src)
    if local.exists() and (local / "text_context.safetensors").exists():
        return load_file(str(local / "text_context.safetensors"))["text_context"]
    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(src, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder").eval()
    return encode_prompts(text_encoder, tokenizer, [""]).float()  # (1, 77, C): the pipeline's prompt_embeds
