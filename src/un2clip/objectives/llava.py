"""LLaVA-1.5's visual instruction tuning as an objective of the one training loop.

The model is a transformers ``LlavaForConditionalGeneration`` (:func:`un2clip.models.llava.build_llava`): a
frozen CLIP tower read at its penultimate layer (patch tokens), a two-layer GELU MLP projector and a causal LM.
Stage ``pretrain`` (LLaVA's feature alignment) trains the projector alone on captions in the ``plain`` style;
stage ``finetune`` (instruction tuning) trains the projector and the whole LM on conversations in the ``v1``
style. The loss is the next-token cross-entropy on the answer tokens only (the mean over a micro-batch's
answer tokens, as LLaVA's trainer computes it per device batch).

Stage ``lm`` (:class:`LanguageModelObjective`) comes before them when the language model has never read text
(``llava-tiny``'s is random): it trains the causal LM alone on texts, Vicuna's role in LLaVA-1.5.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from un2clip.data.conversations import IGNORE_INDEX, LLAVA_SYSTEM, ConversationRecord, conversation_tokens
from un2clip.data.sources import Record
from un2clip.objectives.base import Objective

STAGES = {"pretrain": "plain", "finetune": "v1"}  # stage -> LLaVA's conversation style of that stage


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not ``IGNORE_INDEX``.

    ``logits`` (B, T, V) predict token t + 1 at position t; ``labels`` (B, T).
    """
    shifted = logits[:, :-1].float()
    target = labels[:, 1:]
    return nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1),
                                       ignore_index=IGNORE_INDEX)


class LlavaObjective(Objective):
    """Train a LLaVA's projector (``stage="pretrain"``) or projector + language model (``"finetune"``).

    Samples are padded to ``max_length`` in the data-loader workers (fixed shapes collate) and each batch is
    cut back to its longest sample before the model runs. Conversations longer than ``max_length`` are cut at
    the end (LLaVA's ``model_max_length``); one with no answer token left is skipped and counted as unreadable.
    """

    kind = "llava"

    def __init__(self, model: Any, processor: Any, *, stage: str = "finetune", max_length: int = 2048,
                 system: str = LLAVA_SYSTEM, style: str | None = None):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
        self.model, self.processor, self.stage = model, processor, stage
        self.style = style or STAGES[stage]
        self.system = system
        config = model.config
        vision = config.vision_config
        self.n_image_tokens = (vision.image_size // vision.patch_size) ** 2 + (
            1 if config.vision_feature_select_strategy == "full" else 0)
        if max_length <= self.n_image_tokens + 2:
            raise ValueError(f"max_length {max_length} leaves no room for text after the {self.n_image_tokens} "
                             "image tokens")
        self.max_length = int(max_length)
        self.image_token_id = int(config.image_token_index)
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "right"
        inner = model.model
        for p in model.parameters():
            p.requires_grad_(False)
        trained: list[nn.Module] = [inner.multi_modal_projector]
        if stage == "finetune":
            trained += [inner.language_model, model.lm_head]
        for module in trained:
            for p in module.parameters():
                p.requires_grad_(True)
        self.frozen = [inner.vision_tower] + ([inner.language_model, model.lm_head] if stage == "pretrain" else [])

    # -- data ------------------------------------------------------------------------------------------------
    def tokens(self, turns: list[str]) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one conversation, in this stage's style (uncut)."""
        return conversation_tokens(turns, self.tokenizer, style=self.style, n_image_tokens=self.n_image_tokens,
                                   image_token_id=self.image_token_id, system=self.system)

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor] | None:
        if not isinstance(record, ConversationRecord):
            raise ValueError("LLaVA training reads conversations: pass a LLaVA JSON file as --data "
                             "(a list of {'id', 'image', 'conversations'})")
        ids, labels = self.tokens(record.turns)
        ids, labels = ids[:self.max_length], labels[:self.max_length]
        if all(x == IGNORE_INDEX for x in labels[1:]):
            return None
        n, pad = len(ids), self.max_length - len(ids)
        pixels = self.processor.image_processor(images=record.image, return_tensors="pt")["pixel_values"][0]
        return {"input_ids": torch.tensor(ids + [self.tokenizer.pad_token_id] * pad),
                "labels": torch.tensor(labels + [IGNORE_INDEX] * pad),
                "attention_mask": torch.tensor([1] * n + [0] * pad), "pixel_values": pixels}

    # -- step ------------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        length = int(batch["attention_mask"].sum(1).max())
        ids, mask, labels = (batch[k][:, :length] for k in ("input_ids", "attention_mask", "labels"))
        pixels = batch["pixel_values"].to(next(self.model.model.vision_tower.parameters()).dtype)
        out = self.model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False)
        loss = answer_loss(out.logits, labels)
        return {"loss": loss, "answer_tokens": (labels[:, 1:] != IGNORE_INDEX).sum().float()}

    def enable_gradient_checkpointing(self) -> None:
        self.model.model.language_model.gradient_checkpointing_enable()

    def cast_frozen(self, dtype: torch.dtype) -> None:
        for module in self.frozen:
            module.to(dtype)

    def set_train_mode(self) -> None:
        self.train()
        for module in self.frozen:
            module.eval()

    def save_outputs(self, folder: Path) -> None:
        """``folder/llava``: the whole model (transformers folder) and its processor, ready for
        ``un2clip eval mmvp-mllm | cvbench --model`` and ``un2clip llava train --init``."""
        out = Path(folder) / "llava"
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)


class LanguageModelObjective(Objective):
    """Train a causal language model alone on text: LLaVA's stage ``lm`` (what Vicuna brings to LLaVA-1.5: a
    language model that has read the words before it meets an image).

    A sample is ``BOS text EOS`` (the tokens the tokenizer has), cut at ``max_length`` (default: the model's
    ``max_position_embeddings``, at most 2048) and padded; the loss is the next-token cross-entropy on every
    text token, padding masked: the loss of transformers' causal LMs given ``labels = input ids`` with the
    padding at ``IGNORE_INDEX``. Every weight of the language model trains; no image is read.
    """

    kind = "llava-lm"

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int | None = None):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(max_length if max_length is not None else min(limit, 2048))
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 (BOS and one token), got {self.max_length}")
        if self.max_length > limit:
            raise ValueError(f"max_length {self.max_length} is beyond the language model's "
                             f"{limit} positions")
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))  # masked: any id serves
        for p in model.parameters():
            p.requires_grad_(True)

    def tokens(self, text: str) -> list[int]:
        """The input ids of one text, uncut: BOS, its tokens, EOS (each marker when the tokenizer has one)."""
        tok = self.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        head = [tok.bos_token_id] if tok.bos_token_id is not None else []
        tail = [tok.eos_token_id] if tok.eos_token_id is not None else []
        return head + list(ids) + tail

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor] | None:
        if not record.text:
            return None
        ids = self.tokens(record.text)[:self.max_length]
        if len(ids) < 2:  # nothing to predict
            return None
        n, pad = len(ids), self.max_length - len(ids)
        return {"input_ids": torch.tensor(ids + [self.pad_id] * pad),
                "labels": torch.tensor(ids + [IGNORE_INDEX] * pad),
                "attention_mask": torch.tensor([1] * n + [0] * pad)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        length = int(batch["attention_mask"].sum(1).max())
        ids, mask, labels = (batch[k][:, :length] for k in ("input_ids", "attention_mask", "labels"))
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=False)
        loss = answer_loss(out.logits, labels)
        return {"loss": loss, "text_tokens": (labels[:, 1:] != IGNORE_INDEX).sum().float()}

    def enable_gradient_checkpointing(self) -> None:
        self.model.gradient_checkpointing_enable()

    def save_outputs(self, folder: Path) -> None:
        """``folder/lm``: the language model and its tokenizer (transformers folders), for ``un2clip llava train
        --stage pretrain --language-model RUN/lm``."""
        out = Path(folder) / "lm"
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
