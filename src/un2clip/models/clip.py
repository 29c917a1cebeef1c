"""ClipModel: one interface over Hugging Face CLIP and SigLIP dual encoders.

Every task of the toolkit talks to an image-text model through this class:

- ``encode_image(pixels)``  (B, 3, S, S) -> (B, D)  joint-space embedding. For CLIP this is
  the projected ``image_embeds`` that Stable unCLIP conditions on (or, for a model saved with
  ``pooling="max"``, CLIPpy's max over the projected patch tokens); for SigLIP the pooled
  (attention-pooling head) output.
- ``image_tokens(pixels)``  (B, 3, S, S) -> (B, N, D) per-patch features in the joint space
  (CLIP: last hidden state -> final norm -> projection, class token dropped).
- ``encode_text(texts)``  list[str] -> (B, D) joint-space text embedding.
- ``preprocess(images)``  list[PIL] -> (B, 3, S, S), as the model's image processor does.

Embeddings are returned un-normalised; callers L2-normalise where the protocol says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from un2clip.data import transforms as T

META_FILE = "un2clip_clip.json"
POOLINGS = ("class", "max")  # how a CLIP's image embedding is pooled from its tokens (see ``pool_image``)


@dataclass
class ImageProcessing:
    """How raw images become model input."""

    size: int = 224
    mean: tuple[float, ...] = T.OPENAI_CLIP_MEAN
    std: tuple[float, ...] = T.OPENAI_CLIP_STD
    resize_mode: str = "shortest_crop"  # "shortest_crop" (CLIP) | "squash" (SigLIP)

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest_crop", "squash"):
            raise ValueError(f"resize_mode must be 'shortest_crop' or 'squash', got {self.resize_mode!r}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return T.normalize(T.pil_to_tensor(self.resize(image)), self.mean, self.std)

    def resize(self, image: Image.Image) -> Image.Image:
        """The RGB image at ``size`` x ``size``, before scaling and normalisation (what a uint8 cache stores)."""
        if self.resize_mode == "squash":
            return T.to_rgb(image).resize((self.size, self.size), Image.BICUBIC)
        return T.center_crop(T.resize_short_side(T.to_rgb(image), self.size), self.size)

    def from_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., 3, size, size) uint8 from :meth:`resize` -> model input, bit-identical to ``self(image)``."""
        return T.normalize(pixels.float().div_(255.0), self.mean, self.std)

    def from_unit(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels (B, 3, H, W), already square -> model input at ``size``."""
        if pixels.shape[-1] != self.size or pixels.shape[-2] != self.size:
            pixels = nn.functional.interpolate(
                pixels, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True
            ).clamp(0, 1)
        return T.normalize(pixels, self.mean, self.std)


@dataclass
class ClipMeta:
    """What a saved ClipModel folder records beside the Hugging Face files."""

    family: str = "clip"  # "clip" | "siglip"
    processing: ImageProcessing = field(default_factory=ImageProcessing)
    context_length: int = 77
    pooling: str = "class"  # "class": the class token (CLIP's own) | "max": CLIPpy's max over patch tokens

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.pooling != "class" and self.family != "clip":
            raise ValueError(f"pooling {self.pooling!r} needs a CLIP vision tower (class token), not {self.family}")


def pool_image(out: Any, vision_model: nn.Module, projection: nn.Module, pooling: str = "class") -> torch.Tensor:
    """A CLIP vision tower's output -> (B, D) joint-space image embedding, pooled as ``pooling`` says.

    ``"class"``: the class token through the final norm and the projection (HF's ``pooler_output``).
    ``"max"`` (CLIPpy, arXiv 2210.09996): every patch token through the final norm and the projection,
    then the maximum over patches of each dimension; the class token is left out, so the embedding is
    made of the very tokens ``ClipModel.image_tokens`` hands the dense heads.
    """
    if pooling == "class":
        return projection(out.pooler_output)
    if pooling == "max":
        patches = vision_model.post_layernorm(out.last_hidden_state[:, 1:])  # (B, N, W)
        return projection(patches).amax(dim=1)  # (B, D)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def _processing_from_hf(folder: Path | str, image_size: int, family: str) -> ImageProcessing:
    """Read preprocessor_config.json if the folder or Hub repo has one."""
    default = ImageProcessing(
        size=image_size,
        mean=(0.5, 0.5, 0.5) if family == "siglip" else T.OPENAI_CLIP_MEAN,
        std=(0.5, 0.5, 0.5) if family == "siglip" else T.OPENAI_CLIP_STD,
        resize_mode="squash" if family == "siglip" else "shortest_crop",
    )
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(str(folder))
    except Exception:  # no processor config: keep the family's defaults
        return default
    mean = tuple(getattr(proc, "image_mean", default.mean))
    std = tuple(getattr(proc, "image_std", default.std))
    return ImageProcessing(size=image_size, mean=mean, std=std, resize_mode=default.resize_mode)


class ClipModel(nn.Module):
    """A dual image-text encoder behind one interface (HF CLIP or SigLIP backend)."""

    def __init__(self, model: nn.Module, tokenizer: Any, meta: ClipMeta):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        cfg = model.config
        self.family = meta.family
        self.embed_dim: int = int(
            getattr(cfg, "projection_dim", None) or cfg.vision_config.hidden_size
        ) if meta.family == "clip" else int(cfg.vision_config.hidden_size)
        self.image_size: int = int(cfg.vision_config.image_size)
        self.patch_size: int = int(cfg.vision_config.patch_size)

    # -- parts ---------------------------------------------------------------------------
    @property
    def vision_model(self) -> nn.Module:
        """The HF vision transformer (embeddings, encoder, post_layernorm)."""
        return self.model.vision_model

    @property
    def visual_projection(self) -> nn.Module:
        """Linear map from vision width to the joint space (identity for SigLIP)."""
        return getattr(self.model, "visual_projection", None) or nn.Identity()

    def vision_parameters(self) -> list[nn.Parameter]:
        """The image encoder's parameters: what un²CLIP trains."""
        params = list(self.model.vision_model.parameters())
        if self.family == "clip":
            params += list(self.model.visual_projection.parameters())
        return params

    def vision_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of the image tower (names as in the full HF model)."""
        keep = ("vision_model.", "visual_projection.")
        return {k: v for k, v in self.model.state_dict().items() if k.startswith(keep)}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach())

    @property
    def processing(self) -> ImageProcessing:
        return self.meta.processing

    # -- images ----------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image] | Image.Image) -> torch.Tensor:
        """PIL image(s) -> (B, 3, S, S) float tensor, as the model's own processor does."""
        if isinstance(images, Image.Image):
            images = [images]
        return torch.stack([self.processing(im) for im in images])

    def _vision(self, pixels: torch.Tensor, interpolate: bool) -> Any:
        kwargs = {"interpolate_pos_encoding": True} if interpolate else {}
        dtype = next(self.vision_model.parameters()).dtype
        return self.vision_model(pixel_values=pixels.to(self.device, dtype), **kwargs)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D) joint-space embedding, not normalised."""
        out = self._vision(pixels, interpolate=tuple(pixels.shape[-2:]) != (self.image_size,) * 2)
        return pool_image(out, self.vision_model, self.visual_projection, self.meta.pooling)  # (B, D)

    def image_tokens(self, pixels: torch.Tensor, *, keep_class: bool = False) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N, D) patch features in the joint space, class token dropped.

        ``keep_class=True`` (CLIP only) gives (B, 1 + N, D) with the class token first: every
        token through the final norm and the visual projection.
        """
        if keep_class and self.family != "clip":
            raise ValueError(f"a {self.family} vision tower has no class token")
        # (B, 3, H, W) of any multiple of the patch: positions interpolated (H x W patches, row-major)
        out = self._vision(pixels, interpolate=tuple(pixels.shape[-2:]) != (self.image_size,) * 2)
        hidden = out.last_hidden_state  # (B, 1 + N, W) for CLIP, (B, N, W) post-norm for SigLIP
        if self.family == "clip":
            hidden = self.vision_model.post_layernorm(hidden if keep_class else hidden[:, 1:])
        return self.visual_projection(hidden)  # (B, N, D) or (B, 1 + N, D)

    # -- text ------------------------------------------------------------------------------
    def tokenize(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        """Texts -> padded ``input_ids`` (and ``attention_mask`` for CLIP) on the model's device."""
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.meta.context_length,
            return_tensors="pt",
        )
        keys = ("input_ids", "attention_mask") if self.family == "clip" else ("input_ids",)
        return {k: enc[k].to(self.device) for k in keys if k in enc}

    def encode_text(self, texts: list[str] | str) -> torch.Tensor:
        """Texts -> (B, D) joint-space embedding, not normalised."""
        out = self.model.text_model(**self.tokenize(texts))
        pooled = out.pooler_output
        if self.family == "clip":
            pooled = self.model.text_projection(pooled)
        return pooled

    # -- saving and loading -------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write HF weights (safetensors), config, tokenizer and un2clip's meta to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        meta = asdict(self.meta)
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        _write_preprocessor_config(folder, self.meta.processing, self.family)
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, trust_remote_code: bool = False) -> ClipModel:
        """Load a Hub id or a local folder holding a HF CLIP/SigLIP model and its tokenizer."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        src = str(name_or_path)
        local = Path(src)
        if local.exists() and not (local / "config.json").exists():
            raise FileNotFoundError(
                f"{local} has no config.json: expected a Hugging Face model folder "
                "(config.json, model.safetensors, tokenizer files)"
            )
        config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
        family = _family_of(config.model_type)
        # PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels on GPU)
        model = AutoModel.from_pretrained(src, config=config, trust_remote_code=trust_remote_code,
                                          attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(src)
        meta_path = local / META_FILE
        if meta_path.exists():
            meta = _meta_from_json(json.loads(meta_path.read_text()))
        else:
            meta = ClipMeta(
                family=family,
                processing=_processing_from_hf(src, int(config.vision_config.image_size), family),
                context_length=int(getattr(config.text_config, "max_position_embeddings", 77)),
            )
        return cls(model.eval(), tokenizer, meta)


def _family_of(model_type: str) -> str:
    if model_type in ("clip",):
        return "clip"
    if model_type in ("siglip", "siglip2"):
        return "siglip"
    raise ValueError(f"unsupported model type {model_type!r}: un2clip loads 'clip' and 'siglip' models")


def _meta_from_json(data: dict) -> ClipMeta:
    proc = ImageProcessing(**data.get("processing", {}))
    return ClipMeta(family=data.get("family", "clip"), processing=proc,
                    context_length=int(data.get("context_length", 77)), pooling=data.get("pooling", "class"))


def _write_preprocessor_config(folder: Path, proc: ImageProcessing, family: str) -> None:
    """A preprocessor_config.json so HF's CLIPImageProcessor (and LLaVA) reproduce our preprocessing."""
    if (folder / "preprocessor_config.json").exists():
        return
    if proc.resize_mode == "squash":
        cfg = {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
               "size": {"height": proc.size, "width": proc.size}, "resample": 3,
               "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "image_mean": list(proc.mean), "image_std": list(proc.std)}
    else:
        cfg = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
               "size": {"shortest_edge": proc.size}, "resample": 3, "do_center_crop": True,
               "crop_size": {"height": proc.size, "width": proc.size}, "do_rescale": True,
               "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
               "image_mean": list(proc.mean), "image_std": list(proc.std)}
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))
