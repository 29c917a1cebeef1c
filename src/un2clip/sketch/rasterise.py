"""A differentiable rasteriser of black cubic Bézier strokes on a white canvas, in plain torch.

CLIPasso draws with diffvg, which does not install from a package index; this is the small part of it a sketch
needs. Each stroke is a cubic Bézier curve (4 control points, in pixels, x right and y down, pixel (i, j) covering
[j, j + 1) x [i, i + 1) so its centre is (j + 0.5, i + 0.5)). The curve is sampled densely into a polyline; a
pixel's ink from one stroke is the share of it a line of the stroke's width covers, approximated from the
distance d between the pixel's centre and the polyline: ``a = clamp(width / 2 + 1/2 - d, 0, 1)`` (a soft edge one
pixel wide, exact for a straight line along the pixel grid). The strokes are composited as ink
``1 - prod(1 - a)``, so the picture is ``prod(1 - a)`` in every colour channel.

Work: a stroke is drawn only in the box around its points widened by the reach of its ink (the curve lies in the
convex hull of its control points; further pixels get no ink and no gradient). Inside it, the nearest segment of
each pixel is found without autograd, then only that segment's distance is recomputed with it (the derivative of a
minimum is the derivative of its smallest term), so backward holds (pixels,) tensors, not (segments, pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_WIDTH = 1.5
DEFAULT_SEGMENTS = 32


def bezier_points(control: torch.Tensor, n_segments: int = DEFAULT_SEGMENTS) -> torch.Tensor:
    """(S, 4, 2) control points -> (S, n_segments + 1, 2) points of each cubic Bézier at t = 0, 1/n, ..., 1."""
    if control.ndim != 3 or control.shape[1:] != (4, 2):
        raise ValueError(f"control points must have shape (strokes, 4, 2), got {tuple(control.shape)}")
    if n_segments < 1:
        raise ValueError(f"n_segments must be >= 1, got {n_segments}")
    t = torch.linspace(0.0, 1.0, n_segments + 1, dtype=control.dtype, device=control.device)[:, None]
    s = 1.0 - t
    basis = torch.cat([s**3, 3 * s**2 * t, 3 * s * t**2, t**3], dim=1)  # (P, 4) Bernstein polynomials
    return torch.einsum("pk,skd->spd", basis, control)


def _segment_distance(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance between points ``p`` and segments a-b (broadcast over leading dims, last dim 2)."""
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)
    closest = a + t.clamp(0.0, 1.0).unsqueeze(-1) * ab
    return ((p - closest) ** 2).sum(-1).clamp_min(1e-12).sqrt()


def pixel_centres(height: int, width: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(H * W, 2) (x, y) centres of the pixels, row-major."""
    ys = torch.arange(height, dtype=dtype, device=device) + 0.5
    xs = torch.arange(width, dtype=dtype, device=device) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def _polyline_distance(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(P, 2) polyline, (N, 2) points -> (N,) distance of each point to the polyline (differentiable)."""
    a, b = points[:-1], points[1:]  # (K, 2)
    with torch.no_grad():
        nearest = _segment_distance(centres[None], a[:, None], b[:, None]).argmin(dim=0)  # (N,)
    return _segment_distance(centres, a[nearest], b[nearest])


def stroke_alpha(points: torch.Tensor, height: int, width: int,
                 stroke_width: float | torch.Tensor = DEFAULT_WIDTH) -> list[tuple[int, int, torch.Tensor]]:
    """(S, P, 2) polylines -> per stroke (top, left, ink share of the pixels of its box).

    A pixel further than ``stroke_width / 2 + 1/2`` from the polyline gets no ink, so each stroke is drawn only in
    the box around its points widened by that much: the same picture as the whole canvas, far less work.
    """
    reach = float(stroke_width) / 2 + 0.5
    out = []
    with torch.no_grad():
        lows = (points.amin(dim=1) - reach).floor().long().tolist()
        highs = (points.amax(dim=1) + reach).ceil().long().tolist()
    for s, ((x0, y0), (x1, y1)) in enumerate(zip(lows, highs)):
        left, top = max(0, x0), max(0, y0)
        right, bottom = min(width, x1 + 1), min(height, y1 + 1)
        if right <= left or bottom <= top:
            continue  # wholly off the canvas
        centres = pixel_centres(bottom - top, right - left, dtype=points.dtype, device=points.device)
        centres = centres + torch.tensor([left, top], dtype=points.dtype, device=points.device)
        d = _polyline_distance(points[s], centres).reshape(bottom - top, right - left)
        out.append((top, left, coverage(d, stroke_width)))
    return out


def coverage(distance: torch.Tensor, stroke_width: float | torch.Tensor = DEFAULT_WIDTH) -> torch.Tensor:
    """Ink share of a pixel whose centre is ``distance`` from the centre line of a stroke ``stroke_width`` wide."""
    return (stroke_width / 2 + 0.5 - distance).clamp(0.0, 1.0)


def render(control: torch.Tensor, height: int, width: int | None = None, *,
           stroke_width: float | torch.Tensor = DEFAULT_WIDTH, n_segments: int = DEFAULT_SEGMENTS) -> torch.Tensor:
    """(S, 4, 2) control points in pixels -> (3, H, W) picture in [0, 1]: black strokes on white."""
    width = height if width is None else width
    if height < 1 or width < 1:
        raise ValueError(f"the canvas must be at least 1 x 1 pixels, got {height} x {width}")
    if control.shape[0] == 0:
        return torch.ones(3, height, width, dtype=control.dtype, device=control.device)
    paper = torch.ones(height, width, dtype=control.dtype, device=control.device)
    for top, left, alpha in stroke_alpha(bezier_points(control, n_segments), height, width, stroke_width):
        h, w = alpha.shape
        rest = F.pad(1.0 - alpha, (left, width - left - w, top, height - top - h), value=1.0)
        paper = paper * rest  # 1 - ink, composited 1 - prod(1 - a)
    return paper.unsqueeze(0).expand(3, height, width)
