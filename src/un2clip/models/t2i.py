"""TextToImageDecoder: a text-to-image diffusion model (Stable Diffusion's parts) as a generator.

Wraps the parts of diffusers' ``StableDiffusionPipeline`` that DIVA and decoder training need:

- ``vae`` (AutoencoderKL, or ``None`` for a pixel-space model)
- ``unet`` (UNet2DConditionModel conditioned by cross-attention only, no class labels)
- ``scheduler`` (its ``prediction_type`` sets the loss target: epsilon for SD 2.1-base)
- ``text_encoder`` + ``tokenizer`` (optional): prompts -> (B, L, C) cross-attention context.
  A frozen user that needs one fixed prompt computes its context once with
  :meth:`TextToImageDecoder.encode_prompts` and then calls :meth:`drop_text_encoder`.

A folder written by :meth:`TextToImageDecoder.save_pretrained` has the pipeline's layout
(``unet/``, ``vae/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``), so a Stable Diffusion
folder or Hub id (e.g. ``stabilityai/stable-diffusion-2-1-base``) loads the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from un2clip.models.diffusion import DiffusionDecoder, encode_prompts, has_subfolder, load_parts


class TextToImageDecoder(DiffusionDecoder):
    """Frozen text-to-image generator: ``encode_prompts``, ``diffusion_loss``, ``generate``."""

    def __init__(self, unet: nn.Module, scheduler, vae: nn.Module | None = None, *,
                 text_encoder: nn.Module | None = None, tokenizer=None, image_size: int | None = None):
        super().__init__(unet, scheduler, vae, image_size=image_size)
        if getattr(unet.config, "class_embed_type", None) is not None:
            raise ValueError("a text-to-image decoder's UNet takes no class labels "
                             f"(class_embed_type={unet.config.class_embed_type!r}): is this an unCLIP UNet?")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        if text_encoder is not None:
            self._check_text_width(text_encoder)
            text_encoder.requires_grad_(False).eval()  # always frozen here

    @property
    def context_dim(self) -> int:
        """Width of the UNet's cross-attention context (1024 for SD 2.1)."""
        return int(self.unet.config.cross_attention_dim)

    def _check_text_width(self, text_encoder: nn.Module) -> None:
        width = int(text_encoder.config.hidden_size)
        if width != self.context_dim:
            raise ValueError(f"text encoder gives {width}-d hidden states, the UNet's cross-attention "
                             f"takes {self.context_dim}-d context")

    # -- text ----------------------------------------------------------------------------------
    def set_text_encoder(self, text_encoder: nn.Module, tokenizer) -> None:
        """Use this (frozen) text encoder and tokenizer for prompts."""
        self._check_text_width(text_encoder)
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer

    def drop_text_encoder(self) -> None:
        """Forget the text encoder (its prompts' contexts already computed): less memory, smaller state."""
        self.text_encoder = None

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """Prompts -> (B, L, C) cross-attention context (fp32), as ``StableDiffusionPipeline`` computes it."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this decoder has no text encoder (dropped, or loaded without one)")
        if isinstance(prompts, str):
            prompts = [prompts]
        return encode_prompts(self.text_encoder, self.tokenizer, prompts).float()

    def tokenize(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """Prompts -> (B, L) input ids padded to the tokenizer's length (for data-loader workers)."""
        if self.tokenizer is None:
            raise ValueError("this decoder has no tokenizer")
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, C) context (fp32) from the frozen text encoder."""
        if self.text_encoder is None:
            raise ValueError("this decoder has no text encoder (dropped, or loaded without one)")
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(input_ids.to(device))[0].float()

    # -- loss ------------------------------------------------------------------------------------
    def draws_from_seeds(self, seeds: torch.Tensor, latents: torch.Tensor, *,
                         t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (timesteps (B,), noise like latents) from (B,) integer seeds."""
        t, noise = self.seeded_draws(seeds, latents, t_range=t_range)
        return t, noise

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """One UNet call with a (B, L, C) cross-attention context."""
        return self.unet(noisy.to(self.dtype), timesteps, encoder_hidden_states=context.to(self.dtype)).sample

    def diffusion_loss(self, latents: torch.Tensor, context: torch.Tensor, *, timesteps: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       reduction: str = "mean") -> torch.Tensor:
        """Denoising loss given latents (B, C, h, w) and context (B, L, C); draws from ``generator`` if not given."""
        if timesteps is None or noise is None:
            t_draw, n_draw = self.sample_draws(latents, generator)
            timesteps = t_draw if timesteps is None else timesteps
            noise = n_draw if noise is None else noise
        timesteps = timesteps.to(latents.device)
        return self.denoising_loss(latents, noise, timesteps, lambda noisy: self.predict(noisy, timesteps, context),
                                   reduction=reduction)

    # -- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: Sequence[str] | str | None = None, *, context: torch.Tensor | None = None,
                 seed: int = 0, num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 negative_prompt: str = "") -> torch.Tensor:
        """Prompts (or a (B, L, C) context) -> (B, 3, H, W) images in [-1, 1] by DDIM sampling.

        With ``guidance_scale > 1`` classifier-free guidance uses ``negative_prompt`` (the empty
        prompt by default) as the unconditional branch.
        """
        if context is None:
            if prompts is None:
                raise ValueError("give prompts or a context")
            context = self.encode_prompts(prompts)
        context = context.to(self.device, torch.float32)
        uncond = self.encode_prompts([negative_prompt]) if guidance_scale > 1.0 else None

        def predict(inp: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            out = self.predict(inp, tt, context).float()
            if uncond is not None:
                base = self.predict(inp, tt, uncond.to(inp.device).expand(inp.shape[0], -1, -1)).float()
                out = base + guidance_scale * (out - base)
            return out

        gen = torch.Generator("cpu").manual_seed(seed)
        return self.sample_loop(predict, context.shape[0], generator=gen, num_inference_steps=num_inference_steps)

    # -- saving and loading ------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the decoder in ``StableDiffusionPipeline``'s sub-folder layout (safetensors weights)."""
        folder = Path(folder)
        self.save_parts(folder, kind="t2i")
        if self.text_encoder is not None:
            self.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder / "tokenizer")
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, torch_dtype: torch.dtype | None = None,
                        load_text_encoder: bool = True) -> TextToImageDecoder:
        """Load a Stable Diffusion pipeline (Hub id or folder) or a folder written by ``save_pretrained``."""
        from transformers import AutoTokenizer, CLIPTextModel

        src = str(name_or_path)
        local = Path(src)
        if local.exists() and not (local / "unet").is_dir():
            raise FileNotFoundError(
                f"{local} is not a text-to-image decoder folder: expected sub-folders unet/, scheduler/, "
                "text_encoder/, tokenizer/ and optionally vae/ (the StableDiffusionPipeline layout)")
        parts = load_parts(src, torch_dtype=torch_dtype)
        text_encoder = tokenizer = None
        if load_text_encoder and has_subfolder(src, "text_encoder"):
            text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder").eval()
            tokenizer = AutoTokenizer.from_pretrained(src, subfolder="tokenizer")
        return cls(parts["unet"], parts["scheduler"], parts["vae"], text_encoder=text_encoder, tokenizer=tokenizer,
                   image_size=parts["image_size"])


def clip_text_encoder(clip) -> tuple[nn.Module, object]:
    """A ``CLIPTextModel`` holding (a copy of) a ClipModel's text tower, and its tokenizer.

    The hidden states it gives are the tower's last hidden states after the final norm:
    how Stable Diffusion uses a CLIP text encoder.
    """
    from transformers import CLIPTextModel

    if clip.family != "clip":
        raise ValueError(f"only CLIP text towers can serve as a text-to-image text encoder, not {clip.family!r}")
    text_model = CLIPTextModel(clip.model.config.text_config)
    source = clip.model.text_model  # a CLIPTextModel in transformers 5, a CLIPTextTransformer before
    target = getattr(text_model, "text_model", text_model)
    target.load_state_dict(getattr(source, "text_model", source).state_dict())
    return text_model.eval().requires_grad_(False), clip.tokenizer
