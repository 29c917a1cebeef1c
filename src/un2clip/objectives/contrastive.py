"""Contrastive image-text pre-training: symmetric InfoNCE with a learnable temperature (CLIP)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from un2clip.data.sources import Record
from un2clip.models.clip import ClipModel
from un2clip.objectives.base import Objective


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the (B, B) similarity matrix; row i's positive is column i.

    Features are (B, D) and L2-normalised; ``logit_scale`` is the (already exponentiated) scale.
    """
    logits = logit_scale * image_features @ text_features.t()  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All processes' rows in rank order; gradients flow back to each process's own rows."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    if torch.distributed.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class ContrastiveObjective(Objective):
    """Train a ClipModel's two towers on image-caption pairs; the global batch is the negatives."""

    kind = "contrastive"

    def __init__(self, clip: ClipModel, *, max_logit_scale: float = 100.0, random_crop: bool = False,
                 train_text: bool = True):
        super().__init__()
        self.clip = clip
        self.max_log_scale = math.log(max_logit_scale)
        self.random_crop = random_crop
        clip.requires_grad_(True)
        if not train_text:
            clip.model.text_model.requires_grad_(False)
            if hasattr(clip.model, "text_projection"):
                clip.model.text_projection.requires_grad_(False)

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor] | None:
        if record.text is None:
            raise ValueError(f"record {record.key} has no caption: contrastive training needs image-text pairs")
        tokens = self.clip.tokenizer(record.text, padding="max_length", truncation=True,
                                     max_length=self.clip.meta.context_length, return_tensors="pt")
        out = {"pixels": self.clip.processing(record.image), "input_ids": tokens["input_ids"][0]}
        if "attention_mask" in tokens and self.clip.family == "clip":
            out["attention_mask"] = tokens["attention_mask"][0]
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = self.clip.model
        img = self.clip.encode_image(batch["pixels"])  # (B, D)
        txt_inputs = {k: batch[k].to(img.device) for k in ("input_ids", "attention_mask") if k in batch}
        out = model.text_model(**txt_inputs)
        txt = out.pooler_output
        if self.clip.family == "clip":
            txt = model.text_projection(txt)
        img = gather_with_grad(F.normalize(img.float(), dim=-1))
        txt = gather_with_grad(F.normalize(txt.float(), dim=-1))
        with torch.no_grad():
            model.logit_scale.clamp_(0, self.max_log_scale)
        scale = model.logit_scale.exp()
        loss = clip_contrastive_loss(img, txt, scale)
        return {"loss": loss, "logit_scale": scale.detach()}

    def save_outputs(self, folder: Path) -> None:
        self.clip.save_pretrained(Path(folder) / "clip")
