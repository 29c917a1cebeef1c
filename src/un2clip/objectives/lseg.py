"""LSeg's objective: a dense head on a frozen CLIP image tower, per-pixel cross entropy against frozen label
embeddings (:mod:`un2clip.models.lseg`).

The label embeddings are the frozen text tower's embeddings of the label names themselves (LSeg tokenises the
bare names), computed once. Each sample is the image with its short side resized to the tower's input size,
a random square crop of that side and a random horizontal flip; its label map follows (nearest neighbour).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from un2clip.data.sources import MaskedRecord, Record
from un2clip.models.clip import ClipModel
from un2clip.models.lseg import (
    LSegConfig,
    LSegHead,
    block_outputs,
    hook_blocks,
    lseg_logits,
    lseg_loss,
    save_head,
)
from un2clip.objectives.base import Objective, check_state_keys, module_state

IGNORE_INDEX = 255


def crop_pair(image: Image.Image, mask: np.ndarray, size: int, rng: random.Random, *,
              flip: bool = True) -> tuple[Image.Image, np.ndarray]:
    """Short side to ``size`` (image bilinear, mask nearest), a random ``size`` square crop, a random flip."""
    if mask.shape != (image.height, image.width):
        raise ValueError(f"label map {mask.shape[1]}x{mask.shape[0]} differs from its image {image.width}x"
                         f"{image.height}")
    scale = size / min(image.width, image.height)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.BILINEAR)
    label = Image.fromarray(mask).resize((w, h), Image.NEAREST)
    x, y = rng.randint(0, w - size), rng.randint(0, h - size)
    box = (x, y, x + size, y + size)
    image, label = image.crop(box), label.crop(box)
    if flip and rng.random() < 0.5:
        image, label = image.transpose(Image.FLIP_LEFT_RIGHT), label.transpose(Image.FLIP_LEFT_RIGHT)
    return image, np.asarray(label, dtype=np.uint8)


class LSegObjective(Objective):
    """Train an :class:`~un2clip.models.lseg.LSegHead` on a frozen CLIP's blocks; the text tower gives the labels."""

    kind = "lseg"

    def __init__(self, clip: ClipModel, labels: Sequence[str], *, features: int = 256,
                 blocks: Sequence[int] | None = None, model_spec: str = "", flip: bool = True, seed: int = 0) -> None:
        super().__init__()
        if len(labels) < 2:
            raise ValueError(f"LSeg needs at least 2 label names, got {list(labels)}")
        self.clip = clip
        for p in clip.parameters():
            p.requires_grad_(False)
        clip.eval()
        vcfg = clip.model.config.vision_config
        n_layers = int(vcfg.num_hidden_layers)
        blocks = tuple(blocks) if blocks else hook_blocks(n_layers)
        if len(blocks) != 4 or any(not 0 <= int(b) < n_layers for b in blocks):
            raise ValueError(f"--blocks needs 4 block indices in 0..{n_layers - 1}, got {list(blocks)}")
        config = LSegConfig(width=int(vcfg.hidden_size), embed_dim=clip.embed_dim, blocks=blocks, features=features,
                            class_token=clip.family == "clip", labels=list(labels), image_size=clip.image_size,
                            model=model_spec)
        with torch.random.fork_rng():  # the head's first weights follow the run's seed, not what ran before
            torch.manual_seed(seed)
            self.head = LSegHead(config)
        self.flip = flip
        with torch.no_grad():
            text = F.normalize(clip.encode_text(list(labels)).float(), dim=-1)
        self.register_buffer("label_embeddings", text, persistent=False)

    # -- what trains --------------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's parameters and its batch-norm statistics (buffers: a resumed run needs them too)."""
        return module_state(self.head, "head.")

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_state_keys(self.trainable_state_dict(), state, "the LSeg head")
        self.head.load_state_dict({k[len("head."):]: v for k, v in state.items()})

    def set_train_mode(self) -> None:
        self.train()
        self.clip.eval()

    # -- data -----------------------------------------------------------------------------------------------
    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor] | None:
        mask = getattr(record, "mask", None)
        if not isinstance(record, MaskedRecord) or mask is None:
            raise ValueError(f"{record.key}: LSeg trains on images with label maps (a segmentation dataset)")
        image, label = crop_pair(record.image.convert("RGB"), mask, self.clip.image_size, rng, flip=self.flip)
        return {"pixels": self.clip.processing.from_uint8(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)),
                "labels": torch.from_numpy(label.astype(np.int64))}

    # -- step ------------------------------------------------------------------------------------------------
    def pixel_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C, 8 gh, 8 gw) logits over the training labels."""
        cfg = self.head.config
        p = self.clip.patch_size
        grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
        with torch.no_grad():
            dtype = next(self.clip.vision_model.parameters()).dtype
            hidden = block_outputs(self.clip.vision_model, pixels.to(dtype), cfg.blocks)
        emb = self.head([h.float() for h in hidden], grid)
        return lseg_logits(emb, self.label_embeddings)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        logits = self.pixel_logits(batch["pixels"])
        loss = lseg_loss(logits, labels, IGNORE_INDEX)
        with torch.no_grad():
            up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            valid = labels != IGNORE_INDEX
            acc = (up.argmax(1) == labels)[valid].float().mean() if valid.any() else loss.new_tensor(0.0)
        return {"loss": loss, "pixel_acc": acc.detach()}

    def save_outputs(self, folder: Path) -> None:
        save_head(self.head, Path(folder) / "lseg")
