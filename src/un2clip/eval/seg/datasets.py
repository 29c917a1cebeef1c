"""Segmentation datasets in the directory layouts mmsegmentation reads, and a generic one.

A dataset is a list of (image, label map) file pairs, the class names (one line per
class; a line may list synonyms separated by commas, every one of them becomes a text
query) and how to read the labels: index PNGs, 255 ignored, and for some benchmarks
mmsegmentation's ``reduce_zero_label`` (0 becomes 255 = ignored, every other label
moves down by one).

========== ======= ========================================================================
name       classes layout under DIR (the dataset's root)
========== ======= ========================================================================
generic    any     images/<id>.<ext>, masks/<id>.png, classes.txt, optional templates.txt
voc21      21      JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
                   ImageSets/Segmentation/val.txt (background = 0)
voc20      20      as voc21, background ignored (reduce_zero_label)
context60  60      JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png,
                   ImageSets/SegmentationContext/val.txt (background = 0)
context59  59      as context60, background ignored (reduce_zero_label)
coco_object 81     images/val2017/<id>.jpg, annotations/val2017/<id>_instanceTrainIds.png
coco_stuff 171     images/val2017/<id>.jpg, annotations/val2017/<id>_labelTrainIds.png
cityscapes 19      leftImg8bit/val/<city>/<id>_leftImg8bit.png,
                   gtFine/val/<city>/<id>_gtFine_labelTrainIds.png
ade20k     150     images/validation/<id>.jpg, annotations/validation/<id>.png
                   (reduce_zero_label)
========== ======= ========================================================================

``BENCHMARK_DIRS`` gives each named dataset's folder under mmsegmentation's usual data
root (``data/``): ``VOCdevkit/VOC2012``, ``VOCdevkit/VOC2010``, ``coco_stuff164k``,
``cityscapes``, ``ade/ADEChallengeData2016``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from un2clip.data.sources import IMAGE_EXTENSIONS, decode_image

IGNORE_INDEX = 255


@dataclass
class SegDataset:
    """Image/label file pairs with their class names and how labels are read."""

    name: str
    root: Path
    images: list[Path]
    labels: list[Path]
    classes: list[list[str]]  # per class, its names (first = display name unless `display` says otherwise)
    reduce_zero_label: bool = False
    background: int | None = None  # class index low-confidence pixels fall back to, if any
    display: list[str] = field(default_factory=list)  # one name per class, for tables and JSON
    templates: list[str] | None = None  # the dataset's own prompt templates (generic: templates.txt), if any

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} label maps")
        if not self.display:
            self.display = [names[0] for names in self.classes]
            if self.background is not None:
                self.display[self.background] = "background"
        repeated = sorted({n for n in self.display if self.display.count(n) > 1})
        if repeated:
            raise ValueError(f"class names must differ (the first name of each line names the class): {repeated}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def parse_class_lines(lines: list[str]) -> list[list[str]]:
    """Class-name lines -> per class, its comma-separated names (stripped, empty lines skipped)."""
    classes = []
    for line in lines:
        names = [n.strip() for n in line.split(",") if n.strip()]
        if names:
            classes.append(names)
    return classes


def read_classes(path: str | Path) -> list[list[str]]:
    """A class-name file (one class per line, synonyms separated by commas) -> per class, its names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a class-name file (one class per line, "
                                "synonyms separated by commas)")
    classes = parse_class_lines(path.read_text(encoding="utf-8-sig").splitlines())
    if not classes:
        raise ValueError(f"{path} lists no class names")
    return classes


CLASS_FILE_SETS = {
    # SCLIP's configs/cls_<name>.txt (NACLIP ships the same): several names per class (synonyms)
    "sclip": "classes",
    # ClearCLIP's: one name per class; only voc21, voc20 and coco_object differ from SCLIP's, the
    # other five files are the same and are read from classes/
    "clearclip": "classes/clearclip",
}


def builtin_classes(name: str, names: str = "sclip") -> list[list[str]]:
    """The class names shipped for a named benchmark, from one repo's files (``CLASS_FILE_SETS``).

    ``sclip``: ``un2clip/eval/seg/classes/<name>.txt``; ``clearclip``:
    ``classes/clearclip/<name>.txt`` where ClearCLIP's file differs, else the same file.
    """
    if names not in CLASS_FILE_SETS:
        raise ValueError(f"unknown class-name set {names!r}; known: {', '.join(CLASS_FILE_SETS)}")
    package = resources.files("un2clip.eval.seg")
    path = package.joinpath(f"{CLASS_FILE_SETS[names]}/{name}.txt")
    if not path.is_file():
        path = package.joinpath(f"classes/{name}.txt")
    return parse_class_lines(path.read_text(encoding="utf-8").splitlines())


def read_label(path: str | Path, reduce_zero_label: bool = False) -> np.ndarray:
    """An index PNG -> (H, W) uint8 labels; with ``reduce_zero_label`` 0 -> 255 and the rest minus one."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: label maps must be single-channel index images, got mode {im.mode}")
        label = np.asarray(im)
    if label.dtype != np.uint8:
        if label.max(initial=0) > 255 or label.min(initial=0) < 0:
            raise ValueError(f"{path}: label values must lie in 0..255")
        label = label.astype(np.uint8)
    if reduce_zero_label:
        label = label.astype(np.int16) - 1  # k -> k - 1
        label[(label == -1) | (label == 254)] = 255  # 0 -> 255 (ignored), 255 stays ignored
        label = label.astype(np.uint8)
    return label


# -- layouts ------------------------------------------------------------------------------------------------


def _missing(path: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path} not found: {layout}")


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


GENERIC_LAYOUT = ("expected DIR/images/<id>.<ext>, DIR/masks/<id>.png (index PNGs, 255 ignored), DIR/classes.txt "
                  "and optionally DIR/templates.txt")


def _generic(root: Path) -> tuple[list[Path], list[Path]]:
    images_dir, masks_dir = root / "images", root / "masks"
    for p in (images_dir, masks_dir):
        if not p.is_dir():
            raise _missing(p, GENERIC_LAYOUT)
    images = sorted(images_dir / n for n in os.listdir(images_dir) if _is_image(n))
    labels = [masks_dir / f"{p.stem}.png" for p in images]
    missing = [str(lab) for lab in labels if not lab.is_file()]
    if missing:
        raise _missing(Path(missing[0]), f"{len(missing)} image(s) have no mask; {GENERIC_LAYOUT}")
    return images, labels


def _split_file(root: Path, image_dir: str, label_dir: str, split_file: str, layout: str):
    split = root / split_file
    for p in (root / image_dir, root / label_dir, split):
        if not p.exists():
            raise _missing(p, layout)
    ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    return ([root / image_dir / f"{i}.jpg" for i in ids], [root / label_dir / f"{i}.png" for i in ids])


VOC_LAYOUT = ("expected the VOC2012 root: JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
              "ImageSets/Segmentation/<split>.txt")
CONTEXT_LAYOUT = ("expected the VOC2010 root with PASCAL Context labels: JPEGImages/<id>.jpg, "
                  "SegmentationClassContext/<id>.png, ImageSets/SegmentationContext/<split>.txt")


def _voc(root: Path, split: str):
    return _split_file(root, "JPEGImages", "SegmentationClass", f"ImageSets/Segmentation/{split}.txt", VOC_LAYOUT)


def _context(root: Path, split: str):
    return _split_file(root, "JPEGImages", "SegmentationClassContext",
                       f"ImageSets/SegmentationContext/{split}.txt", CONTEXT_LAYOUT)


def _suffix_pairs(image_dir: Path, label_dir: Path, image_suffix: str, label_suffix: str, layout: str,
                  recursive: bool = False):
    for p in (image_dir, label_dir):
        if not p.is_dir():
            raise _missing(p, layout)
    found = sorted(image_dir.rglob(f"*{image_suffix}") if recursive else image_dir.glob(f"*{image_suffix}"))
    images, labels = [], []
    for img in found:
        rel = img.relative_to(image_dir)
        stem = rel.name[: -len(image_suffix)]
        images.append(img)
        labels.append(label_dir / rel.parent / f"{stem}{label_suffix}")
    missing = [str(lab) for lab in labels if not lab.is_file()]
    if missing:
        raise _missing(Path(missing[0]), f"{len(missing)} image(s) have no label map; {layout}")
    return images, labels


def _coco(suffix: str):
    layout = (f"expected the COCO-Stuff 164k root: images/<split>2017/<id>.jpg, "
              f"annotations/<split>2017/<id>{suffix}")

    def read(root: Path, split: str):
        return _suffix_pairs(root / "images" / f"{split}2017", root / "annotations" / f"{split}2017", ".jpg",
                             suffix, layout)

    return read


CITYSCAPES_LAYOUT = ("expected the Cityscapes root: leftImg8bit/<split>/<city>/<id>_leftImg8bit.png, "
                     "gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png")
ADE_LAYOUT = ("expected ADEChallengeData2016: images/<split>/<id>.jpg, annotations/<split>/<id>.png "
              "(split: validation)")


def _cityscapes(root: Path, split: str):
    return _suffix_pairs(root / "leftImg8bit" / split, root / "gtFine" / split, "_leftImg8bit.png",
                         "_gtFine_labelTrainIds.png", CITYSCAPES_LAYOUT, recursive=True)


def _ade(root: Path, split: str):
    split = "validation" if split == "val" else split
    return _suffix_pairs(root / "images" / split, root / "annotations" / split, ".jpg", ".png", ADE_LAYOUT)


@dataclass(frozen=True)
class Layout:
    """A named dataset: how to find its files, its classes, and how its labels are read."""

    find: Callable[[Path, str], tuple[list[Path], list[Path]]]
    reduce_zero_label: bool = False
    background: bool = False  # class 0 is background
    benchmark_dir: str = ""  # folder under mmsegmentation's data root


LAYOUTS: dict[str, Layout] = {
    "voc21": Layout(_voc, background=True, benchmark_dir="VOCdevkit/VOC2012"),
    "voc20": Layout(_voc, reduce_zero_label=True, benchmark_dir="VOCdevkit/VOC2012"),
    "context60": Layout(_context, background=True, benchmark_dir="VOCdevkit/VOC2010"),
    "context59": Layout(_context, reduce_zero_label=True, benchmark_dir="VOCdevkit/VOC2010"),
    "coco_object": Layout(_coco("_instanceTrainIds.png"), background=True, benchmark_dir="coco_stuff164k"),
    "coco_stuff": Layout(_coco("_labelTrainIds.png"), benchmark_dir="coco_stuff164k"),
    "cityscapes": Layout(_cityscapes, benchmark_dir="cityscapes"),
    "ade20k": Layout(_ade, reduce_zero_label=True, benchmark_dir="ade/ADEChallengeData2016"),
}
DATASETS = ("generic", *LAYOUTS)
BENCHMARKS = tuple(LAYOUTS)  # the eight standard benchmarks
BENCHMARK_DIRS = {name: layout.benchmark_dir for name, layout in LAYOUTS.items()}


def load_dataset(data: str | Path, dataset: str = "generic", *, classes: str | Path | list[list[str]] | None = None,
                 split: str = "val", max_images: int | None = None, class_names: str = "sclip") -> SegDataset:
    """Read a dataset's file list and class names.

    ``classes`` overrides the shipped class-name file; ``class_names`` picks whose shipped files a
    named benchmark reads (``CLASS_FILE_SETS``: sclip or clearclip).
    """
    root = Path(data)
    if not root.is_dir():
        layout_text = GENERIC_LAYOUT if dataset == "generic" else f"the root folder of {dataset}"
        raise FileNotFoundError(f"{root} is not a folder: {layout_text}")
    names_from = class_names
    if isinstance(classes, (str, Path)):
        class_names = read_classes(classes)
    else:
        class_names = classes
    templates = None
    if dataset == "generic":
        images, labels = _generic(root)
        if class_names is None:
            class_names = read_classes(root / "classes.txt")
        background = 0 if class_names[0][0].lower() == "background" else None
        reduce = False
        if (root / "templates.txt").is_file():
            from un2clip.eval.seg.infer import read_templates

            templates = read_templates(root / "templates.txt")
    elif dataset in LAYOUTS:
        layout = LAYOUTS[dataset]
        images, labels = layout.find(root, split)
        if class_names is None:
            class_names = builtin_classes(dataset, names_from)
        background = 0 if layout.background else None
        reduce = layout.reduce_zero_label
    else:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if not images:
        raise FileNotFoundError(f"{root} holds no images for dataset {dataset!r}")
    if max_images is not None:
        images, labels = images[:max_images], labels[:max_images]
    return SegDataset(dataset, root, images, labels, class_names, reduce_zero_label=reduce, background=background,
                      templates=templates)


def size_mismatch(image: str | Path, label: str | Path, image_size: tuple[int, int],
                  label_size: tuple[int, int]) -> str:
    """The error of a label map whose (width, height) differs from its image's."""
    return (f"{label} is {label_size[0]}x{label_size[1]} but its image {image} is {image_size[0]}x{image_size[1]}: "
            "a mask must have its image's size (--resize-masks resizes masks to their images, nearest neighbour)")


def check_mask_sizes(dataset: SegDataset) -> None:
    """Refuse the first label map whose size differs from its image's; reads file headers only.

    Files that cannot be opened are left to the evaluation, which skips and counts them.
    """
    for image, label in zip(dataset.images, dataset.labels):
        try:
            with Image.open(image) as a, Image.open(label) as b:
                sizes = a.size, b.size
        except (OSError, ValueError):
            continue
        if sizes[0] != sizes[1]:
            raise ValueError(size_mismatch(image, label, *sizes))


class SegPairs(torch.utils.data.Dataset):
    """Index -> (image (3, H, W) uint8 or None, labels (h, w) uint8 or None, index); None for unreadable files.

    A label map keeps its own size (the caller refuses one that differs from its image's), unless
    ``resize_masks``: then it is resized to its image's size, nearest neighbour.
    """

    def __init__(self, dataset: SegDataset, *, resize_masks: bool = False):
        self.images = [str(p) for p in dataset.images]
        self.labels = [str(p) for p in dataset.labels]
        self.reduce = dataset.reduce_zero_label
        self.resize_masks = resize_masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        image = decode_image(self.images[i])
        try:
            label = torch.from_numpy(read_label(self.labels[i], self.reduce).copy())
        except (OSError, ValueError):
            label = None
        if image is None or label is None:
            return None, None, i
        if self.resize_masks and tuple(label.shape) != (image.height, image.width):
            resized = Image.fromarray(label.numpy()).resize(image.size, Image.NEAREST)
            label = torch.from_numpy(np.asarray(resized).copy())
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
        return pixels, label, i
