"""How well a text tower tells words apart: cosine similarity of captions that differ in one attribute.

A tower that embeds "a red circle" and "a red square" alike (cosine near 1) cannot read shape from any
image embedding, however good; CLIP-blindness can sit on the text side too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pair_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (N,) cosine similarity of row i of ``a`` with row i of ``b``."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


@torch.inference_mode()
def text_separation(model, pairs: dict[str, Sequence[tuple[str, str]]]) -> dict[str, float]:
    """``text_cos/<attribute>`` (mean over the attribute's caption pairs) and ``text_cos_max/<attribute>``."""
    out: dict[str, float] = {}
    for attribute, texts in pairs.items():
        if not texts:
            raise ValueError(f"no caption pairs for {attribute!r}")
        cos = pair_cosines(model.encode_text([a for a, _ in texts]), model.encode_text([b for _, b in texts]))
        out[f"text_cos/{attribute}"] = float(cos.mean())
        out[f"text_cos_max/{attribute}"] = float(cos.max())
    return out
