"""Contrastive image-text pre-training: symmetric InfoNCE with a learnable temperature (CLIP).

Optional NegCLIP-style hard negatives (Yuksekgonul et al. 2023): each caption also yields a copy
with one word swapped for another of its group (``circle`` -> ``square``, ``red`` -> ``blue``); the
image must prefer its own caption over every caption of the batch and every swapped copy, so the
text tower has to separate the words of a group and the image tower has to see what they name.
"""

from __future__ import annotations

import math
import random
import re
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


def contrastive_loss_with_negatives(image_features: torch.Tensor, text_features: torch.Tensor,
                                    negative_features: torch.Tensor, negative_valid: torch.Tensor,
                                    logit_scale: torch.Tensor) -> torch.Tensor:
    """:func:`clip_contrastive_loss` whose image-to-text side also scores extra negative captions.

    ``negative_features`` (B, D): one swapped caption per sample; ``negative_valid`` (B,) bool: False where a
    caption had no word to swap (that column is left out). The text-to-image side is unchanged.
    """
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    pos = logit_scale * image_features @ text_features.t()  # (B, B)
    neg = logit_scale * image_features @ negative_features.t()  # (B, B): every image against every swapped caption
    neg = neg.masked_fill(~negative_valid.to(neg.device)[None, :], float("-inf"))
    image_to_text = F.cross_entropy(torch.cat([pos, neg], dim=1), labels)  # (B, 2B)
    return 0.5 * (image_to_text + F.cross_entropy(pos.t(), labels))


def read_swap_groups(path: str | Path) -> list[list[str]]:
    """Groups of interchangeable words, one group per line (words separated by spaces or commas)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected word groups for hard negatives, one group per line")
    groups = [[w for w in re.split(r"[\s,]+", line.strip().lower()) if w]
              for line in path.read_text(encoding="utf-8").splitlines()]
    groups = [g for g in groups if g and not g[0].startswith("#")]
    for g in groups:
        if len(set(g)) < 2:
            raise ValueError(f"{path}: a group needs two or more distinct words, got {g}")
    return groups


def swap_one_word(text: str, groups: list[list[str]], rng: random.Random) -> str | None:
    """``text`` with one word (drawn uniformly among those that belong to a group) replaced by another word of
    its group, drawn uniformly; None when no word of ``text`` belongs to a group. Matching ignores case."""
    group_of = {w: g for g in groups for w in g}
    spans = [m for m in re.finditer(r"[A-Za-z0-9]+", text) if m.group(0).lower() in group_of]
    if not spans:
        return None
    m = spans[rng.randrange(len(spans))]
    word = m.group(0).lower()
    other = rng.choice([w for w in group_of[word] if w != word])
    return text[:m.start()] + other + text[m.end():]


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
                 train_text: bool = True, hard_negatives: str | None = None):
        """``hard_negatives``: a text file of interchangeable word groups (see :func:`read_swap_groups`);
        each caption then also gives one swapped caption as an extra negative for its batch."""
        super().__init__()
        self.clip = clip
        self.swap_groups = read_swap_groups(hard_negatives) if hard_negatives else None
        self.max_log_scale = math.log(max_logit_scale)
        self.random_crop = random_crop
        clip.requires_grad_(True)
        if not train_text:
            clip.model.text_model.requires_grad_(False)
            if hasattr(clip.model, "text_projection"):
                clip.model.text_projection.requires_grad_(False)

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor] | None:
        """The image's CLIP view and its caption's tokens; None (skipped and counted like an unreadable image)
        for a record whose caption is missing or blank: it is no image-text pair."""
        if record.text is None or not record.text.strip():
            return None
        out = {"pixels": self.clip.processing(record.image), **self._tokens(record.text)}
        if self.swap_groups is not None:
            swapped = swap_one_word(record.text, self.swap_groups, rng)
            out.update({f"neg_{k}": v for k, v in self._tokens(swapped or record.text).items()})
            out["neg_valid"] = torch.tensor(swapped is not None)
        return out

    def _tokens(self, text: str) -> dict[str, torch.Tensor]:
        tokens = self.clip.tokenizer(text, padding="max_length", truncation=True,
                                     max_length=self.clip.meta.context_length, return_tensors="pt")
        out = {"input_ids": tokens["input_ids"][0]}
        if "attention_mask" in tokens and self.clip.family == "clip":
            out["attention_mask"] = tokens["attention_mask"][0]
        return out

    def _encode_text(self, batch: dict[str, torch.Tensor], prefix: str, device: torch.device) -> torch.Tensor:
        model = self.clip.model
        inputs = {k: batch[prefix + k].to(device) for k in ("input_ids", "attention_mask") if prefix + k in batch}
        txt = model.text_model(**inputs).pooler_output
        if self.clip.family == "clip":
            txt = model.text_projection(txt)
        return F.normalize(txt.float(), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = self.clip.model
        img = self.clip.encode_image(batch["pixels"])  # (B, D)
        img = gather_with_grad(F.normalize(img.float(), dim=-1))
        txt = gather_with_grad(self._encode_text(batch, "", img.device))
        with torch.no_grad():
            model.logit_scale.clamp_(0, self.max_log_scale)
        scale = model.logit_scale.exp()
        if "neg_input_ids" not in batch:
            return {"loss": clip_contrastive_loss(img, txt, scale), "logit_scale": scale.detach()}
        neg = gather_with_grad(self._encode_text(batch, "neg_", img.device))
        valid = gather_with_grad(batch["neg_valid"].to(img.device).float()) > 0.5
        loss = contrastive_loss_with_negatives(img, txt, neg, valid, scale)
        return {"loss": loss, "logit_scale": scale.detach(), "negatives": valid.float().mean()}

    def save_outputs(self, folder: Path) -> None:
        self.clip.save_pretrained(Path(folder) / "clip")
