"""Pixels of the shapes world: a scene drawn supersampled with PIL, reduced, with fixed noise."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from un2clip.world.scenes import COLORS, SHAPES, SIZE_FRACTION, VIEWS, WORLD_VERSION, Scene, WorldObject

BACKGROUND = (232, 232, 232)
GLYPH_INK = (40, 40, 40)
DOT_INK = (20, 20, 20)
NOISE_AMPLITUDE = 3  # +- grey levels of per-pixel background noise
SUPERSAMPLE = 4  # draw at 4x, reduce with a box filter
GLYPH_Y, GLYPH_H, GLYPH_W = 0.8, 0.24, 0.16
TILT_CORNERS = ((0.25, 0.05), (0.75, 0.05), (1.08, 1.0), (-0.08, 1.0))  # where the square lands

# Glyph strokes on a 4 x 6 grid (x right, y down); each entry is one polyline.
GLYPH_STROKES: dict[str, tuple[tuple[tuple[int, int], ...], ...]] = {
    "1": (((1, 1), (2, 0), (2, 6)), ((1, 6), (3, 6))),
    "2": (((0, 1), (1, 0), (3, 0), (4, 1), (4, 2), (0, 6), (4, 6)),),
    "4": (((3, 6), (3, 0), (0, 4), (4, 4)),),
    "7": (((0, 0), (4, 0), (1, 6)),),
    "e": (((4, 0), (0, 0), (0, 6), (4, 6)), ((0, 3), (3, 3))),
    "f": (((4, 0), (0, 0), (0, 6)), ((0, 3), (3, 3))),
    "l": (((0, 0), (0, 6), (4, 6)),),
    "t": (((0, 0), (4, 0)), ((2, 0), (2, 6))),
}


# ----------------------------------------------------------------------------- pixels
def _shape_points(shape: str, orientation: str | None) -> list[tuple[float, float]] | None:
    """Polygon of a shape in a unit box centred at 0 (None for the circle)."""
    if shape == "circle":
        return None
    if shape == "square":
        h = 0.42
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        pts = [(0.0, -0.46), (0.5, 0.4), (-0.5, 0.4)]
    elif shape == "arrow":
        s = 0.19
        pts = [(0.0, -0.5), (0.46, 0.0), (s, 0.0), (s, 0.5), (-s, 0.5), (-s, 0.0), (-0.46, 0.0)]
    elif shape == "star":
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.24
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((r * float(np.cos(a)), r * float(np.sin(a)) + 0.04))
    elif shape == "cross":
        s, h = 0.18, 0.48
        pts = [
            (-s, -h),
            (s, -h),
            (s, -s),
            (h, -s),
            (h, s),
            (s, s),
            (s, h),
            (-s, h),
            (-s, s),
            (-h, s),
            (-h, -s),
            (-s, -s),
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return _rotate(pts, orientation)


def _rotate(pts: list[tuple[float, float]], orientation: str | None) -> list[tuple[float, float]]:
    turns = {None: 0, "up": 0, "right": 1, "down": 2, "left": 3}[orientation]
    for _ in range(turns):  # a quarter turn clockwise on screen (y down)
        pts = [(-y, x) for x, y in pts]
    return pts


def _dot_center(shape: str, orientation: str | None) -> tuple[float, float]:
    if shape == "triangle":
        c = (0.0, 0.11)
    elif shape == "arrow":
        c = (0.0, -0.14)
    elif shape == "star":
        c = (0.0, 0.04)
    else:
        c = (0.0, 0.0)
    return _rotate([c], orientation)[0]


@functools.lru_cache(maxsize=1024)
def _polygons(
    shape: str, orientation: str | None, extent: float, ring: float
) -> tuple[tuple[tuple[float, float], ...], tuple[tuple[float, float], ...] | None]:
    """Outline of a shape scaled to ``extent`` pixels around 0, and its inset by ``ring`` (or None)."""
    pts = _shape_points(shape, orientation)
    assert pts is not None
    outer = tuple((x * extent, y * extent) for x, y in pts)
    inner = tuple(_inset(list(outer), ring)) if ring > 0 and shape != "star" else None
    return outer, inner


def _disc(cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    return (cx - r, cy - r, cx + r, cy + r)


def _inset(pts: list[tuple[float, float]], d: float) -> list[tuple[float, float]]:
    """The polygon ``pts`` with every edge moved inward by ``d`` (mitred corners)."""
    p = np.asarray(pts, dtype=float)
    area = 0.5 * float(np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1]))
    edges = np.roll(p, -1, axis=0) - p
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) / np.linalg.norm(edges, axis=1, keepdims=True)
    if area > 0:  # make the normals point inward whatever the winding
        normals = -normals
    out = []
    for i in range(len(p)):
        n0, n1 = normals[i - 1], normals[i]  # edges ending and starting at vertex i
        bisector = n0 + n1
        out.append(tuple(p[i] + bisector * d / max(float(np.dot(bisector, n1)), 1e-6)))
    return out


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _draw_object(
    canvas: Image.Image, labels: Image.Image | None, obj: WorldObject, side: int, label: int,
    fraction: float | None = None,
) -> None:
    """Draw one object (and its glyph) on a canvas of ``side`` pixels (supersampled); ``fraction`` of the side
    overrides the extent its size names (the depth scenes draw nearer objects larger)."""
    color = COLORS[obj.color]
    extent = (SIZE_FRACTION[obj.size] if fraction is None else fraction) * side
    cx, cy = obj.x * side, obj.y * side
    pad = 2
    box = int(np.ceil(extent)) + 2 * pad
    ox, oy = int(round(cx - box / 2)), int(round(cy - box / 2))
    lx, ly = cx - ox, cy - oy  # centre in the local box
    mask = Image.new("L", (box, box), 0)
    md = ImageDraw.Draw(mask)
    outlined = obj.state == "outlined"
    ring = max(0.75, 0.12 * extent / SUPERSAMPLE) * SUPERSAMPLE if outlined else 0.0  # stroke, supersampled
    inner = None
    if obj.shape == "circle":
        md.ellipse(_disc(lx, ly, extent / 2), fill=255)
    else:
        outer, inner = _polygons(obj.shape, obj.orientation, extent, ring)
        md.polygon([(lx + x, ly + y) for x, y in outer], fill=255)
    full = mask
    if outlined:
        full = mask.copy()
        if obj.shape == "circle":
            md.ellipse(_disc(lx, ly, extent / 2 - ring), fill=0)
        elif inner is not None:
            md.polygon([(lx + x, ly + y) for x, y in inner], fill=0)
        else:  # the star's sharp concave outline: erode (a mitred inset would fold over)
            eroded = full
            for _ in range(int(round(ring))):
                eroded = eroded.filter(ImageFilter.MinFilter(3))
            mask = ImageChops.subtract(full, eroded)
    canvas.paste(color, (ox, oy), mask)
    if labels is not None:
        labels.paste(label, (ox, oy), full)
    if obj.dot:
        dx, dy = _dot_center(obj.shape, obj.orientation)
        r = max(0.11 * extent, 0.035 * side) * (0.75 if obj.shape == "star" else 1.0)  # a star core is small
        # always a contrasting ink, never the object's colour (a coloured dot inside a hollow
        # star or cross would read as a solid shape): dark on the background, white on dark fills
        light_fill = obj.state == "filled" and _luminance(color) < 150
        ink = (255, 255, 255) if light_fill else DOT_INK
        ImageDraw.Draw(canvas).ellipse(_disc(cx + dx * extent, cy + dy * extent, r), fill=ink)
    if obj.glyph is not None:
        _draw_glyph(canvas, obj.glyph, obj.x * side, GLYPH_Y * side, side)


def _draw_glyph(canvas: Image.Image, glyph: str, cx: float, cy: float, side: int) -> None:
    w, h = GLYPH_W * side, GLYPH_H * side
    width = max(1, int(round(side * 0.035)))
    draw = ImageDraw.Draw(canvas)
    for stroke in GLYPH_STROKES[glyph]:
        pts = [(cx - w / 2 + gx / 4 * w, cy - h / 2 + gy / 6 * h) for gx, gy in stroke]
        draw.line(pts, fill=GLYPH_INK, width=width, joint="curve")
        r = width / 2  # round caps
        for px, py in (pts[0], pts[-1]):
            draw.ellipse((px - r, py - r, px + r, py + r), fill=GLYPH_INK)


_NOISE_BANK = 61  # distinct grey noise fields per image size; a seed picks one and a shift


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """Noise fields, each tiled 2 x 2 so that any shift of it is a plain slice."""
    rng = np.random.default_rng([WORLD_VERSION, size])
    fields = rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, (_NOISE_BANK, size, size, 1)).astype(
        np.int16
    )
    return np.tile(fields, (1, 2, 2, 1))


def _noise(seed: int, size: int) -> np.ndarray:
    """Background noise of one image: a field of the bank, shifted; a function of the seed."""
    shift = (seed // _NOISE_BANK) % (size * size)
    dy, dx = shift // size, shift % size
    return _noise_bank(size)[seed % _NOISE_BANK, dy : dy + size, dx : dx + size]


@functools.lru_cache(maxsize=16)
def _perspective_coefficients(out_side: int, in_side: int) -> tuple[float, ...]:
    """PIL PERSPECTIVE data mapping output pixels (tilted) to input pixels (flat)."""
    src = [(0, 0), (in_side, 0), (in_side, in_side), (0, in_side)]
    dst = [(x * out_side, y * out_side) for x, y in TILT_CORNERS]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return tuple(float(c) for c in np.linalg.solve(np.asarray(rows, float), np.asarray(rhs, float)))


LABELS = ("shape", "color")  # what a mask's ids name: the object's shape or its colour (index + 1; 0 background)


def _render(scene: Scene, size: int, with_labels: bool, label: str = "shape") -> tuple[Image.Image, np.ndarray | None]:
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    side = size * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    labels = Image.new("L", (side, side), 0) if with_labels else None
    names = list(SHAPES if label == "shape" else COLORS)
    for obj in scene.objects:
        _draw_object(canvas, labels, obj, side, names.index(getattr(obj, label)) + 1)
    factor = SUPERSAMPLE
    if scene.view == "tilted":  # warp onto a 2x grid (cheaper than the full canvas), then reduce
        factor = min(2, SUPERSAMPLE)
        coeffs = _perspective_coefficients(size * factor, side)
        out = (size * factor, size * factor)
        canvas = canvas.transform(
            out, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=BACKGROUND
        )
        if labels is not None:
            labels = labels.transform(
                out, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.NEAREST, fillcolor=0
            )
    elif scene.view != "straight":
        raise ValueError(f"unknown view {scene.view!r}; known: {VIEWS}")
    image = canvas.reduce(factor) if factor > 1 else canvas
    if NOISE_AMPLITUDE:
        pixels = np.asarray(image, dtype=np.int16) + _noise(scene.noise_seed, size)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    mask = None
    if labels is not None:
        mask = np.asarray(labels.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)
    return image, mask


def render(scene: Scene, size: int = 32) -> Image.Image:
    """Pixels of ``scene``: an RGB image of ``size`` x ``size`` (drawn supersampled)."""
    return _render(scene, size, with_labels=False)[0]


def render_with_mask(scene: Scene, size: int = 32, label: str = "shape") -> tuple[Image.Image, np.ndarray]:
    """The image and a (size, size) uint8 map of class ids (0 background, shape index + 1; with
    ``label="color"`` colour index + 1).

    An object's whole region is labelled, including the inside of outlined shapes and its
    dot; glyphs are background.
    """
    image, mask = _render(scene, size, with_labels=True, label=label)
    assert mask is not None
    return image, mask


