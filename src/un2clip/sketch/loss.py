"""CLIPasso's loss on a ClipModel's image tower, and its random augmentations written with torch alone.

loss = sum_k w_k * mean((f_k(sketch) - f_k(image))^2) + semantic_weight * (1 - cos(e(sketch), e(image)))

averaged over the un-augmented pair and ``n_augs`` randomly augmented pairs (the same augmentation for the sketch
and the image of a pair), where f_k is the output of block k of the vision transformer (every token, class token
included, as CLIPasso hooks its ViT's blocks) and e the final joint-space embedding. CLIPasso's default encoder is
RN101 with weights 0, 0, 1, 1, 0 on (stem, stage 1, stage 2, stage 3, stage 4): the ends of the middle two of the
ResNet's four stages. For a ViT of L blocks :func:`default_layers` takes the same places: the blocks ending the
second and third quarters of its depth (0-based L/2 - 1 and 3L/4 - 1: blocks 5 and 8 of ViT-B's 12).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from un2clip.models.clip import ClipModel, pool_image

SEMANTIC_WEIGHT = 0.1  # CLIPasso's clip_fc_loss_weight
N_AUGS = 4  # CLIPasso's num_aug_clip
MIN_SCALE = 0.7  # CLIPasso's aug_scale_min


def tower_depth(model: ClipModel) -> int:
    """Number of transformer blocks of the model's image tower."""
    return int(model.model.config.vision_config.num_hidden_layers)


def default_layers(depth: int) -> tuple[int, ...]:
    """0-based blocks at the ends of the second and third quarters of a ``depth``-block tower (see the module)."""
    if depth < 1:
        raise ValueError(f"a tower has at least one block, got depth {depth}")
    return tuple(sorted({max(0, round(depth / 2) - 1), max(0, round(3 * depth / 4) - 1)}))


def check_layers(layers: Sequence[int], weights: Sequence[float] | None, depth: int) -> tuple[float, ...]:
    """Refuse block indices outside ``[0, depth)`` and weights that do not match; the weights (default all 1)."""
    if not layers:
        raise ValueError("--layers: give at least one block of the image tower")
    for k in layers:
        if not 0 <= k < depth:
            raise ValueError(f"--layers: block {k} is beyond the image tower's depth ({depth} blocks: 0 to {depth - 1})")
    if weights is None:
        return (1.0,) * len(layers)
    if len(weights) != len(layers):
        raise ValueError(f"--layer-weights: {len(weights)} weights for {len(layers)} layers")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"--layer-weights: weights must be finite and >= 0, got {list(weights)}")
    return tuple(float(w) for w in weights)


# -- augmentations ------------------------------------------------------------------------------------------------


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(4, 2) points -> the 3 x 3 projective map taking each ``src`` point to its ``dst`` point."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist()):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        rhs += [u, v]
    h = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([h, h.new_ones(1)]).reshape(3, 3)


def random_grids(n: int, size: int, generator: torch.Generator, *, min_scale: float = MIN_SCALE,
                 perspective: float = 0.0) -> torch.Tensor:
    """(n, size, size, 2) sampling grids for ``F.grid_sample``: a random square crop of ``min_scale`` to all of
    the area (torchvision's RandomResizedCrop at ratio 1, as CLIPasso uses it), after an optional random
    perspective whose corners move by up to ``perspective`` / 2 of the side (RandomPerspective's distortion)."""
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    if not 0.0 <= perspective < 1.0:
        raise ValueError(f"perspective must be in [0, 1), got {perspective}")
    lin = torch.linspace(-1.0, 1.0, size, dtype=torch.float64) * (size - 1) / size  # pixel centres, align_corners=False
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(-1, 3)  # (size^2, 3)
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    grids = []
    for _ in range(n):
        u = torch.rand(3, generator=generator, dtype=torch.float64)
        side = math.sqrt(min_scale + (1.0 - min_scale) * float(u[0]))  # crop side as a share of the image's
        cx, cy = ((2 * u[1:] - 1) * (1 - side)).tolist()
        crop = torch.tensor([[side, 0.0, cx], [0.0, side, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
        warp = torch.eye(3, dtype=torch.float64)
        if perspective > 0:  # output corner -> input corner moved inwards by up to perspective / 2 of the side
            shift = torch.rand(4, 2, generator=generator, dtype=torch.float64) * perspective
            warp = _homography(corners, corners - torch.sign(corners) * shift)
        p = base @ (warp @ crop).T
        grids.append((p[:, :2] / p[:, 2:]).reshape(size, size, 2))
    return torch.stack(grids).float()


def augment(pixels: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """(3, H, W) picture -> (n, 3, H, W), one view per grid (black outside the picture, as CLIPasso fills)."""
    batch = pixels.unsqueeze(0).expand(grids.shape[0], -1, -1, -1)
    return F.grid_sample(batch, grids.to(pixels.device, pixels.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


# -- the tower -----------------------------------------------------------------------------------------------------


def tower_features(model: ClipModel, pixels: torch.Tensor, layers: Sequence[int]
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """[0, 1] pictures (B, 3, H, W) -> (B, D) final embeddings and the (B, T, W) outputs of the given blocks."""
    inputs = model.processing.from_unit(pixels).to(model.device)
    out = model.vision_model(pixel_values=inputs, output_hidden_states=True)
    embeds = pool_image(out, model.vision_model, model.visual_projection, model.meta.pooling)
    return embeds, [out.hidden_states[k + 1] for k in layers]  # hidden_states[0]: the embeddings, before block 0


@dataclass
class SketchLoss:
    """CLIPasso's loss for one target image (see the module); call it with a sketch and a generator."""

    model: ClipModel
    target: torch.Tensor  # (3, H, W) in [0, 1]
    layers: tuple[int, ...]
    weights: tuple[float, ...]
    semantic_weight: float = SEMANTIC_WEIGHT
    n_augs: int = N_AUGS
    min_scale: float = MIN_SCALE
    perspective: float = 0.0

    def views(self, picture: torch.Tensor, grids: torch.Tensor | None) -> torch.Tensor:
        """The picture itself, then one augmented view per grid."""
        if grids is None:
            return picture.unsqueeze(0)
        return torch.cat([picture.unsqueeze(0), augment(picture, grids)])

    def draw_grids(self, generator: torch.Generator | None) -> torch.Tensor | None:
        if generator is None or self.n_augs == 0:
            return None
        return random_grids(self.n_augs, self.target.shape[-1], generator, min_scale=self.min_scale,
                            perspective=self.perspective)

    def __call__(self, sketch: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``sketch`` (3, H, W) and its parts; without ``generator`` no augmentation (the pair only)."""
        grids = self.draw_grids(generator)
        with torch.no_grad():
            t_embed, t_feats = tower_features(self.model, self.views(self.target, grids), self.layers)
        s_embed, s_feats = tower_features(self.model, self.views(sketch, grids), self.layers)
        parts: dict[str, torch.Tensor] = {}
        total = s_embed.new_zeros(())
        for k, w, fs, ft in zip(self.layers, self.weights, s_feats, t_feats):
            parts[f"block{k}"] = ((fs - ft) ** 2).mean()
            total = total + w * parts[f"block{k}"]
        parts["semantic"] = (1.0 - F.cosine_similarity(s_embed, t_embed, dim=-1)).mean()
        total = total + self.semantic_weight * parts["semantic"]
        return total, {k: float(v.detach()) for k, v in parts.items()}
