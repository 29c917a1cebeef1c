"""The segmentation methods that are models rather than last-block variants: ``lseg`` and ``groupvit``.

Each scores a batch of windows against the text queries, (B, 3, h, w) -> (B, Q, h, w), and the rest of the
pipeline (sliding windows, resizing, arg-max over classes) is the training-free heads' (:mod:`un2clip.eval.seg`):

- ``lseg``: a trained LSeg head (`un2clip train-dense`) on the frozen tower of ``--model``: cosine of each
  pixel's embedding with each query (the bare label names, as LSeg embeds them), upsampled bilinearly to the
  window; the softmax then runs at LSeg's scale 1/0.07. The label names may be any: those it was not trained
  on are LSeg's zero-shot case.
- ``groupvit``: a GroupViT (``--model``: Hub id, folder or pretrain run) segmenting by its grouping, as
  NVlabs' ``GroupViTSegInference`` (:mod:`un2clip.models.groupvit`): per window the one-hot pixel groups
  times the group-class scores, the background channel from the 0.95 threshold; prompts 'a photo of a {c}.'
  (NVlabs' ``simple`` template) unless ``--templates``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch.nn import functional as F

from un2clip.models.groupvit import (
    BACKGROUND_THRESHOLD,
    GroupViTClip,
    group_class_scores,
    groupvit_scores,
    patch_groups,
    pixel_groups,
)
from un2clip.models.lseg import LSegHead, block_outputs

DENSE_METHODS = ("lseg", "groupvit")
DEFAULT_TEMPLATES = {"lseg": ["{c}"], "groupvit": ["a photo of a {c}."]}


class DenseScorer(Protocol):
    """Scores windows against text queries: (B, 3, h, w) normalised crops -> (B, Q, h, w)."""

    def window_logits(self, crops: torch.Tensor, queries: torch.Tensor) -> torch.Tensor: ...


class LSegScorer:
    """An LSeg head on a CLIP's frozen tower: cosine of pixel embeddings and queries."""

    def __init__(self, model, head: LSegHead) -> None:
        cfg = head.config
        width = int(model.vision_model.config.hidden_size)
        if cfg.width != width or cfg.embed_dim != model.embed_dim:
            raise ValueError(f"the LSeg head reads a tower of width {cfg.width} into a {cfg.embed_dim}-d joint space "
                             f"(trained on {cfg.model or 'an unnamed model'}), but the model has width {width} and a "
                             f"{model.embed_dim}-d joint space: pass the --model it was trained on")
        self.model, self.head = model, head.to(model.device).eval()

    def window_logits(self, crops: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        p = self.model.patch_size
        grid = (crops.shape[-2] // p, crops.shape[-1] // p)
        dtype = next(self.model.vision_model.parameters()).dtype
        hidden = block_outputs(self.model.vision_model, crops.to(self.model.device, dtype), self.head.config.blocks)
        emb = F.normalize(self.head([h.float() for h in hidden], grid).float(), dim=1)  # (B, D, 8gh, 8gw)
        logits = torch.einsum("bdhw,qd->bqhw", emb, F.normalize(queries.float(), dim=-1).to(emb.device))
        return F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)


class GroupViTScorer:
    """NVlabs' GroupViT segmentation per window; queries of the background class get the threshold channel."""

    def __init__(self, model: GroupViTClip, query_class: Sequence[int], background: int | None, *,
                 threshold: float = BACKGROUND_THRESHOLD) -> None:
        self.model = model
        self.query_class = [int(c) for c in query_class]
        self.background = background
        self.threshold = threshold
        self.fg = [q for q, c in enumerate(self.query_class) if c != background]
        if not self.fg:
            raise ValueError("GroupViT segmentation needs at least one class besides the background")

    def window_logits(self, crops: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        h, w = crops.shape[-2:]
        p = self.model.patch_size
        image, groups, assignments = self.model.image_outputs(crops)
        per_patch = patch_groups(assignments)  # (B, N, G)
        scale = float(self.model.logit_scale)
        text = queries.to(groups.device)[self.fg]
        has_bg = self.background is not None
        out = crops.new_zeros((crops.shape[0], len(self.query_class), h, w), dtype=torch.float32)
        for b in range(crops.shape[0]):
            group_map = pixel_groups(per_patch[b], (h // p, w // p), (h, w))
            scores = group_class_scores(groups[b], image[b], text, scale)
            pixel = groupvit_scores(group_map, scores, background=has_bg, threshold=self.threshold)
            out[b, self.fg] = pixel[1:] if has_bg else pixel
            if has_bg:
                out[b, [q for q, c in enumerate(self.query_class) if c == self.background]] = pixel[0]
        return out
