"""DiffusionDecoder: what every frozen generator of the toolkit shares.

A diffusers ``UNet2DConditionModel``, an optional ``AutoencoderKL`` (``None``: the UNet
denoises pixels directly) and the pipeline's scheduler, whose ``prediction_type`` sets the
loss target. Subclasses say how the UNet is conditioned:

- :class:`un2clip.models.unclip.UnclipDecoder`: CLIP image embeddings as ``class_labels``
- :class:`un2clip.models.t2i.TextToImageDecoder`: a cross-attention context (text hidden states)

Shared here: pixels <-> what the UNet denoises, per-sample noise draws from integer seeds,
the noising and the loss target, the DDIM sampling loop, and the sub-folder file layout of
diffusers pipelines (``unet/``, ``vae/``, ``scheduler/``) plus ``un2clip_decoder.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

DECODER_META = "un2clip_decoder.json"


class DiffusionDecoder(nn.Module):
    """UNet + optional VAE + scheduler: latents, draws, noising, loss target, sampling, files."""

    def __init__(self, unet: nn.Module, scheduler, vae: nn.Module | None = None, *, image_size: int | None = None):
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        # training-time noise schedule with the same betas and prediction type
        self.train_scheduler = DDPMScheduler.from_config(scheduler.config)
        self.vae_scale: float = float(vae.config.scaling_factor) if vae is not None else 1.0
        self.vae_factor: int = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_size: int = int(image_size or unet.config.sample_size * self.vae_factor)

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

    def freeze(self):
        """No gradients for any weight, eval mode: backward computes input gradients only."""
        self.requires_grad_(False)
        return self.eval()

    def set_vae(self, vae: nn.Module) -> None:
        """Use ``vae`` (e.g. one `un2clip train-autoencoder` trained) in place of the decoder's own VAE."""
        if self.vae is None:
            raise ValueError("this decoder works in pixel space: its UNet denoises pixels and takes no VAE")
        old, new = self.vae.config, vae.config
        if (new.latent_channels, len(new.block_out_channels)) != (old.latent_channels, len(old.block_out_channels)):
            raise ValueError(f"the VAE gives {new.latent_channels}-channel latents at 1/{2 ** (len(new.block_out_channels) - 1)} "
                             f"of the image side; the UNet denoises {old.latent_channels}-channel latents at "
                             f"1/{self.vae_factor}")
        self.vae = vae.to(self.device, next(self.vae.parameters()).dtype)
        self.vae_scale = float(new.scaling_factor)

    # -- latents -------------------------------------------------------------------------------
    def encode_pixels(self, pixels: torch.Tensor, *, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> what the UNet denoises (fp32): scaled VAE latents, or the pixels.

        The latents are the mean of the VAE's latent distribution unless ``sample``.
        """
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

    # -- draws ---------------------------------------------------------------------------------
    def sample_draws(self, latents: torch.Tensor, generator: torch.Generator | None = None,
                     t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (timesteps (B,), noise like latents), reproducible from ``generator``."""
        lo, hi = t_range or (0, self.num_train_timesteps)
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(lo, hi, (latents.shape[0],), generator=generator, device=gen_device)
        noise = torch.randn(latents.shape, generator=generator, device=gen_device, dtype=torch.float32)
        return t.to(latents.device), noise.to(latents.device, latents.dtype)

    def seeded_draws(self, seeds: torch.Tensor, latents: torch.Tensor, *, t_range: tuple[int, int] | None = None,
                     extra_shapes: Sequence[tuple[int, ...]] = ()) -> list[torch.Tensor]:
        """Per-sample [timesteps (B,), noise like latents, *(B, *shape) normal draws] from (B,) integer seeds.

        Sample i's draws come from one CPU generator seeded with ``seeds[i]``, in this order:
        timestep, noise, then each extra shape. They do not change with the batch composition,
        the number of processes or gradient accumulation.
        """
        lo, hi = t_range or (0, self.num_train_timesteps)
        columns: list[list[torch.Tensor]] = [[] for _ in range(2 + len(extra_shapes))]
        for s in seeds.reshape(-1).tolist():
            g = torch.Generator("cpu").manual_seed(int(s))
            columns[0].append(torch.randint(lo, hi, (1,), generator=g))
            columns[1].append(torch.randn(latents.shape[1:], generator=g))
            for j, shape in enumerate(extra_shapes):
                columns[2 + j].append(torch.randn(shape, generator=g))
        t = torch.cat(columns[0]).to(latents.device)
        noise = torch.stack(columns[1]).to(latents.device, latents.dtype)
        return [t, noise] + [torch.stack(c).to(latents.device) for c in columns[2:]]

    # -- loss ------------------------------------------------------------------------------------
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

    def denoising_loss(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                       predict: Callable[[torch.Tensor], torch.Tensor], *, reduction: str = "mean") -> torch.Tensor:
        """Noise ``latents`` (B, C, h, w) at ``timesteps``, ``predict(noisy)``, MSE to the target.

        ``reduction="none"`` gives the (B,) per-sample losses.
        """
        timesteps = timesteps.to(latents.device)
        noise = noise.to(latents.device, latents.dtype)
        noisy = self.train_scheduler.add_noise(latents, noise, timesteps)
        pred = predict(noisy).float()
        target = self.loss_target(latents, noise, timesteps).float()
        per_sample = (pred - target).pow(2).flatten(1).mean(1)  # (B,)
        return per_sample.mean() if reduction == "mean" else per_sample

    # -- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_loop(self, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: int, *,
                    generator: torch.Generator, num_inference_steps: int = 50) -> torch.Tensor:
        """DDIM from pure noise: ``predict(model_input, timesteps (B,))`` -> UNet output; -> (B, 3, H, W) in [-1, 1]."""
        from diffusers import DDIMScheduler

        device = self.device
        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(num_inference_steps, device=device)
        side = self.image_size // self.vae_factor
        x = torch.randn((batch, self.unet.config.in_channels, side, side), generator=generator)
        x = x.to(device, torch.float32) * sched.init_noise_sigma
        for t in sched.timesteps:
            tt = torch.full((batch,), int(t), device=device, dtype=torch.long)
            out = predict(sched.scale_model_input(x, t), tt).float()
            x = sched.step(out, t, x, generator=generator).prev_sample
        return self.decode_latents(x).float()

    # -- files -----------------------------------------------------------------------------------------
    def save_parts(self, folder: Path, **meta) -> None:
        """Write ``unet/``, ``vae/`` (if any), ``scheduler/`` and the meta file into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        if self.vae is not None:
            self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        (folder / DECODER_META).write_text(json.dumps({"image_size": self.image_size, **meta}, indent=2))


def encode_prompts(text_encoder: nn.Module, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Prompts -> (B, L, C) last hidden states of the text encoder: diffusers' ``prompt_embeds``.

    Padded to the tokenizer's ``model_max_length`` without an attention mask, as
    ``StableDiffusionPipeline.encode_prompt`` does for SD 2.x text encoders.
    """
    device = next(text_encoder.parameters()).device
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(device))[0]


def load_parts(src: str, *, torch_dtype: torch.dtype | None = None) -> dict:
    """``unet``, ``vae`` (or None), ``scheduler`` and ``image_size`` (or None) of a pipeline folder or Hub id."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", **kw) if has_subfolder(src, "vae") else None
    meta = read_meta(src)
    return {"unet": unet, "vae": vae, "scheduler": load_scheduler(src), "image_size": meta.get("image_size")}


def read_meta(src: str) -> dict:
    path = Path(src) / DECODER_META
    return json.loads(path.read_text()) if path.exists() else {}


def has_subfolder(src: str, name: str) -> bool:
    local = Path(src)
    if local.exists():
        return (local / name).is_dir()
    from huggingface_hub import file_exists

    return file_exists(src, f"{name}/config.json")


def load_scheduler(src: str):
    """The pipeline's scheduler, whatever its class (DDIM for Stable unCLIP, PNDM for SD 2.1-base)."""
    import diffusers
    from huggingface_hub import hf_hub_download

    local = Path(src)
    cfg_path = local / "scheduler" / "scheduler_config.json" if local.exists() else Path(
        hf_hub_download(src, "scheduler/scheduler_config.json"))
    name = json.loads(Path(cfg_path).read_text()).get("_class_name", "DDIMScheduler")
    cls = getattr(diffusers, name, None) or diffusers.DDIMScheduler
    return cls.from_pretrained(src, subfolder="scheduler")
