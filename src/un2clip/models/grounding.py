"""A GLIP-style phrase-grounding head on a frozen CLIP's patch grid (no I/O but its own save and load).

The head (:class:`GroundingHead`) reads the image tower's patch tokens as an (h, w) grid and the text tower's
token features. Every patch location predicts, FCOS-style, its distances to a box's left, top, right and bottom
edges and a centerness logit; its region-word logits are dot products of projected location features with
projected, L2-normalised token features, over a learnable temperature, plus a per-token bias (GLIP's
``dot_product_logit``). Coordinates are fractions of the image side: (0, 0) top left, (1, 1) bottom right.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HEAD_CONFIG = "grounding_head.json"
HEAD_WEIGHTS = "grounding_head.safetensors"


def location_centers(h: int, w: int) -> torch.Tensor:
    """(h * w, 2) centres (x, y) of an h x w grid's cells, row-major, in fractions of the image side."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def ltrb_to_boxes(centers: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """(..., N, 2) centres and (..., N, 4) distances (left, top, right, bottom) -> (..., N, 4) boxes x0, y0, x1, y1."""
    x, y = centers[..., 0], centers[..., 1]
    return torch.stack([x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]], dim=-1)


def boxes_to_ltrb(centers: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, 2) centres, (K, 4) boxes -> (N, K, 4) distances from each centre to each box's edges (FCOS targets)."""
    x, y = centers[:, None, 0], centers[:, None, 1]
    return torch.stack([x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x, boxes[None, :, 3] - y],
                       dim=-1)


def phrase_token_map(offsets: torch.Tensor, attention: torch.Tensor,
                     spans: list[list[tuple[int, int]]]) -> torch.Tensor:
    """GLIP's positive map: (P, L) bool, token j of the caption belongs to phrase p.

    ``offsets`` (L, 2): each token's character range in the caption (special and pad tokens (0, 0));
    ``attention`` (L,): real tokens. A token belongs to a phrase when its range overlaps one of the phrase's
    ``(begin, end)`` spans: for spans that start and end on token boundaries this is GLIP's range from the token
    of ``begin`` to the token of ``end - 1``.
    """
    out = torch.zeros(len(spans), offsets.shape[0], dtype=torch.bool)
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = attention.bool() & (ends > starts)
    for p, phrase_spans in enumerate(spans):
        for begin, end in phrase_spans:
            out[p] |= real & (starts < end) & (ends > begin)
    return out


@dataclass(frozen=True)
class GroundingHeadConfig:
    """The head's shape: input widths, its own widths and the prior of its region-word logits."""

    image_dim: int  # width of the patch tokens it reads
    text_dim: int  # width of the text tower's token features
    hidden_dim: int = 128
    proj_dim: int = 64
    prior_prob: float = 0.01  # initial probability of a region-word match (GLIP's and RetinaNet's)


class GroundingHead(nn.Module):
    """Patch grid + token features -> per-location boxes, centerness and region-word logits."""

    def __init__(self, config: GroundingHeadConfig):
        super().__init__()
        self.config = c = config
        self.trunk = nn.Sequential(
            nn.Conv2d(c.image_dim, c.hidden_dim, 3, padding=1), nn.GroupNorm(min(32, c.hidden_dim), c.hidden_dim),
            nn.ReLU(),
            nn.Conv2d(c.hidden_dim, c.hidden_dim, 3, padding=1), nn.GroupNorm(min(32, c.hidden_dim), c.hidden_dim),
            nn.ReLU(),
        )
        self.box = nn.Conv2d(c.hidden_dim, 4, 3, padding=1)
        self.centerness = nn.Conv2d(c.hidden_dim, 1, 3, padding=1)
        self.image_proj = nn.Conv2d(c.hidden_dim, c.proj_dim, 1)
        self.text_proj = nn.Linear(c.text_dim, c.proj_dim)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.bias_lang = nn.Parameter(torch.zeros(c.text_dim))
        self.bias0 = nn.Parameter(torch.tensor(-math.log((1 - c.prior_prob) / c.prior_prob)))
        for m in (*self.trunk, self.box, self.centerness):
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``patches`` (B, h*w, Di) row-major, ``tokens`` (B, L, Dt) -> ``ltrb`` (B, N, 4) distances,
        ``boxes`` (B, N, 4), ``centerness`` (B, N) logits, ``logits`` (B, N, L) region-word logits."""
        h, w = grid
        b, n, d = patches.shape
        if n != h * w:
            raise ValueError(f"{n} patch tokens do not make a {h} x {w} grid")
        x = patches.transpose(1, 2).reshape(b, d, h, w)
        f = self.trunk(x)  # (B, H, h, w)
        stride = torch.tensor([1 / w, 1 / h, 1 / w, 1 / h], device=f.device, dtype=f.dtype)
        raw = self.box(f).flatten(2).transpose(1, 2)  # (B, N, 4)
        ltrb = torch.exp(raw.clamp(max=8.0)) * stride  # one cell's side at initialisation
        centers = location_centers(h, w).to(f.device, f.dtype)
        queries = self.image_proj(f).flatten(2).transpose(1, 2)  # (B, N, P)
        keys = F.normalize(self.text_proj(tokens / 2.0), dim=-1)  # (B, L, P)
        bias = tokens @ self.bias_lang + self.bias0  # (B, L)
        logits = queries @ keys.transpose(1, 2) / self.log_scale.exp() + bias[:, None, :]
        return {"ltrb": ltrb, "boxes": ltrb_to_boxes(centers, ltrb),
                "centerness": self.centerness(f).flatten(1), "logits": logits.clamp(-50000, 50000)}

    def save(self, folder: str | Path, *, info: dict | None = None) -> Path:
        """Write the head's config (and ``info``: what it was trained on) and weights into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(folder / HEAD_WEIGHTS))
        (folder / HEAD_CONFIG).write_text(json.dumps({"config": asdict(self.config), **(info or {})}, indent=2) + "\n",
                                          encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> tuple[GroundingHead, dict]:
        """(head, info) from a folder :meth:`save` wrote, or a train-grounding run (its ``head/``)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if (folder / "head" / HEAD_CONFIG).is_file():
            folder = folder / "head"
        if not (folder / HEAD_CONFIG).is_file():
            raise FileNotFoundError(f"{folder} holds no grounding head ({HEAD_CONFIG}): pass a `un2clip "
                                    "train-grounding` run directory or its head/ folder")
        data = json.loads((folder / HEAD_CONFIG).read_text(encoding="utf-8"))
        head = cls(GroundingHeadConfig(**data.pop("config")))
        head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
        return head, data
