"""GLIP-style phrase grounding as an evaluation of a frozen CLIP: train a grounding head on its patch grid.

Both CLIP towers stay frozen; only :class:`~un2clip.models.grounding.GroundingHead` trains, so what the head
reaches measures how much of where-is-what the encoder's patch tokens carry. The loss is GLIP's for its
detection head, with FCOS's single-level assignment instead of ATSS (one grid, no anchors):

- assignment (FCOS, no centre sampling): a location is positive for the ground-truth boxes whose inside holds its
  centre, the smallest of them when several do; a box that holds no location centre (smaller than a cell) gets
  the location of the cell its centre lies in;
- token loss: GLIP's token-level binary sigmoid focal loss (alpha 0.25, gamma 2) between the region-word logits
  and each location's row of the positive map (its box's phrase tokens; zeros for a negative location), over
  the caption's real tokens, summed and divided by the number of positive locations;
- box loss: GIoU loss of the positive locations' boxes, weighted by their centerness targets and divided by the
  targets' sum; centerness: binary cross-entropy to sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), summed
  over positive locations and divided by their number.

GLIP marks a negative location's target on the last of its 256 token slots, a padding slot the text mask drops
whenever a caption is shorter than 256 tokens; here a negative location's targets are all zeros.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from un2clip.data import transforms as T
from un2clip.data.sources import Record
from un2clip.models.clip import ClipModel
from un2clip.models.grounding import (
    GroundingHead,
    GroundingHeadConfig,
    boxes_to_ltrb,
    location_centers,
    ltrb_to_boxes,
    phrase_token_map,
)
from un2clip.objectives.base import Objective

TOKEN_ALPHA, TOKEN_GAMMA = 0.25, 2.0  # GLIP's MODEL.DYHEAD.FUSE_CONFIG.TOKEN_ALPHA / TOKEN_GAMMA


def token_sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *,
                             alpha: float = TOKEN_ALPHA, gamma: float = TOKEN_GAMMA) -> torch.Tensor:
    """Sum over the unmasked entries of the binary focal loss of ``logits`` against 0/1 ``targets``.

    ``logits``, ``targets`` (B, N, L); ``mask`` (B, L) real tokens (broadcast over the N locations).
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return (loss * mask[:, None, :].to(loss.dtype)).sum()


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, 4), (K, 4) boxes x0, y0, x1, y1 -> (K,) 1 - generalised IoU."""
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    lt, rb = torch.maximum(pred[:, :2], target[:, :2]), torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_p + area_t - inter + 1e-7
    hull = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).prod(-1) + 1e-7
    return 1 - (inter / union - (hull - union) / hull)


def centerness_targets(ltrb: torch.Tensor) -> torch.Tensor:
    """(K, 4) distances -> (K,) FCOS centerness, 0 where the centre is outside its box."""
    d = ltrb.clamp(min=0)
    lr, tb = d[:, [0, 2]], d[:, [1, 3]]
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-12)) * \
            (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-12))
    return ratio.sqrt()


def assign_locations(centers: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """FCOS's assignment on one grid: (N,) index of each location's box in ``boxes`` (K, 4), or -1 (negative).

    A location whose centre lies inside several boxes takes the smallest; a box that holds no centre takes the
    location of the cell its own centre lies in (unless that location is inside another box already).
    """
    n = centers.shape[0]
    if boxes.shape[0] == 0:
        return torch.full((n,), -1, dtype=torch.long)
    inside = boxes_to_ltrb(centers, boxes).min(-1).values > 0  # (N, K)
    h, w = grid
    for k in torch.nonzero(~inside.any(0)).flatten().tolist():
        cx = float((boxes[k, 0] + boxes[k, 2]) / 2)
        cy = float((boxes[k, 1] + boxes[k, 3]) / 2)
        col, row = min(max(int(cx * w), 0), w - 1), min(max(int(cy * h), 0), h - 1)
        if not inside[row * w + col].any():
            inside[row * w + col, k] = True
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cost = torch.where(inside, area[None, :].expand(n, -1), torch.full_like(inside, float("inf"), dtype=area.dtype))
    best, index = cost.min(1)
    return torch.where(torch.isfinite(best), index, torch.full_like(index, -1))


def location_targets(centers: torch.Tensor, boxes: torch.Tensor, box_tokens: torch.Tensor,
                     grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Training targets of every location: ``positive`` (N,) bool, ``box_target`` (N, 4) (zeros where negative),
    ``token_target`` (N, L) float, the positive map's row of the location's box (zeros where negative).

    ``boxes`` (K, 4) in fractions of the image side, ``box_tokens`` (K, L) bool: box k's phrase tokens.
    """
    index = assign_locations(centers, boxes, grid)
    positive = index >= 0
    n, length = centers.shape[0], box_tokens.shape[1]
    box_target = torch.zeros(n, 4)
    token_target = torch.zeros(n, length)
    if positive.any():
        box_target[positive] = boxes[index[positive]].float()
        token_target[positive] = box_tokens[index[positive]].float()
    return {"positive": positive, "box_target": box_target, "token_target": token_target}


def tokenize_with_offsets(tokenizer: Any, text: str, length: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` (L,) padded to ``length`` and ``offsets`` (L, 2) character ranges."""
    enc = tokenizer(text, padding="max_length", truncation=True, max_length=length, return_offsets_mapping=True,
                    return_tensors="pt")
    offsets = enc["offset_mapping"][0]
    mask = enc["attention_mask"][0] if "attention_mask" in enc else (enc["input_ids"][0] != tokenizer.pad_token_id)
    return {"input_ids": enc["input_ids"][0], "attention_mask": mask.long(), "offsets": offsets}


def text_token_features(clip: ClipModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) tokens -> (B, L, Dt) the frozen text tower's last hidden states."""
    kwargs = {"attention_mask": attention_mask.to(clip.device)} if clip.family == "clip" else {}
    return clip.model.text_model(input_ids=input_ids.to(clip.device), **kwargs).last_hidden_state


def grounding_pixels(clip: ClipModel, image: Image.Image, size: int) -> torch.Tensor:
    """The whole image resized to ``size`` x ``size`` (no crop: every box stays in the picture), normalised
    as the encoder expects; box fractions of the original image are fractions of this square."""
    proc = clip.processing
    square = T.to_rgb(image).resize((size, size), Image.BICUBIC)
    return T.normalize(T.pil_to_tensor(square), proc.mean, proc.std)


def normalised_boxes(boxes: list[tuple[float, float, float, float]], width: int, height: int) -> torch.Tensor:
    """Pixel boxes -> (K, 4) fractions of the image side, clipped to the image."""
    if not boxes:
        return torch.zeros(0, 4)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return (torch.tensor(boxes, dtype=torch.float32) / scale).clamp(0.0, 1.0)


class GroundingObjective(Objective):
    """Frozen CLIP, trainable :class:`GroundingHead`; batches of images, captions and grounded phrases."""

    kind = "grounding"

    def __init__(self, clip: ClipModel, *, hidden_dim: int = 128, proj_dim: int = 64, input_size: int | None = None,
                 clip_spec: str = "", seed: int = 0):
        super().__init__()
        self.clip = clip
        clip.requires_grad_(False)
        clip.eval()
        self.input_size = int(input_size or clip.image_size)
        if self.input_size % clip.patch_size:
            raise ValueError(f"input size {self.input_size} is not a multiple of the patch size {clip.patch_size}")
        self.grid = (self.input_size // clip.patch_size,) * 2
        self.context = int(clip.meta.context_length)
        text_dim = int(clip.model.config.text_config.hidden_size)
        torch.manual_seed(seed)
        self.head = GroundingHead(GroundingHeadConfig(image_dim=clip.embed_dim, text_dim=text_dim,
                                                      hidden_dim=hidden_dim, proj_dim=proj_dim))
        self.clip_spec = clip_spec
        self._centers = location_centers(*self.grid)

    def set_train_mode(self) -> None:
        self.head.train()
        self.clip.eval()

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor] | None:
        targets = getattr(record, "targets", None)
        if not targets or not record.text:
            return None
        width, height = record.image.size
        enc = tokenize_with_offsets(self.clip.tokenizer, record.text, self.context)
        token_map = phrase_token_map(enc["offsets"], enc["attention_mask"], [list(t.spans) for t in targets])
        boxes, rows = [], []
        for target, tokens in zip(targets, token_map):
            if not tokens.any():  # the phrase fell past the truncated caption
                continue
            for box in target.boxes:
                boxes.append(box)
                rows.append(tokens)
        norm = normalised_boxes(boxes, width, height)
        keep = (norm[:, 2] > norm[:, 0]) & (norm[:, 3] > norm[:, 1]) if len(boxes) else torch.zeros(0, dtype=torch.bool)
        box_tokens = torch.stack(rows)[keep] if rows else torch.zeros(0, self.context, dtype=torch.bool)
        out = location_targets(self._centers, norm[keep], box_tokens, self.grid)
        if not out["positive"].any():
            return None
        return {"pixels": grounding_pixels(self.clip, record.image, self.input_size),
                "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **out}

    def predict(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """The head's outputs for a batch (frozen features computed without gradients)."""
        with torch.no_grad():
            patches = self.clip.image_tokens(pixels)  # (B, N, D)
            tokens = text_token_features(self.clip, input_ids, attention_mask)  # (B, L, Dt)
        return self.head(patches.float(), self.grid, tokens.float())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.clip.device
        out = self.predict(batch["pixels"], batch["input_ids"], batch["attention_mask"])
        positive = batch["positive"].to(device)
        mask = batch["attention_mask"].to(device)
        n_pos = positive.sum().clamp(min=1).float()
        token_loss = token_sigmoid_focal_loss(out["logits"], batch["token_target"].to(device), mask) / n_pos
        target = batch["box_target"].to(device)[positive]  # (P, 4)
        centers = self._centers.to(device)[None].expand(positive.shape[0], -1, -1)[positive]  # (P, 2)
        ltrb = torch.stack([centers[:, 0] - target[:, 0], centers[:, 1] - target[:, 1],
                            target[:, 2] - centers[:, 0], target[:, 3] - centers[:, 1]], dim=-1)
        ctr = centerness_targets(ltrb)
        giou = giou_loss(ltrb_to_boxes(centers, out["ltrb"][positive]), target)
        box_loss = (giou * ctr).sum() / ctr.sum() if float(ctr.sum()) > 0 else giou.mean()
        ctr_loss = F.binary_cross_entropy_with_logits(out["centerness"][positive], ctr, reduction="sum") / n_pos
        loss = token_loss + box_loss + ctr_loss
        return {"loss": loss, "token_loss": token_loss.detach(), "box_loss": box_loss.detach(),
                "centerness_loss": ctr_loss.detach()}

    def save_outputs(self, folder: Path) -> None:
        self.head.save(Path(folder) / "head", info={"clip": self.clip_spec, "input_size": self.input_size,
                                                     "grid": list(self.grid), "context_length": self.context})
