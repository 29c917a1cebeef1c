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
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

DECODER_META = "un2clip_decoder.json"


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), cos first, as diffusers' unCLIP noise level uses."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class UnclipDecoder(nn.Module):
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
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet = unet
        self.vae = vae
        self.image_normalizer = image_normalizer
        self.image_noising_scheduler = image_noising_scheduler
        self.scheduler = scheduler
        # training-time noise schedule with the same betas and prediction type
        self.train_scheduler = DDPMScheduler.from_config(scheduler.config)
        self.register_buffer("text_context", text_context.detach().clone(), persistent=False)
        ucfg = unet.config
        self.embed_dim: int = int(image_normalizer.config.embedding_dim)
        cond_width = int(ucfg.projection_class_embeddings_input_dim or 0)
        if cond_width != 2 * self.embed_dim:
            raise ValueError(
                f"decoder's UNet takes class labels of width {cond_width}, but its image normaliser "
                f"has embedding width {self.embed_dim}: expected {2 * self.embed_dim}"
            )
        self.vae_scale: float = float(vae.config.scaling_factor) if vae is not None else 1.0
        self.vae_factor: int = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_size: int = int(image_size or ucfg.sample_size * self.vae_factor)

    # -- state -------------------------------------------------------------------------------
    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.train_scheduler.config.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def freeze(self) -> UnclipDecoder:
        """No gradients for any weight, eval mode: backward computes input gradients only."""
        self.requires_grad_(False)
        return self.eval()

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

    # -- latents -------------------------------------------------------------------------------
    def encode_pixels(self, pixels: torch.Tensor, *, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> what the UNet denoises (fp32): scaled VAE latents, or the pixels."""
        if self.vae is None:
            return pixels.to(self.device, torch.float32)
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
            latents = dist.sample(generator) if sample else dist.mean
        return latents.float() * self.vae_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode_pixels` -> (B, 3, H, W) in [-1, 1]."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        with torch.no_grad():
            image = self.vae.decode(latents.to(self.vae.dtype) / self.vae_scale).sample
        return image.clamp(-1, 1)

    # -- loss ------------------------------------------------------------------------------------
    def sample_draws(self, latents: torch.Tensor, generator: torch.Generator | None = None,
                     t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (timesteps (B,), noise like latents), reproducible from ``generator``."""
        lo, hi = t_range or (0, self.num_train_timesteps)
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(lo, hi, (latents.shape[0],), generator=generator, device=gen_device)
        noise = torch.randn(latents.shape, generator=generator, device=gen_device, dtype=torch.float32)
        return t.to(latents.device), noise.to(latents.device, latents.dtype)

    def draws_from_seeds(self, seeds: torch.Tensor, latents: torch.Tensor, *,
                         t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample (timesteps (B,), noise like latents, embedding noise (B, D)) from (B,) integer seeds.

        Each sample's draws depend on its own seed only, so they do not change with the batch
        composition, the number of processes or gradient accumulation.
        """
        lo, hi = t_range or (0, self.num_train_timesteps)
        ts, noises, enoises = [], [], []
        for s in seeds.reshape(-1).tolist():
            g = torch.Generator("cpu").manual_seed(int(s))
            ts.append(torch.randint(lo, hi, (1,), generator=g))
            noises.append(torch.randn(latents.shape[1:], generator=g))
            enoises.append(torch.randn((self.embed_dim,), generator=g))
        t = torch.cat(ts).to(latents.device)
        noise = torch.stack(noises).to(latents.device, latents.dtype)
        return t, noise, torch.stack(enoises).to(latents.device)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """One UNet call with the empty-prompt text context."""
        context = self.text_context.to(noisy.device, self.dtype).expand(noisy.shape[0], -1, -1)
        return self.unet(
            noisy.to(self.dtype), timesteps, encoder_hidden_states=context,
            class_labels=class_labels.to(self.dtype),
        ).sample

    def loss_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet should predict: epsilon -> noise, v_prediction -> velocity, sample -> latents."""
        kind = self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.train_scheduler.get_velocity(latents, noise, timesteps)
        if kind == "sample":
            return latents
        raise ValueError(f"unsupported prediction_type {kind!r}")

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
        noise = noise.to(latents.device, latents.dtype)
        noisy = self.train_scheduler.add_noise(latents, noise, timesteps)
        labels = self.condition(image_embeds, noise_level, noise=embed_noise, generator=generator)
        pred = self.predict(noisy, timesteps, labels).float()
        target = self.loss_target(latents, noise, timesteps)
        per_sample = (pred - target.float()).pow(2).flatten(1).mean(1)  # (B,)
        return per_sample.mean() if reduction == "mean" else per_sample

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
        from diffusers import DDIMScheduler

        device = self.device
        b = image_embeds.shape[0]
        gen = torch.Generator("cpu").manual_seed(seed)
        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(num_inference_steps, device=device)
        embeds = image_embeds.to(device, torch.float32)
        labels = self.condition(embeds, noise_level, generator=gen)
        c = self.unet.config.in_channels
        side = self.image_size // self.vae_factor
        x = torch.randn((b, c, side, side), generator=gen).to(device, torch.float32)
        x = x * sched.init_noise_sigma
        for t in sched.timesteps:
            tt = torch.full((b,), int(t), device=device, dtype=torch.long)
            inp = sched.scale_model_input(x, t)
            out = self.predict(inp, tt, labels).float()
            if guidance_scale > 1.0:
                uncond = self.predict(inp, tt, torch.zeros_like(labels)).float()
                out = uncond + guidance_scale * (out - uncond)
            x = sched.step(out, t, x, generator=gen).prev_sample
        return self.decode_latents(x).float()

    # -- saving and loading ------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the decoder in the pipeline's sub-folder layout (safetensors weights)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        if self.vae is not None:
            self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        self.image_normalizer.save_pretrained(folder / "image_normalizer", safe_serialization=True)
        self.image_noising_scheduler.save_pretrained(folder / "image_noising_scheduler")
        self.scheduler.save_pretrained(folder / "scheduler")
        save_file({"text_context": self.text_context.detach().float().cpu().contiguous()},
                  str(folder / "text_context.safetensors"))
        (folder / DECODER_META).write_text(json.dumps({"image_size": self.image_size}, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, torch_dtype: torch.dtype | None = None) -> UnclipDecoder:
        """Load a Stable unCLIP pipeline (Hub id or folder) or a folder written by ``save_pretrained``."""
        from diffusers import (
            AutoencoderKL,
            DDPMScheduler,
            UNet2DConditionModel,
        )
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
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", **kw)
        normalizer = StableUnCLIPImageNormalizer.from_pretrained(src, subfolder="image_normalizer")
        noising = DDPMScheduler.from_pretrained(src, subfolder="image_noising_scheduler")
        scheduler = _load_scheduler(src)
        vae = None
        if _has_subfolder(src, "vae"):
            vae = AutoencoderKL.from_pretrained(src, subfolder="vae", **kw)
        context = _load_text_context(src)
        image_size = None
        if (local / DECODER_META).exists():
            image_size = json.loads((local / DECODER_META).read_text()).get("image_size")
        return cls(unet, normalizer, noising, scheduler, context, vae, image_size=image_size)


def _has_subfolder(src: str, name: str) -> bool:
    local = Path(src)
    if local.exists():
        return (local / name).is_dir()
    from huggingface_hub import file_exists

    return file_exists(src, f"{name}/config.json")


def _load_scheduler(src: str):
    """The pipeline's scheduler, whatever its class (DDIM for Stable unCLIP)."""
    import diffusers
    from huggingface_hub import hf_hub_download

    local = Path(src)
    cfg_path = local / "scheduler" / "scheduler_config.json" if local.exists() else Path(
        hf_hub_download(src, "scheduler/scheduler_config.json"))
    name = json.loads(Path(cfg_path).read_text()).get("_class_name", "DDIMScheduler")
    cls = getattr(diffusers, name, None) or diffusers.DDIMScheduler
    return cls.from_pretrained(src, subfolder="scheduler")


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
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    context = text_encoder(ids)[0].float()  # (1, 77, C): the pipeline's prompt_embeds for ""
    del text_encoder, tokenizer
    return context
