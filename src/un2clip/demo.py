"""`make demo`: run un²CLIP end to end on the embedded default, on a CPU.

Generates a small folder of images, fine-tunes the tiny preset's encoder through its frozen
decoder for a few steps, and prints where the run, its metrics and its checkpoints went.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _make_images(folder: Path, n: int, seed: int = 0) -> None:
    import random

    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colours = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 30), (150, 60, 200), (240, 130, 20)]
    for i in range(n):
        im = Image.new("RGB", (64, 64), (235, 235, 235))
        d = ImageDraw.Draw(im)
        x, y, r = rng.randint(12, 52), rng.randint(12, 52), rng.randint(6, 12)
        box = (x - r, y - r, x + r, y + r)
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=rng.choice(colours))
        im.save(folder / f"{i:05d}.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output", default="runs/demo", help="where the demo writes everything")
    p.add_argument("--steps", type=int, default=30, help="fine-tuning steps")
    args = p.parse_args(argv)
    from un2clip.cli import main as cli

    out = Path(args.output)
    images = out / "images"
    if not images.exists():
        _make_images(images, 256)
    run_dir = out / "finetune"
    argv_ft = ["finetune", "--preset", "tiny", "--data", str(images), "--max-steps", str(args.steps),
               "--batch-size", "16", "--lr", "1e-5", "--save-every", "10", "--output", str(run_dir)]
    if (run_dir / "checkpoints").exists():
        argv_ft = ["finetune", "--resume", str(run_dir), "--max-steps", str(args.steps)]
    return cli(argv_ft)


if __name__ == "__main__":
    sys.exit(main())
