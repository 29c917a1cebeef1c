"""GroupViT's training objective (NVlabs' ``MultiLabelContrastive``) on a transformers ``GroupViTModel``.

Loss = symmetric image-caption InfoNCE (learnable scale, clamped at 100) + the multi-label contrastive loss: each
caption also gives ``max_words`` prompts 'a photo of a {noun}.' of nouns drawn without replacement from the
caption's nouns (NVlabs tags nouns with NLTK; here a noun is a caption word in the given list, e.g. the world's
``nouns.txt``), padded with the caption itself as NVlabs pads. An image's targets are its own prompts, 1/L each;
each prompt's target is its image (soft cross entropy both ways, ``multi_label_loss``), with its own learnable
scale (init 1/0.07). The grouping blocks assign with hard Gumbel-softmax, straight through, while training
(transformers' ``GroupViTAssignAttention`` in train mode).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from un2clip.data.sources import Record
from un2clip.models.groupvit import MAX_LOGIT_SCALE, RUN_FOLDER, GroupViTClip
from un2clip.objectives.base import Objective, check_state_keys, module_state
from un2clip.objectives.contrastive import clip_contrastive_loss

NOUN_TEMPLATE = "a photo of a {}."


def caption_nouns(caption: str, nouns: Sequence[str]) -> list[str]:
    """The caption's words that are in ``nouns``, in order, each once."""
    known = {n.lower() for n in nouns}
    return list(dict.fromkeys(w for w in re.findall(r"[a-z0-9]+", caption.lower()) if w in known))


def noun_prompts(caption: str, nouns: Sequence[str], max_words: int, rng: random.Random) -> list[str]:
    """``max_words`` prompts: up to that many of the caption's nouns (drawn without replacement) in the template,
    then the caption itself as padding (NVlabs' ``WordAugTokenizeWrapper``)."""
    found = caption_nouns(caption, nouns)
    chosen = rng.sample(found, min(max_words, len(found)))
    return [NOUN_TEMPLATE.format(n) for n in chosen] + [caption] * (max_words - len(chosen))


def multi_label_loss(image: torch.Tensor, prompts: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """(B, D) image and (B, L, D) prompt embeddings, L2-normalised -> NVlabs' multi-label contrastive loss.

    Image b against all B x L prompts: target 1/L on each of its own L; prompt (b, l) against all B images:
    target 1 on image b; soft cross entropy each way, averaged.
    """
    b, n, _ = prompts.shape
    flat = prompts.reshape(b * n, -1)
    logits_img = logit_scale * image @ flat.t()  # (B, B L)
    owner = torch.arange(b, device=image.device).repeat_interleave(n)  # prompt -> its image
    target_img = (owner[None, :] == torch.arange(b, device=image.device)[:, None]).float() / n
    loss_img = -(target_img * logits_img.log_softmax(dim=-1)).sum(dim=-1).mean()
    logits_txt = logit_scale * flat @ image.t()  # (B L, B)
    loss_txt = F.cross_entropy(logits_txt, owner)
    return 0.5 * (loss_img + loss_txt)


class GroupViTObjective(Objective):
    """Train every weight of a GroupViT on captioned images: InfoNCE + ``multi_label_weight`` x multi-label."""

    kind = "groupvit"

    def __init__(self, model: GroupViTClip, *, nouns: Sequence[str] = (), max_words: int = 3,
                 multi_label_weight: float = 1.0) -> None:
        super().__init__()
        if max_words < 0:
            raise ValueError(f"max_words must be >= 0, got {max_words}")
        self.model = model
        self.nouns = list(nouns)
        self.max_words = max_words if self.nouns else 0
        self.multi_label_weight = float(multi_label_weight)
        self.multi_label_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def set_train_mode(self) -> None:
        self.train()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight and buffer (the projections' batch-norm statistics too: a resumed run needs them)."""
        return module_state(self, "")

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_state_keys(self.state_dict(), state, "the GroupViT")
        self.load_state_dict(state)

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.model.tokenizer(texts, padding="max_length", truncation=True, max_length=self.model.context_length,
                                   return_tensors="pt")
        return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor] | None:
        if record.text is None or not record.text.strip():
            return None
        texts = [record.text]
        if self.max_words:
            texts += noun_prompts(record.text, self.nouns, self.max_words, rng)
        tokens = self._tokens(texts)  # (1 + L, T)
        return {"pixels": self.model.processing(record.image), **tokens}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = self.model.model
        image, _, _ = self.model.image_outputs(batch["pixels"])
        ids = batch["input_ids"]  # (B, 1 + L, T)
        b, n, t = ids.shape
        mask = batch.get("attention_mask")
        text = self.model.text_features(ids.reshape(b * n, t), None if mask is None else mask.reshape(b * n, t))
        text = F.normalize(text.float(), dim=-1).reshape(b, n, -1)
        image = F.normalize(image.float(), dim=-1)
        scale = model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        loss_clip = clip_contrastive_loss(image, text[:, 0], scale)
        out = {"loss_contrastive": loss_clip.detach()}
        loss = loss_clip
        if n > 1:
            ml_scale = self.multi_label_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
            loss_ml = multi_label_loss(image, text[:, 1:], ml_scale)
            loss = loss + self.multi_label_weight * loss_ml
            out["loss_multi_label"] = loss_ml.detach()
        return {"loss": loss, **out}

    def save_outputs(self, folder: Path) -> None:
        self.model.save_pretrained(Path(folder) / RUN_FOLDER)
