"""Named encoder + decoder pairs, and the loaders that turn a name or path into models.

A preset names where the pretrained weights live (Hub ids) and how to build the same
architecture with random weights from configs written here (``random_weights=True``),
so that real-size runs and benchmarks need no download. ``tiny`` is built from small
configs with a fixed seed: every process builds the identical model. A preset's decoder is
an unCLIP generator (``decoder_kind="unclip"``, un²CLIP) or a text-to-image one
(``decoder_kind="t2i"``, the DIVA baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from un2clip.models.clip import ClipMeta, ClipModel, ImageProcessing
from un2clip.models.diffusion import DiffusionDecoder
from un2clip.models.llava import build_tiny_language_model
from un2clip.models.t2i import TextToImageDecoder
from un2clip.models.unclip import UnclipDecoder
from un2clip.registry import Registry

TINY_SEED = 0
TINY_VOCAB_FILE = "tiny_vocab.txt"


@dataclass(frozen=True)
class Preset:
    """An encoder + decoder pair known by name."""

    name: str
    clip: str  # Hub id or ``builtin:<name>``
    decoder: str | None  # Hub id, ``builtin:<name>`` or None (train one with train-decoder)
    build_clip: Callable[[], ClipModel]  # real architecture, random weights
    build_decoder: Callable[[], DiffusionDecoder] | None
    description: str = ""
    decoder_kind: str = "unclip"  # "unclip" (UnclipDecoder) | "t2i" (TextToImageDecoder)
    language_model: str | None = None  # LLaVA presets: the causal LM (Hub id or ``builtin:<name>``)
    build_language_model: Callable[[], tuple] | None = None  # -> (causal LM, tokenizer), random weights


PRESETS: Registry[Preset] = Registry("preset")


def register(preset: Preset) -> Preset:
    return PRESETS.add(preset.name, preset)


def get_preset(name: str) -> Preset:
    return PRESETS.lookup(name)


# -- builders ---------------------------------------------------------------------------------------

def build_clip_from_config(
    vision: dict,
    text: dict,
    projection_dim: int,
    *,
    processing: ImageProcessing,
    vocab_words: list[str] | None = None,
    seed: int = TINY_SEED,
    pooling: str = "class",
) -> ClipModel:
    """A HF CLIPModel with random weights (seeded) and a word-level tokenizer built in code; ``pooling``: how
    its image embedding is pooled (``ClipMeta.pooling``: the class token, or CLIPpy's max over patch tokens)."""
    from transformers import CLIPConfig

    from un2clip.models.tokenizer import build_word_tokenizer

    context = int(text.get("max_position_embeddings", 77))
    tokenizer = build_word_tokenizer(vocab_words or _default_words(), context_length=context)
    text = {**text, "vocab_size": max(int(text.get("vocab_size", 0)), len(tokenizer)),
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    model = _init_seeded(lambda: _clip_model(config), seed)
    meta = ClipMeta(family="clip", processing=processing, context_length=context, pooling=pooling)
    return ClipModel(model.eval(), tokenizer, meta)


def _clip_model(config):
    from transformers import CLIPModel

    return CLIPModel(config)


def _init_seeded(make: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _default_words() -> list[str]:
    """Vocabulary of the built-in word tokenizer (``models/data/tiny_vocab.txt``: the shapes world's words).

    Part of the tiny models' definition, like a real model's vocab file; a test checks that every word the
    world writes is in it (after a change of the world's words, rewrite it from ``world_vocabulary()``).
    """
    text = (Path(__file__).parent / "data" / TINY_VOCAB_FILE).read_text(encoding="utf-8")
    return [w for w in text.splitlines() if w]


def build_decoder_from_config(
    unet: dict,
    *,
    embed_dim: int,
    scheduler: dict,
    vae: dict | None = None,
    context_shape: tuple[int, int] = (1, 32),
    image_size: int | None = None,
    seed: int = TINY_SEED,
) -> UnclipDecoder:
    """An UnclipDecoder with random (seeded) weights from configs: the Stable unCLIP parts."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    unet_cfg = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": 2 * embed_dim, **unet}

    def make():
        u = UNet2DConditionModel(**unet_cfg)
        v = AutoencoderKL(**vae) if vae is not None else None
        ctx = torch.randn(1, *context_shape)
        return u, v, ctx

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, v, ctx = make()
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=embed_dim)
    noising = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    sched = DDIMScheduler(**scheduler)
    return UnclipDecoder(u, normalizer, noising, sched, ctx, v, image_size=image_size).eval()


# -- tiny ---------------------------------------------------------------------------------------------

TINY_IMAGE = 32
TINY_EMBED = 128


def build_tiny_clip(seed: int = TINY_SEED, *, image_size: int = TINY_IMAGE, patch_size: int = 8,
                    pooling: str = "class") -> ClipModel:
    """ViT patch 8 on 32 px (17 tokens), width 128, 4 layers; word-level text, 3 layers; 128-d joint space.

    ``image_size`` / ``patch_size`` change the vision tower's input and grid (the rest is the same);
    ``pooling="max"`` makes the image embedding CLIPpy's max over the patch tokens.
    """
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    vision = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
              "image_size": image_size, "patch_size": patch_size, "hidden_act": "quick_gelu"}
    text = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4,
            "max_position_embeddings": 32, "hidden_act": "quick_gelu"}
    processing = ImageProcessing(size=image_size)
    return build_clip_from_config(vision, text, TINY_EMBED, processing=processing, seed=seed, pooling=pooling)


TINY_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                  "prediction_type": "v_prediction", "clip_sample": False, "set_alpha_to_one": False}


def build_tiny_decoder(seed: int = TINY_SEED, embed_dim: int = TINY_EMBED, image_size: int = TINY_IMAGE,
                       channels: tuple[int, int, int] = (32, 64, 128)) -> UnclipDecoder:
    """Pixel-space UNet (32, 64, 128 channels) conditioned like Stable unCLIP; v-prediction, cosine betas."""
    unet = {
        "sample_size": image_size, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
        "block_out_channels": channels,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 8,
    }
    return build_decoder_from_config(unet, embed_dim=embed_dim, scheduler=TINY_SCHEDULER,
                                     context_shape=(1, 32), image_size=image_size, seed=seed)


TINY_VAE = {  # diffusers AutoencoderKL: 32 px -> 4 x 8 x 8 latents (factor 4), ~1 M parameters
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
    "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (32, 64, 64), "norm_num_groups": 16, "sample_size": TINY_IMAGE, "scaling_factor": 1.0,
}


def build_tiny_latent_decoder(seed: int = TINY_SEED, embed_dim: int = TINY_EMBED,
                              channels: tuple[int, int] = (64, 128)) -> UnclipDecoder:
    """Stable unCLIP's layout at the tiny scale: a VAE (``TINY_VAE``; train it first with `un2clip
    train-autoencoder`) and a UNet on its 4 x 8 x 8 latents (64, 128 channels, attention at 4 px), v-prediction,
    cosine betas. About 6x cheaper a training step than the pixel-space ``tiny`` decoder on a CPU."""
    unet = {
        "sample_size": TINY_IMAGE // 4, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "block_out_channels": channels,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 8,
    }
    return build_decoder_from_config(unet, embed_dim=embed_dim, scheduler=TINY_SCHEDULER, vae=TINY_VAE,
                                     context_shape=(1, 32), image_size=TINY_IMAGE, seed=seed)


def build_light_decoder(seed: int = TINY_SEED) -> UnclipDecoder:
    """GenHancer's "lightweight denoiser" at the tiny scale: the tiny decoder at half width (16, 32, 64
    channels, about a quarter of its parameters), conditioned on the pooled class-token embedding only."""
    return build_tiny_decoder(seed, channels=(16, 32, 64))


def build_light_latent_decoder(seed: int = TINY_SEED) -> UnclipDecoder:
    """GenHancer's lightweight denoiser on the tiny latent decoder's latents: its UNet at half width (32, 64)."""
    return build_tiny_latent_decoder(seed, channels=(32, 64))


def build_t2i_decoder_from_config(
    unet: dict,
    *,
    scheduler: dict,
    vae: dict | None = None,
    text_clip: ClipModel | None = None,
    image_size: int | None = None,
    seed: int = TINY_SEED,
) -> TextToImageDecoder:
    """A TextToImageDecoder with random (seeded) weights; prompts go through ``text_clip``'s text tower."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from un2clip.models.t2i import clip_text_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u = UNet2DConditionModel(**unet)
        v = AutoencoderKL(**vae) if vae is not None else None
    text_encoder, tokenizer = clip_text_encoder(text_clip) if text_clip is not None else (None, None)
    return TextToImageDecoder(u, DDIMScheduler(**scheduler), v, text_encoder=text_encoder, tokenizer=tokenizer,
                              image_size=image_size).eval()


def build_tiny_t2i_decoder(seed: int = TINY_SEED, text_clip: ClipModel | None = None,
                           image_size: int = TINY_IMAGE, latent: bool = False) -> TextToImageDecoder:
    """Pixel-space text-to-image UNet, epsilon prediction, cosine betas.

    The tiny unCLIP decoder's UNet (32, 64, 128 channels, attention at 8 px) with cross-attention
    to the text context in place of class labels, so both generators have the same capacity.
    Its text encoder is ``text_clip``'s text tower (default: the ``tiny`` CLIP's), 128-d context.
    ``latent``: the tiny latent decoder's layout instead (``TINY_VAE`` latents, UNet 64 and 128 channels).
    """
    text_clip = text_clip or build_tiny_clip()
    unet = {
        "sample_size": image_size, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
        "block_out_channels": (32, 64, 128),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "cross_attention_dim": int(text_clip.model.config.text_config.hidden_size),
        "attention_head_dim": 8, "norm_num_groups": 8,
    }
    if latent:
        unet.update({"sample_size": image_size // 4, "in_channels": 4, "out_channels": 4,
                     "block_out_channels": (64, 128), "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                     "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")})
    scheduler = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                 "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False}
    return build_t2i_decoder_from_config(unet, scheduler=scheduler, text_clip=text_clip, image_size=image_size,
                                         vae={**TINY_VAE, "sample_size": image_size} if latent else None, seed=seed)


# -- real architectures (random weights on request) -------------------------------------------------------

OPENAI_L14_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu",
                     "projection_dim": 768}
OPENAI_L14_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "max_position_embeddings": 77, "hidden_act": "quick_gelu", "vocab_size": 49408,
                   "projection_dim": 768}


def _openai_l14_clip(image_size: int = 224) -> ClipModel:
    vision = {**OPENAI_L14_VISION, "image_size": image_size}
    return build_clip_from_config(vision, OPENAI_L14_TEXT, 768, processing=ImageProcessing(size=image_size))


def _openclip_h14_clip() -> ClipModel:
    vision = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
              "image_size": 224, "patch_size": 14, "hidden_act": "gelu", "projection_dim": 1024}
    text = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
            "max_position_embeddings": 77, "hidden_act": "gelu", "vocab_size": 49408, "projection_dim": 1024}
    return build_clip_from_config(vision, text, 1024, processing=ImageProcessing(size=224))


SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32, "sample_size": 768, "scaling_factor": 0.18215,
}
SD21_UNCLIP_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
}


def _sd21_unclip_decoder(embed_dim: int) -> UnclipDecoder:
    """SD 2.1 unCLIP UNet (865 M) + SD VAE at 768 px, random weights; the empty-prompt context is random."""
    unet = {
        "sample_size": 96, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True,
    }
    return build_decoder_from_config(unet, embed_dim=embed_dim, scheduler=SD21_UNCLIP_SCHEDULER, vae=SD_VAE,
                                     context_shape=(77, 1024), image_size=768)


SD21_BASE_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
}
# SD 2.x text encoder: OpenCLIP ViT-H/14's text tower without its last layer (23 of 24), 1024-d hidden states
SD2_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
            "max_position_embeddings": 77, "hidden_act": "gelu", "vocab_size": 49408, "projection_dim": 512}


def _sd21_base_decoder() -> TextToImageDecoder:
    """SD 2.1-base (865 M UNet, 512 px, epsilon) + SD VAE + SD 2 text encoder, random weights; word tokenizer."""
    unet = {
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True,
    }
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 16}  # unused: only the text tower is kept
    text_clip = build_clip_from_config(vision, SD2_TEXT, 512, processing=ImageProcessing(size=32))
    return build_t2i_decoder_from_config(unet, scheduler=SD21_BASE_SCHEDULER, vae={**SD_VAE, "sample_size": 512},
                                         text_clip=text_clip, image_size=512)


# -- small: the real setting's proportions at CPU scale ------------------------------------------------------

SMALL_CLIP_IMAGE = 224
SMALL_DECODER_IMAGE = 128
SMALL_EMBED = 512


def build_small_clip(seed: int = TINY_SEED) -> ClipModel:
    """ViT-B/32-like image tower cut to 4 of 12 layers (width 768, 224 px, 50 tokens), 512-d joint space."""
    vision = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 4, "num_attention_heads": 12,
              "image_size": SMALL_CLIP_IMAGE, "patch_size": 32, "hidden_act": "quick_gelu"}
    text = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 2, "num_attention_heads": 8,
            "max_position_embeddings": 77, "hidden_act": "quick_gelu"}
    return build_clip_from_config(vision, text, SMALL_EMBED, processing=ImageProcessing(size=SMALL_CLIP_IMAGE),
                                  seed=seed)


def build_small_decoder(seed: int = TINY_SEED) -> UnclipDecoder:
    """Stable unCLIP's layout at 128 px: a 4-block VAE (32-128 channels, factor 8, 4 x 16 x 16 latents) and a
    138 M UNet (128-512 channels, linear-projection cross-attention at 64-d heads, v-prediction). Per image the
    UNet's forward + input backward is ~70 % of a step's FLOPs, the VAE ~10 %, as in the 768 px original."""
    unet = {
        "sample_size": SMALL_DECODER_IMAGE // 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 256, "attention_head_dim": (2, 4, 8, 8), "use_linear_projection": True,
    }
    vae = {**SD_VAE, "layers_per_block": 1, "block_out_channels": (32, 64, 128, 128),
           "sample_size": SMALL_DECODER_IMAGE}
    return build_decoder_from_config(unet, embed_dim=SMALL_EMBED, scheduler=SD21_UNCLIP_SCHEDULER, vae=vae,
                                     context_shape=(77, 256), image_size=SMALL_DECODER_IMAGE, seed=seed)


register(Preset(
    "tiny", "builtin:tiny", "builtin:tiny", build_tiny_clip, build_tiny_decoder,
    "tiny CLIP (ViT patch 8, 32 px, 128-d) + pixel-space unCLIP decoder; tests and the demo",
))
register(Preset(
    "tiny-latent", "builtin:tiny", "builtin:tiny-latent", build_tiny_clip, build_tiny_latent_decoder,
    "tiny CLIP + latent unCLIP decoder (tiny AutoencoderKL, 4 x 8 x 8 latents); the shapes world's decoder",
))
register(Preset(
    "tiny-maxpool", "builtin:tiny-maxpool", "builtin:tiny-latent", lambda: build_tiny_clip(pooling="max"),
    build_tiny_latent_decoder,
    "tiny CLIP whose image embedding is CLIPpy's max over its patch tokens (no class token) + the latent "
    "decoder; issue 28's localisation lever",
))
register(Preset(
    "tiny-p4-maxpool", "builtin:tiny-p4-maxpool", "builtin:tiny-latent",
    lambda: build_tiny_clip(patch_size=4, pooling="max"), build_tiny_latent_decoder,
    "tiny CLIP at its 32 px with patch 4 (8 x 8 grid, 65 tokens) and CLIPpy's max pooling + the latent decoder; "
    "issue 28's finer native grid",
))
register(Preset(
    "tiny-64", "builtin:tiny-64", "builtin:tiny-latent", lambda: build_tiny_clip(image_size=64),
    build_tiny_latent_decoder,
    "tiny CLIP at 64 px, patch 8 (8 x 8 grid; `world generate --image-size 64`) + the latent decoder (32 px)",
))
register(Preset(
    "tiny-64-p4", "builtin:tiny-64-p4", "builtin:tiny-latent",
    lambda: build_tiny_clip(image_size=64, patch_size=4), build_tiny_latent_decoder,
    "tiny CLIP at 64 px, patch 4 (16 x 16 grid, 257 tokens: several times the cost of tiny-64) + the latent decoder",
))
register(Preset(
    "small", "builtin:small", "builtin:small", build_small_clip, build_small_decoder,
    "ViT-B/32-like encoder (4 layers) + latent unCLIP decoder (VAE, 138 M UNet) at 128 px, random weights; "
    "CPU benchmarks",
))
register(Preset(
    "openai-l14", "openai/clip-vit-large-patch14", "stabilityai/stable-diffusion-2-1-unclip-small",
    _openai_l14_clip, lambda: _sd21_unclip_decoder(768),
    "OpenAI ViT-L/14 @224 + Stable unCLIP small (SD 2.1, 768 px); the paper's main setting",
))
register(Preset(
    "openclip-h14", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "stabilityai/stable-diffusion-2-1-unclip",
    _openclip_h14_clip, lambda: _sd21_unclip_decoder(1024),
    "OpenCLIP ViT-H/14 (LAION-2B) + Stable unCLIP (SD 2.1, 768 px)",
))
register(Preset(
    "openai-l14-336", "openai/clip-vit-large-patch14-336", None, lambda: _openai_l14_clip(336), None,
    "OpenAI ViT-L/14 @336; no public unCLIP: train one with `un2clip train-decoder`",
))
register(Preset(
    "genhancer-tiny", "builtin:tiny", "builtin:genhancer-tiny", build_tiny_clip, build_light_decoder,
    "GenHancer-style baseline, tiny: the tiny CLIP + a half-width decoder (trained on the CLIP first, then frozen)",
))
register(Preset(
    "genhancer-tiny-latent", "builtin:tiny", "builtin:genhancer-tiny-latent", build_tiny_clip,
    build_light_latent_decoder,
    "GenHancer-style baseline on the tiny latent decoder's VAE: a half-width latent UNet; the shapes world's",
))
register(Preset(
    "diva-tiny-latent", "builtin:tiny", "builtin:diva-tiny-latent", build_tiny_clip,
    lambda: build_tiny_t2i_decoder(latent=True),
    "DIVA baseline on the tiny latent decoder's VAE: a latent text-to-image UNet on the tiny CLIP's text tower",
    decoder_kind="t2i",
))
register(Preset(
    "diva-tiny", "builtin:tiny", "builtin:diva-tiny", build_tiny_clip, build_tiny_t2i_decoder,
    "DIVA baseline, tiny: the tiny CLIP + a pixel-space text-to-image UNet on its text tower; tests",
    decoder_kind="t2i",
))
register(Preset(
    "diva-openai-l14", "openai/clip-vit-large-patch14", "stabilityai/stable-diffusion-2-1-base",
    _openai_l14_clip, _sd21_base_decoder,
    "DIVA baseline: OpenAI ViT-L/14 @224 through frozen text-to-image SD 2.1-base (512 px, epsilon)",
    decoder_kind="t2i",
))
register(Preset(
    "llava-tiny", "builtin:tiny", None, build_tiny_clip, None,
    "LLaVA in the shapes world: the tiny CLIP as tower + a 2-layer Llama (width 128) on the world's words; "
    "`un2clip llava train` (--clip picks the tower, e.g. a world pretrain run)",
    language_model="builtin:llava-tiny", build_language_model=lambda: build_tiny_language_model(),
))


def describe_presets() -> str:
    rows = [f"{p.name:16s} {p.clip} + {p.language_model or p.decoder or '(none)'}\n{'':16s} {p.description}"
            for p in PRESETS.values()]
    return "\n".join(rows)
