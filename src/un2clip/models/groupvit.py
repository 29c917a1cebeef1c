"""GroupViT (Xu et al., CVPR 2022, NVlabs/GroupViT) through transformers' ``GroupViTModel``.

:class:`GroupViTClip` gives a GroupViT the part of :class:`~un2clip.models.clip.ClipModel`'s interface that the
segmentation evaluation reads (``encode_text``, ``processing``, ``device``, ``patch_size``), and the grouping:

- ``groupings``: each grouping stage's soft assignment of its input tokens to its output groups (softmax over
  the groups; transformers returns it as (B, G, N) per stage);
- :func:`patch_groups`: the assignments multiplied through the stages (patch -> stage-1 group -> stage-2 group),
  as NVlabs' ``get_attn_maps`` does: (B, N_patches, G_last);
- :func:`groupvit_scores`: NVlabs' ``GroupViTSegInference.encode_decode``: the (patch -> group) map on the
  patch grid upsampled bilinearly to the image, each pixel given its arg-max group (one hot); each group's
  projected token scored against the class embeddings (scale x cosine, softmax over classes), kept only for
  the 5 classes the whole image scores highest, softmaxed again and multiplied by the first softmax; a pixel's
  class scores are its group's; with a background class, pixels whose best score is under
  min(0.95, the best group score) are background (the VOC threshold, ``BACKGROUND_THRESHOLD``).

Hub checkpoints (``nvidia/groupvit-gcc-yfcc``, ``nvidia/groupvit-gcc-redcaps``) load by id or folder
(:func:`load_groupvit`); a tiny random one is built from a config (:func:`build_tiny_groupvit`) and written with
``save_pretrained``, which the same loader reads back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from un2clip.data import transforms as T
from un2clip.models.clip import ImageProcessing

BACKGROUND_THRESHOLD = 0.95  # NVlabs' test_cfg bg_thresh on PASCAL VOC
TOP_CLASSES = 5  # classes the whole image keeps (NVlabs' avg_affinity_topk)
MAX_LOGIT_SCALE = 100.0
META_FILE = "un2clip_groupvit.json"
RUN_FOLDER = "groupvit"  # a `un2clip pretrain` run of a GroupViT writes its model here


class GroupViTClip(nn.Module):
    """A HF ``GroupViTModel`` and its tokenizer, with the interface the segmentation evaluation reads."""

    family = "groupvit"

    def __init__(self, model: nn.Module, tokenizer: Any, processing: ImageProcessing | None = None,
                 context_length: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        vcfg = model.config.vision_config
        self.image_size = int(vcfg.image_size)
        self.patch_size = int(vcfg.patch_size)
        self.embed_dim = int(model.config.projection_dim)
        self.meta_processing = processing or ImageProcessing(size=self.image_size)
        self.context_length = int(context_length or model.config.text_config.max_position_embeddings)

    @property
    def processing(self) -> ImageProcessing:
        return self.meta_processing

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp of the learned temperature, clamped at 100 as NVlabs does."""
        return self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def tokenize(self, texts: Sequence[str] | str) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask") if k in enc}

    def encode_text(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Texts -> (B, D) projected text embeddings, not normalised."""
        return self.text_features(**self.tokenize(texts))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.model.text_projection(out.pooler_output)

    def image_outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(B, 3, H, W) -> (image embedding (B, D), group embeddings (B, G, D), per-stage soft assignments
        [(B, G_i, N_i)]); position embeddings interpolated when H, W differ from the model's size."""
        vision = self.model.vision_model
        dtype = next(vision.parameters()).dtype
        pixels = pixels.to(self.device, dtype)
        interpolate = tuple(pixels.shape[-2:]) != (self.image_size, self.image_size)
        hidden = vision.embeddings(pixels, interpolate_pos_encoding=interpolate)
        enc = vision.encoder(hidden_states=hidden, output_attentions=True, return_dict=True)
        tokens = vision.layernorm(enc.last_hidden_state)  # (B, G, W): the last stage's group tokens
        b, g, w = tokens.shape
        groups = self.model.visual_projection(tokens.reshape(b * g, w)).reshape(b, g, -1)
        image = self.model.visual_projection(tokens.mean(dim=1))
        return image, groups, list(enc.attentions)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Model (safetensors + config), tokenizer and the image processing, loadable by :func:`load_groupvit`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        proc = self.processing
        meta = {"image_size": proc.size, "mean": list(proc.mean), "std": list(proc.std),
                "resize_mode": proc.resize_mode, "context_length": self.context_length}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return folder


def patch_groups(assignments: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-stage (B, G_i, N_i) soft assignments -> (B, N_patches, G_last): patch -> group, through every stage."""
    if not assignments:
        raise ValueError("a GroupViT without grouping stages assigns no groups")
    out = None
    for attn in assignments:
        step = attn.transpose(1, 2).float()  # (B, N_i, G_i): input token -> output group
        if out is not None and out.shape[-1] != step.shape[1]:
            raise ValueError(f"stage outputs {out.shape[-1]} groups but the next stage reads {step.shape[1]} tokens")
        out = step if out is None else out @ step
    return out


def pixel_groups(groups: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(N, G) patch -> group map on a (gh, gw) grid -> (H, W) long: each pixel's arg-max group after bilinear
    upsampling (corners not aligned), as NVlabs' ``resize_attn_map`` and one-hot step."""
    n, g = groups.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} patches do not fill a {grid[0]} x {grid[1]} grid")
    maps = groups.t().reshape(1, g, *grid)
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[0]  # (G, H, W)
    return up.argmax(dim=0)


def group_class_scores(groups: torch.Tensor, image: torch.Tensor, text: torch.Tensor, logit_scale: float,
                       top_k: int = TOP_CLASSES) -> torch.Tensor:
    """(G, D) group and (D,) image embeddings, (C, D) class embeddings -> (G, C) NVlabs' group-class scores:
    softmax(s cos(g, c)) restricted to the image's top-k classes, softmaxed again and multiplied by the first."""
    g = F.normalize(groups.float(), dim=-1)
    im = F.normalize(image.float(), dim=-1)
    t = F.normalize(text.float(), dim=-1)
    affinity = logit_scale * g @ t.t()  # (G, C)
    first = affinity.softmax(dim=-1)
    whole = (logit_scale * im @ t.t()).softmax(dim=-1)  # (C,)
    keep = torch.zeros_like(whole, dtype=torch.bool)
    keep[whole.topk(min(top_k, len(whole))).indices] = True
    masked = affinity.masked_fill(~keep[None, :], float("-inf")).softmax(dim=-1)
    return masked * first


def groupvit_scores(group_map: torch.Tensor, scores: torch.Tensor, *, background: bool,
                    threshold: float = BACKGROUND_THRESHOLD) -> torch.Tensor:
    """(H, W) pixel groups and (G, C) group-class scores -> (C + background, H, W) pixel scores: a pixel's
    group's scores; with ``background``, channel 0 is 1 where a pixel's best score is under min(threshold,
    the best group score), else 0."""
    fg = scores[group_map].permute(2, 0, 1)  # (C, H, W)
    if not background:
        return fg
    cut = min(threshold, float(scores.max()))
    bg = (fg.max(dim=0).values < cut).to(fg.dtype)[None]
    return torch.cat([bg, fg])


def tiny_groupvit_config(vocab_size: int, *, image_size: int = 32, patch_size: int = 8, width: int = 64,
                         embed_dim: int = 64, context_length: int = 32, bos: int = 0, eos: int = 1, pad: int = 2):
    """A GroupViTConfig at the world's scale: two grouping stages (8 then 4 groups) on a 4 x 4 patch grid."""
    from transformers import GroupViTConfig

    vision = {"hidden_size": width, "intermediate_size": 4 * width, "depths": [1, 1, 1], "num_hidden_layers": 3,
              "num_group_tokens": [8, 4, 0], "num_output_groups": [8, 4, 4], "num_attention_heads": 4,
              "image_size": image_size, "patch_size": patch_size}
    text = {"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": context_length, "vocab_size": vocab_size, "bos_token_id": bos,
            "eos_token_id": eos, "pad_token_id": pad}
    return GroupViTConfig(text_config=text, vision_config=vision, projection_dim=embed_dim,
                          projection_intermediate_dim=2 * embed_dim)


def build_tiny_groupvit(seed: int = 0, words: Sequence[str] | None = None) -> GroupViTClip:
    """A tiny random GroupViT (``tiny_groupvit_config``) with the world's word-level tokenizer, seeded."""
    from transformers import GroupViTModel

    from un2clip.models.presets import TINY_IMAGE, _default_words
    from un2clip.models.tokenizer import build_word_tokenizer

    context = 32
    tokenizer = build_word_tokenizer(list(words) if words else _default_words(), context_length=context)
    config = tiny_groupvit_config(len(tokenizer), image_size=TINY_IMAGE, context_length=context,
                                  bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroupViTModel(config)
    return GroupViTClip(model.eval(), tokenizer, ImageProcessing(size=TINY_IMAGE), context)


def is_groupvit_folder(path: Path) -> bool:
    """A folder whose config.json is a GroupViT's."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "groupvit"
    except (OSError, ValueError):
        return False


def load_groupvit(spec: str | Path) -> GroupViTClip:
    """A Hub id, a folder (``save_pretrained``'s layout or the Hub's) or a `un2clip pretrain` run of a GroupViT
    (its ``groupvit/``) -> GroupViTClip in eval mode."""
    from transformers import AutoTokenizer, GroupViTModel

    path = Path(spec)
    if path.is_dir() and is_groupvit_folder(path / RUN_FOLDER):
        path = path / RUN_FOLDER
    if path.exists():
        if not is_groupvit_folder(path):
            raise ValueError(f"{spec} is not a GroupViT: its config.json is missing or names another model_type "
                             "(expected a GroupViT folder, a Hub id such as nvidia/groupvit-gcc-yfcc, or a run)")
        source: str = str(path)
    else:
        source = str(spec)
    model = GroupViTModel.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    size = int(model.config.vision_config.image_size)
    processing, context = ImageProcessing(size=size, mean=T.OPENAI_CLIP_MEAN, std=T.OPENAI_CLIP_STD), None
    meta = path / META_FILE
    if meta.is_file():
        data = json.loads(meta.read_text(encoding="utf-8"))
        processing = ImageProcessing(size=int(data["image_size"]), mean=tuple(data["mean"]), std=tuple(data["std"]),
                                     resize_mode=data.get("resize_mode", "shortest_crop"))
        context = data.get("context_length")
    return GroupViTClip(model.eval(), tokenizer, processing, context).eval()
