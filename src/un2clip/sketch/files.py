"""Reading the images to sketch and writing sketches: SVG (one cubic Bézier path a stroke), PNG, and a grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from un2clip.data import transforms as T
from un2clip.sketch.optimise import Sketch

CANVAS = 224  # CLIPasso's canvas (image_scale)


def load_image(path: str | Path, size: int = CANVAS) -> torch.Tensor:
    """The image at ``path``, shortest side resized to ``size`` and centre-cropped: (3, size, size) in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as im:
            im.load()
            picture = T.center_crop(T.resize_short_side(T.to_rgb(im), size), size)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image {path} could not be read: {err}") from err
    return T.pil_to_tensor(picture)


def to_svg(sketch: Sketch) -> str:
    """The sketch as SVG: a white canvas and one black ``<path d="M .. C ..">`` per stroke."""
    size, w = sketch.size, f"{sketch.stroke_width:g}"
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}">',
             f'  <rect width="{size}" height="{size}" fill="white"/>']
    for stroke in sketch.control.tolist():
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = stroke
        d = f"M {x0:.3f} {y0:.3f} C {x1:.3f} {y1:.3f} {x2:.3f} {y2:.3f} {x3:.3f} {y3:.3f}"
        lines.append(f'  <path d="{d}" fill="none" stroke="black" stroke-width="{w}" stroke-linecap="round"/>')
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def to_pil(picture: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB image."""
    array = (picture.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def grid(rows: Sequence[Sequence[torch.Tensor]], pad: int = 2) -> Image.Image:
    """Pictures (3, S, S) laid out row by row on a light grey sheet."""
    size = max(p.shape[-1] for row in rows for p in row)
    n_cols = max(len(row) for row in rows)
    sheet = Image.new("RGB", (n_cols * (size + pad) + pad, len(rows) * (size + pad) + pad), (200, 200, 200))
    for i, row in enumerate(rows):
        for j, picture in enumerate(row):
            sheet.paste(to_pil(picture), (pad + j * (size + pad), pad + i * (size + pad)))
    return sheet


def write_sketch(sketch: Sketch, output: str | Path, name: str) -> tuple[Path, Path]:
    """``output/name.svg`` and ``output/name.png``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    svg, png = output / f"{name}.svg", output / f"{name}.png"
    svg.write_text(to_svg(sketch), encoding="utf-8")
    to_pil(sketch.picture()).save(png)
    return svg, png


def _names(paths: Sequence[Path]) -> list[str]:
    """Output names: each file's stem, numbered where two stems are the same."""
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}-{i}" for i, s in enumerate(stems)]


def sketch_files(model, paths: Sequence[str | Path], output: str | Path, *, n_strokes: int, canvas: int = CANVAS,
                 progress: bool = True, **options) -> list[dict]:
    """Sketch every image of ``paths`` (all read first, so a bad one fails before any work); write
    ``NAME.svg`` and ``NAME.png`` per image and ``grid.png`` (each row: the image, then its sketch) to ``output``.
    ``options`` go to :func:`un2clip.sketch.optimise.sketch_image`. Returns one record per image."""
    from tqdm.auto import tqdm

    from un2clip.sketch.optimise import DEFAULT_STEPS, sketch_image

    if n_strokes <= 0:
        raise ValueError(f"--strokes must be > 0, got {n_strokes}")
    steps = options.get("steps", DEFAULT_STEPS)
    if steps <= 0:
        raise ValueError(f"--steps must be > 0, got {steps}")
    if not paths:
        raise ValueError("no images given")
    files = [Path(p) for p in paths]
    names = _names(files)
    written = [Path(output) / f"{n}.{ext}" for n in names for ext in ("svg", "png")] + [Path(output) / "grid.png"]
    clash = {w.resolve() for w in written} & {f.resolve() for f in files}
    if clash:
        raise ValueError(f"--output {output} would overwrite the input image {sorted(clash)[0]} with its sketch: "
                         "choose another --output")
    images = [load_image(p, canvas) for p in files]
    records, rows = [], []
    for path, name, image in zip(files, names, images):
        with tqdm(total=steps, desc=f"sketch {name}", unit="step", disable=not progress) as bar:
            def tick(step: int, loss: float, bar=bar) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

            result = sketch_image(model, image, n_strokes, callback=tick, **options)
        svg, png = write_sketch(result, output, name)
        rows.append([image, result.picture()])
        records.append({"image": str(path), "svg": str(svg), "png": str(png), "strokes": n_strokes,
                        "initial_loss": result.initial_loss, "final_loss": result.final_loss})
    grid(rows).save(Path(output) / "grid.png")
    return records
