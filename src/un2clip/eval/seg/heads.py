"""Last-block variants that keep the local meaning of ViT patch tokens.

Training-free open-vocabulary segmentation changes only the last transformer block of a
frozen CLIP image encoder; the earlier blocks run unchanged. With ``x`` the last block's
input, ``q, k, v`` its projections of ``layer_norm1(x)`` (per head, ``d`` the head width)
and ``O`` its output projection:

=========  ===========================================  ========  =====
method     attention applied to ``v``                     residual  FFN
=========  ===========================================  ========  =====
vanilla    softmax(q·kᵀ/√d)  (the model as it is)         yes       yes
maskclip   identity: each token attends only to itself    yes       yes
sclip      softmax(q·qᵀ/√d) + softmax(k·kᵀ/√d)            yes       yes
clearclip  softmax(q·qᵀ/√d)                               no        no
naclip     softmax(k·kᵀ/√d + Ω), Ω Gaussian over the grid  no        no
=========  ===========================================  ========  =====

then the final norm, the class token dropped (CLIP; SigLIP has none), the projection to
the joint space and L2 normalisation (``dense_features``). Ω[p, p'] =
exp(-|p - p'|² / 2σ²) over patch-grid positions (σ = 5 in NACLIP); the class token gets
no bias.

The tokens entering the last block are computed here too (``patch_embeddings``), so that the
position embeddings at a non-native grid are interpolated as SCLIP, ClearCLIP and NACLIP do
(``reference_position_embedding``), not as transformers does.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from un2clip.registry import Registry

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

ATTENTIONS = ("qk", "self", "qq+kk", "qq", "kk+gauss")


@dataclass(frozen=True)
class HeadSpec:
    """How the last block is computed: its attention, and whether residual and FFN are kept."""

    attention: str  # one of ATTENTIONS
    residual: bool
    ffn: bool

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.ffn and not self.residual:
            raise ValueError("an FFN without the attention residual is not a block any method uses")


HEADS: Registry[HeadSpec] = Registry("segmentation method")
HEADS.add("vanilla", HeadSpec("qk", residual=True, ffn=True))
HEADS.add("maskclip", HeadSpec("self", residual=True, ffn=True))
HEADS.add("sclip", HeadSpec("qq+kk", residual=True, ffn=True))
HEADS.add("clearclip", HeadSpec("qq", residual=False, ffn=False))
HEADS.add("naclip", HeadSpec("kk+gauss", residual=False, ffn=False))
METHODS = tuple(HEADS)


def get_head(method: str | HeadSpec) -> HeadSpec:
    """A method name (see ``METHODS``) or a HeadSpec -> HeadSpec."""
    if isinstance(method, HeadSpec):
        return method
    return HEADS.lookup(method)


def gaussian_bias(grid_h: int, grid_w: int, std: float = 5.0) -> torch.Tensor:
    """(N, N) with N = grid_h * grid_w: exp(-squared grid distance / 2 std²), row-major patches."""
    if std <= 0:
        raise ValueError(f"gaussian std must be positive, got {std}")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=-1).double()  # (N, 2)
    d2 = torch.cdist(pos, pos).pow(2)  # (N, N)
    return torch.exp(-d2 / (2.0 * std * std)).float()


def _run_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One unchanged encoder layer, across transformers versions (4.x takes a causal mask, returns a tuple)."""
    params = inspect.signature(layer.forward).parameters
    out = layer(hidden, None, None) if "causal_attention_mask" in params else layer(hidden, None)
    return out[0] if isinstance(out, tuple) else out


def reference_position_embedding(pos: torch.Tensor, grid: tuple[int, int], *, has_class_token: bool) -> torch.Tensor:
    """(T, W) learned position embeddings of a square g x g grid -> those of a (gh, gw) grid.

    As SCLIP, ClearCLIP and NACLIP interpolate them: unchanged on the native grid; otherwise the
    patch part bicubic with scale factors ((gh + 0.1) / g, (gw + 0.1) / g), used as given (not
    recomputed from the output size), align_corners False; the class token's kept. (transformers
    interpolates to the exact size instead: 2e-3 to 7e-3 apart on CLIP B/16.) Unlike the
    references, a non-square grid with g² patches is interpolated too, not given the square
    grid's embeddings in row-major order.
    """
    cls, patch = (pos[:1], pos[1:]) if has_class_token else (pos[:0], pos)
    g = math.isqrt(patch.shape[0])
    if g * g != patch.shape[0]:
        raise ValueError(f"{patch.shape[0]} patch position embeddings do not form a square grid")
    gh, gw = grid
    if (gh, gw) == (g, g):
        return pos
    square = patch.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    out = nn.functional.interpolate(square, scale_factor=((gh + 0.1) / g, (gw + 0.1) / g), mode="bicubic",
                                    align_corners=False, recompute_scale_factor=False)
    if tuple(out.shape[-2:]) != (gh, gw):  # floor((g + 0.1) * s / g) is the grid side for every size in use
        raise RuntimeError(f"position-embedding interpolation gave {tuple(out.shape[-2:])}, expected {(gh, gw)}")
    return torch.cat([cls, out[0].permute(1, 2, 0).reshape(gh * gw, -1).to(pos.dtype)])


def patch_embeddings(model: ClipModel, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, T, W): patch embedding (a stride-p convolution: pixels past the last whole
    patch are dropped), the class token (CLIP) and ``reference_position_embedding``."""
    emb = model.vision_model.embeddings
    dtype = emb.patch_embedding.weight.dtype
    x = emb.patch_embedding(pixels.to(model.device, dtype))  # (B, W, gh, gw)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)  # (B, gh * gw, W)
    has_cls = model.family == "clip"
    if has_cls:
        x = torch.cat([emb.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
    pos = reference_position_embedding(emb.position_embedding.weight, grid, has_class_token=has_cls)
    return x + pos.to(x.dtype)


def last_block_input(model: ClipModel, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, T, W) tokens entering the last block (position embeddings as the references')."""
    vision = model.vision_model
    hidden = patch_embeddings(model, pixels)
    if model.family == "clip":
        hidden = vision.pre_layrnorm(hidden)
    for layer in vision.encoder.layers[:-1]:
        hidden = _run_layer(layer, hidden)
    return hidden


def last_block(layer: nn.Module, x: torch.Tensor, head: HeadSpec, *, grid: tuple[int, int],
               has_class_token: bool, gaussian_std: float = 5.0) -> torch.Tensor:
    """The changed last block: (B, T, W) -> (B, T, W)."""
    attn = layer.self_attn
    b, t, width = x.shape
    nh = attn.num_heads
    hd = width // nh
    scale = hd ** -0.5
    y = layer.layer_norm1(x)

    def split(z: torch.Tensor) -> torch.Tensor:  # (B, T, W) -> (B, heads, T, d)
        return z.reshape(b, t, nh, hd).transpose(1, 2)

    v = split(attn.v_proj(y))
    if head.attention == "self":
        mixed = v
    else:
        q, k = split(attn.q_proj(y)), split(attn.k_proj(y))
        if head.attention == "qk":
            weights = torch.softmax((q @ k.transpose(-1, -2)).float() * scale, dim=-1)
        elif head.attention == "qq":
            weights = torch.softmax((q @ q.transpose(-1, -2)).float() * scale, dim=-1)
        elif head.attention == "qq+kk":
            weights = (torch.softmax((q @ q.transpose(-1, -2)).float() * scale, dim=-1)
                       + torch.softmax((k @ k.transpose(-1, -2)).float() * scale, dim=-1))
        else:  # "kk+gauss"
            omega = gaussian_bias(*grid, std=gaussian_std).to(x.device)  # (N, N)
            if has_class_token:
                omega = nn.functional.pad(omega, (1, 0, 1, 0))  # no bias to or from the class token
            weights = torch.softmax((k @ k.transpose(-1, -2)).float() * scale + omega, dim=-1)
        mixed = weights.to(v.dtype) @ v  # (B, heads, T, d)
    out = attn.out_proj(mixed.transpose(1, 2).reshape(b, t, width))  # (B, T, W)
    if not head.residual:
        return out
    out = x + out
    if head.ffn:
        out = out + layer.mlp(layer.layer_norm2(out))
    return out


def dense_features(model: ClipModel, pixels: torch.Tensor, method: str | HeadSpec = "vanilla", *,
                   gaussian_std: float = 5.0) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H // p, W // p, D) L2-normalised patch features in the joint space."""
    head = get_head(method)
    has_cls = model.family == "clip"
    p = model.patch_size
    grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
    x = last_block_input(model, pixels)
    x = last_block(model.vision_model.encoder.layers[-1], x, head, grid=grid, has_class_token=has_cls,
                   gaussian_std=gaussian_std)
    if has_cls:
        x = x[:, 1:]
    x = model.visual_projection(model.vision_model.post_layernorm(x))  # (B, N, D)
    x = nn.functional.normalize(x.float(), dim=-1)
    return x.reshape(x.shape[0], grid[0], grid[1], x.shape[-1])
