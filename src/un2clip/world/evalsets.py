"""Benchmarks and data sets written from the shapes world.

:func:`generate_world` writes a complete world to disk: image-caption splits, an
MMVP-VLM-layout paired benchmark, zero-shot ImageFolder sets and a segmentation set.
Pure PIL + numpy.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from un2clip.world.downstream import write_downstream
from un2clip.world.pairs import (
    MMVP_TYPES,
    color_weights,
    mmvp_pair,
)
from un2clip.world.render import SUPERSAMPLE, render, render_with_mask
from un2clip.world.scenes import (
    COLORS,
    GLYPHS,
    ORIENTATION_WORDS,
    ORIENTED_SHAPES,
    RARE_ATTRIBUTES,
    SHAPES,
    WORLD_VERSION,
    Scene,
    choice,
    sample_scene,
    split_rng,
    zipf_weights,
)
from un2clip.world.words import (
    BOILERPLATE_CAPTIONS,
    LSEG_UNSEEN,
    ZEROSHOT_TEMPLATES,
    caption,
    lseg_classes,
    nouns,
    phrase,
    seg_classes,
    swap_groups,
    world_metadata,
    world_vocabulary,
    zeroshot_tasks,
)


def mmvp_pairs(seed: int = 0, pairs_per_pattern: int = 15, colors: Sequence[str] | None = None, *,
               split: str = "mmvp") -> list[dict]:
    """The paired benchmark as records: type, attribute, the two scenes, the two statements.

    Each pattern draws from its own stream, so more pairs per pattern extend the same
    benchmark (the first 15 pairs stay the first 15). ``colors``: the objects of every pair take
    only these colours (context transfer measures the pairs of the silent colours); None: all. ``split``: the
    family of random streams (another one, e.g. ``"mllm-mmvp"``, draws other pairs of the same kinds).
    """
    weights = color_weights(colors)
    records = []
    for k, pattern in enumerate(MMVP_TYPES):
        rng = split_rng(seed, split, k)
        for index in range(pairs_per_pattern):
            a, b, named, attribute = mmvp_pair(rng, pattern, index, weights)
            s1, s2 = phrase(a, named), phrase(b, named)
            if s1 == s2 or a == b:  # cannot happen by construction; refuse rather than write it
                raise AssertionError(f"degenerate {pattern} pair: {s1!r}")
            records.append(
                {"type": pattern, "attribute": attribute, "scenes": (a, b), "statements": (s1, s2)}
            )
    return records


def zeroshot_scene(rng: np.random.Generator, task: str, classname: str) -> Scene:
    if task == "shape":
        scene = sample_scene(rng, n_objects=1, count=1, shapes=(classname,))
    elif task == "color":
        scene = sample_scene(rng, n_objects=1, count=1)
        scene = replace(scene, objects=(replace(scene.objects[0], color=classname),))
    elif task == "orientation":
        scene = sample_scene(rng, n_objects=1, count=1, shapes=ORIENTED_SHAPES)
        key = {v: k for k, v in ORIENTATION_WORDS.items()}[classname]
        scene = replace(scene, objects=(replace(scene.objects[0], orientation=key),))
    else:
        raise ValueError(task)
    return scene


# ----------------------------------------------------------------------------- writing
OUTPUT_NAMES = ("train", "val", "trusted", "mmvp", "zeroshot", "seg", "detect", "depth", "pointcloud", "video", "mllm",
                "grounding", "world.json", "swap_groups.txt", "metadata.txt", "lseg", "nouns.txt")
_CHUNK = 256  # images per job sent to a worker process


def _save_images(jobs: list[tuple[Scene, str, str | None, str]], size: int) -> int:
    """Render and write ``(scene, image path, mask path or None, what the mask labels)`` jobs; JPEG for ``.jpg``."""
    for scene, path, mask_path, label in jobs:
        if mask_path is None:
            image = render(scene, size)
        else:
            image, mask = render_with_mask(scene, size, label)
            Image.fromarray(mask, "L").save(mask_path, format="PNG")
        if path.endswith(".jpg"):
            image.save(path, format="JPEG", quality=95)
        else:
            image.save(path, format="PNG")
    return len(jobs)


class _ImageWriter:
    """Collects image jobs and runs them inline or on a pool of processes.

    Pixels depend only on the scene, so the files are the same whatever ``workers`` is.
    """

    def __init__(self, size: int, workers: int, total: int, progress: bool):
        self.size, self.workers = size, workers
        self.pending: list[tuple[Scene, str, str | None, str]] = []
        self.futures: list = []
        self.pool = None
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="shapes world", unit="img")
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: safe next to threaded libraries (torch) in the parent process
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def add(self, scene: Scene, path: Path, mask_path: Path | None = None, label: str = "shape") -> None:
        self.pending.append((scene, str(path), None if mask_path is None else str(mask_path), label))
        if len(self.pending) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        jobs, self.pending = self.pending, []
        if not jobs:
            return
        if self.pool is None:
            self._done(_save_images(jobs, self.size))
            return
        self.futures.append(self.pool.submit(_save_images, jobs, self.size))
        while len(self.futures) > 4 * self.workers:  # bound the memory held by queued jobs
            self._done(self.futures.pop(0).result())

    def _done(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self) -> _ImageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Wait for every job on success; after an error drop the queued ones (and let the error through)."""
        self.close(finish=exc_type is None)

    def close(self, *, finish: bool = True) -> None:
        """Wait for every job (``finish``) or drop the queued ones (after an error)."""
        try:
            if finish:
                self._flush()
                for fut in self.futures:
                    self._done(fut.result())
        finally:
            self.futures, self.pending = [], []
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
            if self.bar is not None:
                self.bar.close()


def noisy_captions(captions: list[str], rng: np.random.Generator, *, swap_rate: float,
                   boilerplate_rate: float) -> tuple[list[str], list[str | None]]:
    """Web-like caption noise: each caption, independently, is replaced by another image's caption with
    probability ``swap_rate``, else by a boilerplate caption ("image", "photo", "untitled", ...) with probability
    ``boilerplate_rate``. Returns the captions and, per caption, "swapped", "boilerplate" or None."""
    out, kinds = list(captions), [None] * len(captions)
    n = len(captions)
    for i in range(n):
        u, v, w = rng.random(3)
        if u < swap_rate and n > 1:
            j = min(int(v * (n - 1)), n - 2)
            j += j >= i  # any index but i
            out[i], kinds[i] = captions[j], "swapped"
        elif u < swap_rate + boilerplate_rate:
            out[i], kinds[i] = choice(rng, BOILERPLATE_CAPTIONS), "boilerplate"
    return out, kinds


def _write_caption_split(
    root: Path, split: str, n: int, seed: int, rare_rate: float, out: _ImageWriter, *,
    swap_rate: float = 0.0, boilerplate_rate: float = 0.0, long_tail: float = 0.0,
    talk_colors: Sequence[str] = (), talk_rate: float = 0.5,
) -> None:
    folder = root / split
    (folder / "images").mkdir(parents=True, exist_ok=True)
    scene_rng, caption_rng = split_rng(seed, split, 0), split_rng(seed, split, 1)
    weights = ({"shape": zipf_weights(SHAPES, long_tail), "color": zipf_weights(list(COLORS), long_tail)}
               if long_tail > 0 else None)
    scenes = [sample_scene(scene_rng, weights=weights) for _ in range(n)]
    captions = [caption(scene, caption_rng, rare_rate, talk_colors=talk_colors, talk_rate=talk_rate)
                for scene in scenes]
    noise: list[str | None] = [None] * n
    if swap_rate > 0 or boilerplate_rate > 0:
        captions, noise = noisy_captions(captions, split_rng(seed, split, 2), swap_rate=swap_rate,
                                         boilerplate_rate=boilerplate_rate)
    with (
        open(folder / "captions.csv", "w", newline="", encoding="utf-8") as fcsv,
        open(folder / "attributes.jsonl", "w", encoding="utf-8") as fjson,
    ):
        writer = csv.writer(fcsv, lineterminator="\n")
        writer.writerow(["image", "caption"])
        for i, scene in enumerate(scenes):
            name = f"images/{i:06d}.png"
            out.add(scene, folder / name)
            writer.writerow([name, captions[i]])
            extra = {"noise": noise[i]} if noise[i] is not None else {}
            fjson.write(json.dumps({"index": i, "image": name, **scene.to_record(), **extra}, sort_keys=True) + "\n")


def _write_mmvp(root: Path, seed: int, pairs_per_pattern: int, out: _ImageWriter,
                colors: Sequence[str] | None = None) -> None:
    folder = root / "mmvp"
    for t in MMVP_TYPES:
        (folder / "MLLM_VLM Images" / t).mkdir(parents=True, exist_ok=True)
    records = mmvp_pairs(seed, pairs_per_pattern, colors)
    with (
        open(folder / "Questions.csv", "w", newline="", encoding="utf-8") as fcsv,
        open(folder / "pairs.jsonl", "w", encoding="utf-8") as fjson,
    ):
        writer = csv.writer(fcsv, lineterminator="\n")
        writer.writerow(["Question ID", "Type", "Statement"])
        for k, rec in enumerate(records):
            qids = (2 * k + 1, 2 * k + 2)
            for q, scene, statement in zip(qids, rec["scenes"], rec["statements"]):
                out.add(scene, folder / "MLLM_VLM Images" / rec["type"] / f"{q}.jpg")
                writer.writerow([q, rec["type"], statement])
            record = {
                "question_ids": list(qids),
                "type": rec["type"],
                "attribute": rec["attribute"],
                "statements": list(rec["statements"]),
                "scenes": [s.to_record() for s in rec["scenes"]],
            }
            fjson.write(json.dumps(record, sort_keys=True) + "\n")


def _write_zeroshot(root: Path, seed: int, per_class: int, out: _ImageWriter) -> None:
    for t, (task, spec) in enumerate(zeroshot_tasks().items()):
        folder = root / "zeroshot" / task
        rng = split_rng(seed, "zeroshot", t)
        for name in spec["classnames"]:
            (folder / name).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                out.add(zeroshot_scene(rng, task, name), folder / name / f"{j:04d}.png")
        (folder / "classnames.txt").write_text("\n".join(spec["classnames"]) + "\n", encoding="utf-8")
        (folder / "templates.txt").write_text("\n".join(spec["templates"]) + "\n", encoding="utf-8")


def _write_lseg(root: Path, seed: int, n: int, out: _ImageWriter) -> list[tuple[Path, dict[int, int]]]:
    """LSeg's sets: train/ and val/ (scenes of the seen shapes, their classes only; val held out) and unseen/
    (scenes of the unseen shapes, ``LSEG_UNSEEN``), each a generic segmentation folder of ``n`` images. Returns each
    folder and the map from the renderer's class ids (shape index + 1) to the folder's, applied once the masks are
    written."""
    remaps = []
    for name, split, unseen in (("train", "lseg-train", False), ("val", "lseg-val", False),
                                ("unseen", "lseg-unseen", True)):
        folder = root / "lseg" / name
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        classes = lseg_classes(unseen)
        shapes = classes[1:]
        rng = split_rng(seed, split)
        for i in range(n):
            scene = sample_scene(rng, shapes=shapes, filled_only=True, allow_glyph=False)
            out.add(scene, folder / "images" / f"{i:06d}.png", folder / "masks" / f"{i:06d}.png")
        (folder / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
        remaps.append((folder, {0: 0, **{SHAPES.index(s) + 1: k + 1 for k, s in enumerate(shapes)}}))
    return remaps


def write_lseg(root: str | Path, seed: int, n: int, image_size: int = 32, progress: bool = False) -> Path:
    """``root/lseg/`` alone: the same files :func:`generate_world` writes with ``n_lseg=n`` (each set draws from a
    stream of its own), for a world written without them. Returns the folder."""
    root = Path(root)
    _check_sizes(0.0, image_size, {"n_lseg": n})
    with _ImageWriter(image_size, 1, 3 * n, progress) as out:
        remaps = _write_lseg(root, seed, n, out)
    for folder, remap in remaps:  # the renderer labels shape k as k + 1; each LSeg set numbers its own classes
        _relabel_masks(folder, remap)
    return root / "lseg"


def _relabel_masks(folder: Path, remap: dict[int, int]) -> None:
    """Rewrite a folder's masks with ``remap`` (every id in them must be a key)."""
    lut = np.full(256, 255, dtype=np.uint8)
    for a, b in remap.items():
        lut[a] = b
    for path in sorted((folder / "masks").glob("*.png")):
        with Image.open(path) as im:
            mask = np.asarray(im)
        Image.fromarray(lut[mask], "L").save(path, format="PNG")


def write_seg_color(root: str | Path, seed: int, n: int, image_size: int = 32, progress: bool = False) -> Path:
    """``root/seg-color/``: the scenes of the segmentation set (``seg/``, the same seed and count), each mask
    labelling an object by its colour instead of its shape: background + the six colours, each colour named as
    the captions name it, before a shape word ('red circle, red square, ...': a class scores its best name).

    Colour, unlike shape, can be read from a piece of an object, as the classes of real segmentation benchmarks
    mostly can from a patch of texture; the world's shapes are told apart only by their outline. Returns the
    folder."""
    with _ImageWriter(image_size, 1, n, progress) as out:
        return _write_seg(Path(root), seed, n, out, label="color")


def _write_mllm_sets(root: Path, seed: int, image_size: int, talk_colors: Sequence[str],
                     mmvp_colors: Sequence[str] | None, *, n_instruct: int, contrastive: bool, pairs_per_pattern: int,
                     n_cvbench_per_task: int) -> dict:
    """``root/mllm/`` (:func:`un2clip.world.mllm.write_mllm`) with the world's MMVP-MLLM pairs: the silent colours'
    and, with two or more talk colours, the control's. Returns the counts ``world.json`` records."""
    from un2clip.world.mllm import write_mllm

    talk_pairs = (mmvp_pairs(seed, pairs_per_pattern, talk_colors, split="mllm-mmvp-talk")
                  if len(talk_colors) >= 2 else None)  # the control: the colours captions talk about
    return write_mllm(root, seed, image_size=image_size, n_instruct=n_instruct, n_cvbench_per_task=n_cvbench_per_task,
                      talk_colors=talk_colors, contrastive=contrastive,
                      mmvp=mmvp_pairs(seed, pairs_per_pattern, mmvp_colors, split="mllm-mmvp"), mmvp_talk=talk_pairs)


def add_mllm_sets(root: str | Path, *, n_instruct: int = 2000, contrastive: bool = True, pairs_per_pattern: int = 15,
                  n_cvbench_per_task: int = 50) -> dict:
    """Write ``mllm/`` into a world generated without ``--mllm`` (``un2clip compare --llava``): the same files
    ``world generate --mllm`` with these settings would have written there (the sets draw from their own
    streams; the world's other outputs are read, not changed), and record them in its ``world.json``. Returns
    the counts."""
    root = Path(root)
    meta_path = root / "world.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root} is not a shapes world (no world.json): write one with `un2clip world generate`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not (root / "train" / "captions.csv").is_file():
        raise FileNotFoundError(f"{root} has no train/captions.csv: the LLaVA sets need the world's train split")
    talk = list(meta.get("talk_colors") or ())
    counts = _write_mllm_sets(root, meta["seed"], meta["image_size"], talk, meta.get("mmvp_colors"),
                              n_instruct=n_instruct, contrastive=contrastive, pairs_per_pattern=pairs_per_pattern,
                              n_cvbench_per_task=n_cvbench_per_task)
    meta["mllm"] = counts
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return counts


def _write_seg(root: Path, seed: int, n: int, out: _ImageWriter, label: str = "shape") -> Path:
    """``seg/`` (objects labelled by shape) or, with ``label="color"``, ``seg-color/``: the same scenes either way
    (one stream, ``split_rng(seed, "seg")``)."""
    folder = root / ("seg" if label == "shape" else "seg-color")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = split_rng(seed, "seg")
    with open(folder / "attributes.jsonl", "w", encoding="utf-8") as fjson:
        for i in range(n):
            scene = sample_scene(rng, filled_only=True, allow_glyph=False)
            out.add(scene, folder / "images" / f"{i:06d}.png", folder / "masks" / f"{i:06d}.png", label=label)
            record = {
                "index": i,
                "image": f"images/{i:06d}.png",
                "mask": f"masks/{i:06d}.png",
                **scene.to_record(),
            }
            fjson.write(json.dumps(record, sort_keys=True) + "\n")
    names = seg_classes() if label == "shape" else ["background"] + [", ".join(f"{c} {s}" for s in SHAPES)
                                                                     for c in COLORS]
    (folder / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (folder / "templates.txt").write_text("\n".join(ZEROSHOT_TEMPLATES) + "\n", encoding="utf-8")
    return folder


def _auto_workers(n_images: int) -> int:
    if n_images < 4000:  # starting processes costs more than it saves
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _check_sizes(rare_rate: float, image_size: int, counts: dict[str, int]) -> None:
    if not 0.0 <= rare_rate <= 1.0:
        raise ValueError(f"rare_rate must be in [0, 1], got {rare_rate}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _clear_world(root: Path, overwrite: bool) -> None:
    """Delete the world's own folders in ``root`` (refused unless ``overwrite``); other files stay."""
    existing = [n for n in OUTPUT_NAMES if (root / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{root} already holds a world ({', '.join(existing)}); pass overwrite=True to rewrite it"
        )
    for n in existing:
        if (root / n).is_dir():
            shutil.rmtree(root / n)
        else:
            (root / n).unlink()


def _world_tables() -> dict:
    """The world's definition as written into world.json."""
    return {
        "supersample": SUPERSAMPLE,
        "shapes": list(SHAPES),
        "colors": list(COLORS),
        "glyphs": list(GLYPHS),
        "rare_attributes": list(RARE_ATTRIBUTES),
        "mmvp_types": list(MMVP_TYPES),
        "zeroshot_tasks": list(zeroshot_tasks()),
        "seg_classes": seg_classes(),
        "vocabulary_size": len(world_vocabulary()),
    }


def generate_world(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 20000,
    n_val: int = 1000,
    image_size: int = 32,
    rare_rate: float = 0.03,
    pairs_per_pattern: int = 15,
    n_seg: int = 200,
    n_zeroshot_per_class: int = 50,
    n_detect: int = 40,
    n_depth: int = 40,
    n_pointcloud_per_class: int = 8,
    n_video_per_class: int = 20,
    n_grounding: int = 40,
    progress: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
    noise_swap: float = 0.0,
    noise_boilerplate: float = 0.0,
    long_tail: float = 0.0,
    n_trusted: int = 0,
    talk_colors: Sequence[str] = (),
    talk_rate: float = 0.5,
    mmvp_colors: Sequence[str] | None = None,
    mllm: bool = False,
    n_mllm_instruct: int = 2000,
    mllm_contrastive: bool = True,
    mllm_pairs_per_pattern: int = 15,
    n_cvbench_per_task: int = 50,
    n_lseg: int = 0,
) -> dict:
    """Write a shapes world under ``out_dir`` and return its parameters (also ``world.json``).

    Layout::

        train/ val/       images/000000.png, captions.csv (image,caption), attributes.jsonl
        mmvp/             Questions.csv, MLLM_VLM Images/<Type>/<qid>.jpg, pairs.jsonl
        zeroshot/<task>/  <classname>/0000.png, classnames.txt, templates.txt
                          (tasks: shape, color, orientation)
        seg/              images/<id>.png, masks/<id>.png, classes.txt, templates.txt,
                          attributes.jsonl
        detect/           annotations.json (COCO format, 36 colour+shape classes, 6 novel),
                          images/<id>.png, novel.txt, templates.txt  (un2clip eval detect)
        depth/            images/<id>.png, depths/<id>.png (16-bit mm), depth_scale.txt,
                          scenes.jsonl  (un2clip eval depth)
        pointcloud/       <primitive>/<id>.npy, 1024 points on a cube, sphere, cone, cylinder,
                          torus or pyramid in a random pose  (un2clip eval pointcloud)
        video/            clips of 8 frames (32 px) of one shape moving leftward, rightward, upward,
                          downward or turning clockwise, counterclockwise: retrieval/captions.csv +
                          retrieval/videos/<id>/<frame>.png (un2clip eval video-retrieval),
                          actions/<motion>/<id>/<frame>.png (un2clip eval video-zeroshot), clips.jsonl
        grounding/        (``n_grounding`` > 0) RefCOCO layout: instances.json, refs(unc).p, images/<id>.png, 64 px
                          scenes of two objects, referred to as "the small red circle" and "the square to the left
                          of the star"; info.json records its parameters (world.json does not: a world's record
                          stays as it was)  (un2clip train-grounding, eval grounding; :mod:`un2clip.world.grounding`)
        world.json, swap_groups.txt  (word groups for hard-negative captions: pretrain --hard-negatives)
        metadata.txt      the world's attribute phrases, one a line (curate --metadata)
        nouns.txt         the nouns captions name objects by (GroupViT's multi-label prompts)
        lseg/             (``n_lseg`` > 0) train/ and val/ (``n_lseg`` scenes each of the seen shapes, classes
                          background + those) and unseen/ (``n_lseg`` scenes of LSEG_UNSEEN, classes background
                          + those):
                          generic segmentation folders for `un2clip train-dense` and `eval seg --method lseg`
        trusted/          (``n_trusted`` > 0) clean captioned images of the train distribution, for
                          training a DFN-style filter (`un2clip train-filter`)
        mllm/             (``mllm``) LLaVA data: pretrain.json (the train captions), instruct.json + images/
                          (``n_mllm_instruct`` scenes, three questions each; in contrastive pairs unless
                          ``mllm_contrastive`` is False), mmvp/ (world MMVP-MLLM, silent
                          colours), mmvp-talk/ (the talk-colour control), cvbench/ (world CV-Bench); see
                          :mod:`un2clip.world.mllm`

    A noisy pool (the train split only; val, trusted and the benchmarks stay clean and uniform):
    ``noise_swap`` of the captions are another image's, ``noise_boilerplate`` are boilerplate
    ("image", "photo", "untitled", ...), and ``long_tail`` > 0 draws shapes and colours with Zipf
    weights 1 / k^long_tail instead of uniformly; ``attributes.jsonl`` records each caption's noise.

    Context transfer: captions (train, val, trusted) name the rare attributes of objects coloured in
    ``talk_colors`` with ``talk_rate`` and those of the other colours with ``rare_rate``; the MMVP pairs then
    use only the other, silent colours (or ``mmvp_colors`` when given), so the benchmark asks whether what
    captions teach in one context reaches the context where they are silent. Images are the same as
    without it: only the words change.

    Each part draws from its own random stream, so e.g. ``n_train`` changes neither the
    validation split nor the benchmark, and a smaller train split is a prefix of a larger
    one.  Refuses to write into a folder that already holds a world unless ``overwrite``
    (then the world's own folders are deleted first; other files are left alone).
    ``workers`` processes render the images (None: one per core, at most 8, for large
    worlds); the output is byte-identical whatever their number.  Processes are started
    with "spawn", so a script calling this at import time needs the usual
    ``if __name__ == "__main__":`` guard when ``workers > 1``.
    """
    _check_sizes(rare_rate, image_size, {"n_train": n_train, "n_val": n_val, "pairs_per_pattern": pairs_per_pattern,
                                          "n_seg": n_seg, "n_zeroshot_per_class": n_zeroshot_per_class,
                                          "n_trusted": n_trusted, "long_tail": long_tail, "n_detect": n_detect,
                                          "n_depth": n_depth, "n_pointcloud_per_class": n_pointcloud_per_class,
                                          "n_video_per_class": n_video_per_class, "n_mllm_instruct": n_mllm_instruct,
                                          "mllm_pairs_per_pattern": mllm_pairs_per_pattern,
                                          "n_cvbench_per_task": n_cvbench_per_task, "n_grounding": n_grounding,
                                          "n_lseg": n_lseg})
    if not (0 <= noise_swap and 0 <= noise_boilerplate and noise_swap + noise_boilerplate <= 1):
        raise ValueError(f"noise_swap and noise_boilerplate must be >= 0 with a sum <= 1, got {noise_swap} "
                         f"and {noise_boilerplate}")
    talk_colors = list(dict.fromkeys(talk_colors))
    if talk_colors:
        if not 0.0 <= talk_rate <= 1.0:
            raise ValueError(f"talk_rate must be in [0, 1], got {talk_rate}")
        if mmvp_colors is None:
            mmvp_colors = [c for c in COLORS if c not in talk_colors]
    if any(c not in COLORS for c in talk_colors):
        raise ValueError(f"unknown talk colours {[c for c in talk_colors if c not in COLORS]}; the world's colours: "
                         f"{list(COLORS)}")
    color_weights(mmvp_colors)  # refuses unknown colours or fewer than two, before anything is written
    root = Path(out_dir)
    _clear_world(root, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    tasks = zeroshot_tasks()
    n_zs = sum(len(t["classnames"]) for t in tasks.values()) * n_zeroshot_per_class
    total = n_train + n_val + n_trusted + 2 * pairs_per_pattern * len(MMVP_TYPES) + n_zs + n_seg + 3 * n_lseg
    n_workers = _auto_workers(total) if workers is None else max(1, int(workers))
    with _ImageWriter(image_size, n_workers, total, progress) as out:
        talk = {"talk_colors": talk_colors, "talk_rate": talk_rate}
        _write_caption_split(root, "train", n_train, seed, rare_rate, out, swap_rate=noise_swap,
                             boilerplate_rate=noise_boilerplate, long_tail=long_tail, **talk)
        _write_caption_split(root, "val", n_val, seed, rare_rate, out, **talk)
        if n_trusted:
            _write_caption_split(root, "trusted", n_trusted, seed, rare_rate, out, **talk)
        _write_mmvp(root, seed, pairs_per_pattern, out, mmvp_colors)
        _write_zeroshot(root, seed, n_zeroshot_per_class, out)
        _write_seg(root, seed, n_seg, out)
        remaps = _write_lseg(root, seed, n_lseg, out) if n_lseg else []
    for folder, remap in remaps:  # the renderer labels shape k as k + 1; each LSeg set numbers its own classes
        _relabel_masks(folder, remap)
    write_downstream(root, seed, n_detect=n_detect, n_depth=n_depth, n_pointcloud_per_class=n_pointcloud_per_class,
                     n_video_per_class=n_video_per_class)
    if n_grounding:
        from un2clip.world.grounding import write_grounding

        write_grounding(root, seed, n_grounding)
    params = {"version": WORLD_VERSION, "seed": seed, "image_size": image_size, "n_train": n_train, "n_val": n_val,
              "rare_rate": rare_rate, "pairs_per_pattern": pairs_per_pattern,
              "n_mmvp_questions": 2 * pairs_per_pattern * len(MMVP_TYPES), "n_seg": n_seg,
              "n_zeroshot_per_class": n_zeroshot_per_class, "n_detect": n_detect, "n_depth": n_depth,
              "n_pointcloud_per_class": n_pointcloud_per_class, "n_video_per_class": n_video_per_class,
              **_world_tables()}
    if noise_swap or noise_boilerplate or long_tail or n_trusted:  # absent from a plain world's record
        params.update(noise_swap=noise_swap, noise_boilerplate=noise_boilerplate, long_tail=long_tail,
                      n_trusted=n_trusted)
    if n_lseg:  # absent from a world without the LSeg sets
        params.update(n_lseg=n_lseg, lseg_unseen=list(LSEG_UNSEEN))
    if talk_colors or mmvp_colors is not None:
        params.update(talk_colors=talk_colors, talk_rate=talk_rate, mmvp_colors=list(mmvp_colors or COLORS))
    if mllm:  # absent from a world without the LLaVA sets
        params["mllm"] = _write_mllm_sets(root, seed, image_size, talk_colors, mmvp_colors, n_instruct=n_mllm_instruct,
                                          contrastive=mllm_contrastive, pairs_per_pattern=mllm_pairs_per_pattern,
                                          n_cvbench_per_task=n_cvbench_per_task)
    (root / "swap_groups.txt").write_text("".join(" ".join(g) + "\n" for g in swap_groups()), encoding="utf-8")
    (root / "metadata.txt").write_text("".join(e + "\n" for e in world_metadata()), encoding="utf-8")
    (root / "nouns.txt").write_text("".join(n + "\n" for n in nouns()), encoding="utf-8")
    (root / "world.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return params

