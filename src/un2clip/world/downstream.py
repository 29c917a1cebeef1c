"""The shapes world's versions of CLIP's downstream uses, written in the layouts real data sets have.

- ``detect/``: multi-object scenes with a COCO-format ``annotations.json`` (a box per object, classes
  colour + shape, six of the 36 marked novel) and ``images/``: what ``un2clip eval detect`` reads.
- ``depth/``: scenes where each object stands at a depth that sets its drawn size (extent = 0.56 / depth
  of the side) before a wall at 3 m, with ``depths/<name>.png`` (16-bit, millimetres): ``eval depth``.
- ``pointcloud/<shape>/<id>.npy``: points sampled on the surfaces of six 3-D primitives (cube, sphere,
  cone, cylinder, torus, pyramid) in a random pose: ``eval pointcloud``.
- ``video/``: short clips of one shape moving (leftward, rightward, upward, downward) or turning (clockwise,
  counterclockwise: arrows), as frame folders: ``retrieval/`` (``captions.csv`` + ``videos/``,
  two captions a clip) for ``eval video-retrieval``, ``actions/<motion>/<id>/`` for ``eval video-zeroshot``.

Each writer draws from its own random stream of the world seed. Pure PIL + numpy.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from un2clip.world.render import (
    BACKGROUND,
    NOISE_AMPLITUDE,
    SUPERSAMPLE,
    _draw_object,
    _noise,
    render,
    render_with_mask,
)
from un2clip.world.scenes import (
    COLORS,
    ORIENTATIONS,
    ORIENTED_SHAPES,
    SHAPES,
    Scene,
    WorldObject,
    choice,
    sample_scene,
    split_rng,
)
from un2clip.world.words import ZEROSHOT_TEMPLATES

DETECT_SIZE = 64  # px: two objects side by side, each crop still a few patches of the tiny CLIP


def detect_classes() -> list[str]:
    """The 36 detection classes, colour + shape ("red circle"), colour-major."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def novel_detect_classes() -> list[str]:
    """Six classes held out as novel: one per colour and one per shape (a Latin-square diagonal)."""
    colors = list(COLORS)
    return [f"{colors[k]} {SHAPES[k]}" for k in range(min(len(colors), len(SHAPES)))]


def object_box(scene: Scene, index: int, size: int) -> list[int]:
    """[x, y, w, h] in pixels of object ``index`` of a straight-view scene: the box of its drawn pixels."""
    alone = replace(scene, objects=(scene.objects[index],), count=1)
    _, mask = render_with_mask(alone, size)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise ValueError(f"object {index} of the scene draws no pixels at {size} px")
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def write_detect(root: Path, seed: int, n: int, size: int = DETECT_SIZE) -> Path:
    """``root/detect/``: ``n`` scenes of one or two filled objects, ``annotations.json`` (COCO format, categories
    carrying ``split`` base/novel), ``images/``, ``novel.txt``, ``templates.txt``."""
    folder = root / "detect"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    classes, novel = detect_classes(), set(novel_detect_classes())
    cat_id = {name: k + 1 for k, name in enumerate(classes)}
    rng = split_rng(seed, "detect")
    images, annotations = [], []
    for i in range(n):
        scene = sample_scene(rng, filled_only=True, allow_glyph=False, view="straight")
        name = f"{i:06d}.png"
        render(scene, size).save(folder / "images" / name, format="PNG")
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for k, obj in enumerate(scene.objects):
            box = object_box(scene, k, size)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": cat_id[f"{obj.color} {obj.shape}"], "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": cat_id[c], "name": c, "split": "novel" if c in novel else "base"} for c in classes]
    coco = {"info": {"description": "shapes world detection set", "seed": seed}, "images": images,
            "annotations": annotations, "categories": categories}
    (folder / "annotations.json").write_text(json.dumps(coco) + "\n", encoding="utf-8")
    (folder / "novel.txt").write_text("".join(c + "\n" for c in novel_detect_classes()), encoding="utf-8")
    (folder / "templates.txt").write_text("\n".join(ZEROSHOT_TEMPLATES) + "\n", encoding="utf-8")
    return folder



DEPTH_SIZE = 64
DEPTH_WALL = 3.0  # metres: the background, DepthCLIP's farthest bin
DEPTH_RANGE = (1.0, 2.6)  # metres an object stands at
DEPTH_EXTENT = 0.56  # of the side, covered by an object at 1 m; at depth d: DEPTH_EXTENT / d
DEPTH_SCALE = 1000.0  # PNG value per metre (NYUv2 exports: millimetres)


def depth_scene(rng) -> tuple[Scene, tuple[float, ...]]:
    """A straight-view scene of one or two filled objects and the depth of each, in metres."""
    scene = sample_scene(rng, filled_only=True, allow_glyph=False, view="straight")
    depths = tuple(round(float(rng.uniform(*DEPTH_RANGE)), 3) for _ in scene.objects)
    return scene, depths


def render_depth(scene: Scene, depths: tuple[float, ...], size: int = DEPTH_SIZE) -> tuple[Image.Image, np.ndarray]:
    """The image (objects drawn far to near, extent DEPTH_EXTENT / depth) and its (size, size) depth in metres."""
    side = size * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    labels = Image.new("L", (side, side), 0)
    order = sorted(range(len(scene.objects)), key=lambda k: -depths[k])
    for rank, k in enumerate(order):
        _draw_object(canvas, labels, scene.objects[k], side, rank + 1, fraction=DEPTH_EXTENT / depths[k])
    image = canvas.reduce(SUPERSAMPLE)
    if NOISE_AMPLITUDE:
        pixels = np.asarray(image, dtype=np.int16) + _noise(scene.noise_seed, size)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    drawn = np.asarray(labels.resize((size, size), Image.Resampling.NEAREST))
    depth = np.full((size, size), DEPTH_WALL, dtype=np.float32)
    for rank, k in enumerate(order):
        depth[drawn == rank + 1] = depths[k]
    return image, depth


def write_depth(root: Path, seed: int, n: int, size: int = DEPTH_SIZE) -> Path:
    """``root/depth/``: ``n`` scenes, ``images/<id>.png``, ``depths/<id>.png`` (16-bit mm), ``depth_scale.txt``."""
    folder = root / "depth"
    for sub in ("images", "depths"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = split_rng(seed, "depth")
    with open(folder / "scenes.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            scene, depths = depth_scene(rng)
            image, depth = render_depth(scene, depths, size)
            image.save(folder / "images" / f"{i:06d}.png", format="PNG")
            mm = np.round(depth * DEPTH_SCALE).astype(np.uint16)
            Image.fromarray(mm).save(folder / "depths" / f"{i:06d}.png", format="PNG")
            f.write(json.dumps({"index": i, "depths": list(depths), **scene.to_record()}, sort_keys=True) + "\n")
    (folder / "depth_scale.txt").write_text(f"{DEPTH_SCALE:g}\n", encoding="utf-8")
    return folder


POINT_SHAPES = ("cube", "sphere", "cone", "cylinder", "torus", "pyramid")
N_POINTS = 1024


def _on_triangles(tri: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on the (F, 3, 3) triangles, area-weighted."""
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    t = tri[rng.choice(len(tri), size=n, p=area / area.sum())]
    r1, r2 = np.sqrt(rng.random(n))[:, None], rng.random(n)[:, None]
    return (1 - r1) * t[:, 0] + r1 * (1 - r2) * t[:, 1] + r1 * r2 * t[:, 2]


def _disc_or_side(n: int, rng: np.random.Generator, side_area: float, cap_area: float) -> np.ndarray:
    """Which of ``n`` points fall on a lateral surface (True) rather than a cap, by area."""
    return rng.random(n) < side_area / (side_area + cap_area)


def primitive_points(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) points uniform on the surface of a primitive of about unit size, axis along z."""
    a = rng.random(n) * 2 * np.pi
    if shape == "sphere":
        p = rng.normal(size=(n, 3))
        return p / np.linalg.norm(p, axis=1, keepdims=True)
    if shape == "cube":
        face, uv = rng.integers(0, 6, n), rng.uniform(-1, 1, (n, 2))
        p = np.zeros((n, 3))
        axis, sign = face // 2, np.where(face % 2 == 0, -1.0, 1.0)
        for k in range(3):
            others = [j for j in range(3) if j != k]
            m = axis == k
            p[m, k] = sign[m]
            p[np.ix_(m, others)] = uv[m]
        return p
    if shape == "cylinder":  # radius 1, height 2: side 4 pi, caps 2 pi
        side = _disc_or_side(n, rng, 4 * np.pi, 2 * np.pi)
        r = np.where(side, 1.0, np.sqrt(rng.random(n)))
        z = np.where(side, rng.uniform(-1, 1, n), np.where(rng.random(n) < 0.5, -1.0, 1.0))
        return np.stack([r * np.cos(a), r * np.sin(a), z], axis=1)
    if shape == "cone":  # base radius 1 at z = -1, apex at z = 1: side pi sqrt(5), base pi
        side = _disc_or_side(n, rng, np.pi * np.sqrt(5), np.pi)
        t = np.sqrt(rng.random(n))  # distance from the apex (side) or the centre (base), as a fraction
        z = np.where(side, 1 - 2 * t, -1.0)
        return np.stack([t * np.cos(a), t * np.sin(a), z], axis=1)
    if shape == "torus":  # ring radius 1, tube radius 0.35; rejection makes it uniform in area
        big, small, out = 1.0, 0.35, []
        while sum(len(o) for o in out) < n:
            theta, phi = rng.random(2 * n) * 2 * np.pi, rng.random(2 * n) * 2 * np.pi
            keep = rng.random(2 * n) < (big + small * np.cos(phi)) / (big + small)
            ring = big + small * np.cos(phi[keep])
            out.append(np.stack([ring * np.cos(theta[keep]), ring * np.sin(theta[keep]), small * np.sin(phi[keep])],
                                axis=1))
        return np.concatenate(out)[:n]
    if shape == "pyramid":  # square base [-1, 1]^2 at z = -1, apex (0, 0, 1)
        base = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]], dtype=float)
        apex = np.array([0.0, 0.0, 1.0])
        tri = [np.stack([base[k], base[(k + 1) % 4], apex]) for k in range(4)]
        tri += [np.stack([base[0], base[1], base[2]]), np.stack([base[0], base[2], base[3]])]
        return _on_triangles(np.stack(tri), n, rng)
    raise ValueError(f"unknown primitive {shape!r}; known: {POINT_SHAPES}")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A (3, 3) rotation drawn uniformly (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def write_pointcloud(root: Path, seed: int, per_class: int, n_points: int = N_POINTS) -> Path:
    """``root/pointcloud/<shape>/<id>.npy``: ``per_class`` clouds of ``n_points`` per primitive, random pose."""
    folder = root / "pointcloud"
    rng = split_rng(seed, "pointcloud")
    for shape in POINT_SHAPES:
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pts = primitive_points(shape, n_points, rng) @ random_rotation(rng).T
            np.save(folder / shape / f"{i:04d}.npy", pts.astype(np.float32))
    return folder


VIDEO_SIZE = 32  # px: the tiny CLIP's input
VIDEO_FRAMES = 8
# Each clip starts with the shape near the centre (pointing up when it turns), so that the direction shows in
# which frames a clip holds, not only in their order: a parameter-free mean over frames ignores order.
MOVES = {"moving leftward": (-1, 0), "moving rightward": (1, 0), "moving upward": (0, -1), "moving downward": (0, 1)}
TURNS = {"turning clockwise": 1, "turning counterclockwise": -1}
MOTIONS = tuple(MOVES) + tuple(TURNS)
MOTION_PHRASES = {"moving leftward": "moving to the left", "moving rightward": "moving to the right",
                  "moving upward": "moving up", "moving downward": "moving down",
                  "turning clockwise": "rotating clockwise", "turning counterclockwise": "rotating counterclockwise"}
# The arrow alone turns: it has no rotational symmetry, so a clockwise clip (up to right) and a counterclockwise
# one (up to left) hold different frames; a triangle turned 60 degrees either way looks nearly the same.
TURN_SHAPES = ("arrow",)
TRAVEL = 0.24  # of the side, from the first frame to the last
TURN_DEGREES = 90.0
START_JITTER = 0.04


def motion_clip(rng: np.random.Generator, motion: str, n_frames: int = VIDEO_FRAMES
                ) -> tuple[list[WorldObject], list[float], int]:
    """One clip of ``motion``: the object of each frame, its clockwise turn in degrees, the noise seed."""
    turning = motion in TURNS
    shape = choice(rng, TURN_SHAPES if turning else SHAPES)
    color = choice(rng, list(COLORS))
    orientation = "up" if turning else (choice(rng, ORIENTATIONS) if shape in ORIENTED_SHAPES else None)
    x0, y0 = 0.5 + rng.uniform(-START_JITTER, START_JITTER, size=2)
    noise_seed = int(rng.integers(0, 2**31 - 1))
    dx, dy = MOVES.get(motion, (0, 0))
    objects, angles = [], []
    for t in range(n_frames):
        f = t / max(n_frames - 1, 1)
        objects.append(WorldObject(shape, color, size="small", orientation=orientation, x=float(x0 + dx * TRAVEL * f),
                                   y=float(y0 + dy * TRAVEL * f)))
        angles.append(TURNS.get(motion, 0) * TURN_DEGREES * f)
    return objects, angles, noise_seed


def render_frame(obj: WorldObject, angle: float, noise_seed: int, size: int = VIDEO_SIZE) -> Image.Image:
    """One frame: the object drawn by the world's renderer, turned ``angle`` degrees clockwise about its centre."""
    side = size * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    _draw_object(canvas, None, obj, side, 1)
    if angle:  # PIL turns counterclockwise for positive angles
        canvas = canvas.rotate(-angle, resample=Image.Resampling.BICUBIC, center=(obj.x * side, obj.y * side),
                               fillcolor=BACKGROUND)
    image = canvas.reduce(SUPERSAMPLE)
    if NOISE_AMPLITUDE:  # the same background noise in every frame of a clip: a still camera
        pixels = np.asarray(image, dtype=np.int16) + _noise(noise_seed, size)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image


def write_video(root: Path, seed: int, per_class: int, n_frames: int = VIDEO_FRAMES, size: int = VIDEO_SIZE) -> Path:
    """``root/video/``: ``per_class`` clips of each motion, ``n_frames`` PNG frames each, written twice: as
    ``retrieval/videos/<id>/`` + ``retrieval/captions.csv`` (video_id,caption; two captions a clip) and as
    ``actions/<motion>/<id>/`` class folders; ``clips.jsonl`` records each clip."""
    import csv

    folder = root / "video"
    rng = split_rng(seed, "video")
    rows, records = [], []
    for k in range(per_class * len(MOTIONS)):
        motion = MOTIONS[k % len(MOTIONS)]
        objects, angles, noise_seed = motion_clip(rng, motion, n_frames)
        vid = f"{k:05d}"
        paths = [folder / "retrieval" / "videos" / vid, folder / "actions" / motion.replace(" ", "_") / vid]
        for p in paths:
            p.mkdir(parents=True, exist_ok=True)
        for t, (obj, angle) in enumerate(zip(objects, angles)):
            first, second = (p / f"{t:03d}.png" for p in paths)
            render_frame(obj, angle, noise_seed, size).save(first, format="PNG")
            try:  # the class-folder copy of the same file
                os.link(first, second)
            except OSError:
                shutil.copyfile(first, second)
        name = f"{objects[0].color} {objects[0].shape}"
        rows += [(vid, f"a {name} {motion}"), (vid, f"a video of a {name} {MOTION_PHRASES[motion]}")]
        records.append({"video_id": vid, "motion": motion, "shape": objects[0].shape, "color": objects[0].color,
                        "orientation": objects[0].orientation, "start": [objects[0].x, objects[0].y],
                        "noise_seed": noise_seed})
    with open(folder / "retrieval" / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "caption"])
        writer.writerows(rows)
    (folder / "clips.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records),
                                        encoding="utf-8")
    return folder


def write_downstream(root: Path, seed: int, *, n_detect: int = 40, n_depth: int = 40,
                     n_pointcloud_per_class: int = 8, n_video_per_class: int = 20) -> None:
    """Write the downstream sets of a world (a count of 0 leaves that set out)."""
    if n_detect:
        write_detect(root, seed, n_detect)
    if n_depth:
        write_depth(root, seed, n_depth)
    if n_pointcloud_per_class:
        write_pointcloud(root, seed, n_pointcloud_per_class)
    if n_video_per_class:
        write_video(root, seed, n_video_per_class)


def ensure_downstream(world: Path) -> None:
    """Write the downstream sets a world made before they existed lacks (seed from its world.json)."""
    params = json.loads((world / "world.json").read_text(encoding="utf-8"))
    seed = int(params["seed"])
    if "n_detect" not in params and not (world / "detect" / "annotations.json").is_file():
        write_detect(world, seed, 40)
    if "n_depth" not in params and not (world / "depth" / "depth_scale.txt").is_file():
        write_depth(world, seed, 40)
    if "n_pointcloud_per_class" not in params and not (world / "pointcloud").is_dir():
        write_pointcloud(world, seed, 8)
    if "n_video_per_class" not in params and not (world / "video" / "clips.jsonl").is_file():
        write_video(world, seed, 20)
