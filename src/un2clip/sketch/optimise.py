"""CLIPasso: strokes started where the image tower looks, then moved by Adam to lower :class:`SketchLoss`.

Initialisation (CLIPasso's ``attention_init`` with a CLIP ViT saliency model): the relevance of each patch is the
class token's attention to it, averaged over heads (negative values clamped to 0) and over blocks, upsampled
bicubically to the canvas and scaled to [0, 1]; a softmax with temperature 0.3 over the pixels whose relevance is
positive gives the probability of a pixel, and the strokes' start points are drawn from it without replacement.
Each of the three further control points is the previous one moved by a uniform step of at most 0.025 of the canvas
in x and in y (CLIPasso's radius 0.05 times ``random - 0.5``). CLIPasso also intersects the map with an XDoG edge
map by default; that step is left out here. A tower without a class token (SigLIP) uses the mean attention each
patch receives instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from un2clip.models.clip import ClipModel
from un2clip.sketch.loss import SketchLoss, check_layers, default_layers, tower_depth
from un2clip.sketch.rasterise import DEFAULT_WIDTH, render

SOFTMAX_TEMPERATURE = 0.3  # CLIPasso's softmax_temp
STEP_RADIUS = 0.05  # CLIPasso's radius: the next control point is within +-radius/2 of the canvas side
POINTS_LR = 1.0  # CLIPasso's lr (control points in pixels)
DEFAULT_STEPS = 500  # CLIPasso's num_iter


def saliency_map(model: ClipModel, image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) [0, 1] image -> (H, W) relevance in [0, 1] from the tower's attention (see the module)."""
    was = model.model.config._attn_implementation
    model.model.set_attn_implementation("eager")  # sdpa returns no attention probabilities
    try:
        with torch.no_grad():
            inputs = model.processing.from_unit(image.unsqueeze(0)).to(model.device)
            out = model.vision_model(pixel_values=inputs, output_attentions=True)
    finally:
        model.model.set_attn_implementation(was)
    maps = torch.stack([a[0].float().clamp_min(0).mean(dim=0) for a in out.attentions])  # (L, T, T)
    has_class = model.family == "clip"
    relevance = maps[:, 0, 1:] if has_class else maps.mean(dim=1)  # (L, patches)
    relevance = relevance.mean(dim=0).cpu()
    side = int(round(relevance.numel() ** 0.5))
    grid = relevance.reshape(1, 1, side, side)
    up = F.interpolate(grid, size=tuple(image.shape[-2:]), mode="bicubic", align_corners=False)[0, 0]
    lo, hi = up.min(), up.max()
    return (up - lo) / (hi - lo) if hi > lo else torch.ones_like(up)


def start_probabilities(relevance: torch.Tensor, temperature: float = SOFTMAX_TEMPERATURE) -> torch.Tensor:
    """(H, W) relevance in [0, 1] -> (H, W) probabilities: softmax(relevance / temperature) over the positive
    pixels, 0 elsewhere (CLIPasso's ``set_inds_clip``)."""
    if temperature <= 0:
        raise ValueError(f"the softmax temperature must be > 0, got {temperature}")
    positive = relevance > 0
    probs = torch.zeros_like(relevance, dtype=torch.float64)
    probs[positive] = torch.softmax(relevance[positive].double() / temperature, dim=0)
    return probs


def initial_strokes(probs: torch.Tensor, n_strokes: int, generator: torch.Generator,
                    radius: float = STEP_RADIUS) -> torch.Tensor:
    """(S, 4, 2) control points in pixels: start points drawn from ``probs`` (H, W) without replacement, each
    further point a small uniform step from the previous one."""
    height, width = probs.shape
    flat = probs.reshape(-1)
    available = int((flat > 0).sum())
    if n_strokes > available:
        raise ValueError(f"{n_strokes} strokes but only {available} pixels to start them from")
    idx = torch.multinomial(flat, n_strokes, replacement=False, generator=generator)
    start = torch.stack([(idx % width).double() / width, (idx // width).double() / height], dim=-1)  # (S, 2)
    steps = radius * (torch.rand(n_strokes, 3, 2, generator=generator, dtype=torch.float64) - 0.5)
    points = torch.cat([start[:, None], start[:, None] + steps.cumsum(dim=1)], dim=1)
    scale = torch.tensor([width, height], dtype=torch.float64)
    return (points * scale).float()


@dataclass
class Sketch:
    """An optimised sketch: control points (S, 4, 2) in pixels of a ``size`` x ``size`` canvas, and its record."""

    control: torch.Tensor
    size: int
    stroke_width: float
    losses: list[float] = field(default_factory=list)  # the augmented loss of each step
    initial_loss: float = float("nan")  # un-augmented loss of the initial strokes
    final_loss: float = float("nan")  # un-augmented loss of the final strokes

    def picture(self) -> torch.Tensor:
        """(3, size, size) rendering in [0, 1]."""
        with torch.no_grad():
            return render(self.control, self.size, stroke_width=self.stroke_width)


def sketch_image(model: ClipModel, image: torch.Tensor, n_strokes: int, *, steps: int = DEFAULT_STEPS,
                 lr: float = POINTS_LR, layers: Sequence[int] | None = None,
                 layer_weights: Sequence[float] | None = None, seed: int = 0,
                 stroke_width: float = DEFAULT_WIDTH, n_augs: int = 4, perspective: float = 0.0,
                 callback: Callable[[int, float], None] | None = None) -> Sketch:
    """Sketch ``image`` ((3, S, S) in [0, 1]; the canvas is S x S) with ``n_strokes`` strokes under ``model``."""
    if n_strokes <= 0:
        raise ValueError(f"--strokes must be > 0, got {n_strokes}")
    if steps <= 0:
        raise ValueError(f"--steps must be > 0, got {steps}")
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"the image must be a square (3, S, S) tensor, got {tuple(image.shape)}")
    depth = tower_depth(model)
    layers = tuple(default_layers(depth) if layers is None else layers)
    weights = check_layers(layers, layer_weights, depth)
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # no gradient for the tower: the strokes alone move; the flags come back at the end
        p.requires_grad_(False)
    try:
        return _optimise(model, image, n_strokes, steps, lr, layers, weights, seed, stroke_width, n_augs,
                         perspective, callback)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _optimise(model: ClipModel, image: torch.Tensor, n_strokes: int, steps: int, lr: float,
              layers: tuple[int, ...], weights: tuple[float, ...], seed: int, stroke_width: float, n_augs: int,
              perspective: float, callback: Callable[[int, float], None] | None) -> Sketch:
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    image = image.float().to(device)
    control = initial_strokes(start_probabilities(saliency_map(model, image)), n_strokes, generator).to(device)
    control.requires_grad_(True)
    loss_fn = SketchLoss(model, image, layers, weights, n_augs=n_augs, perspective=perspective)
    size = image.shape[-1]

    def draw() -> torch.Tensor:
        return render(control, size, stroke_width=stroke_width)

    with torch.no_grad():
        initial = float(loss_fn(draw())[0])
    optimiser = torch.optim.Adam([control], lr=lr)
    losses = []
    for step in range(steps):
        optimiser.zero_grad(set_to_none=True)
        loss, _ = loss_fn(draw(), generator)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step, losses[-1])
    with torch.no_grad():
        final = float(loss_fn(draw())[0])
    return Sketch(control.detach().cpu(), size, stroke_width, losses, initial, final)
