"""Phrase-grounding data in the layouts of the two benchmarks GLIP reports: RefCOCO and Flickr30k Entities.

Both readers give :class:`GroundingSample` lists: one image, one caption, and the caption's grounded phrases
(:class:`GroundingTarget`), each a character span of the caption with its ground-truth boxes ``[x0, y0, x1, y1]``
in pixels of the image (x1, y1 exclusive edges).

1. **RefCOCO / RefCOCO+ / RefCOCOg** as the ``refer`` toolkit lays them out: ``DIR/instances.json`` (COCO format:
   ``images`` with ``id``, ``file_name``, ``width``, ``height``; ``annotations`` with ``id``, ``image_id``,
   ``bbox`` [x, y, w, h]) and ``DIR/refs(<split_by>).p`` (a pickled list of refs: ``ref_id``, ``ann_id``,
   ``image_id``, ``split``, ``sentences`` [{``sent``, ...}]) or the same list as ``DIR/refs(<split_by>).json``.
   The pickle is read with an unpickler that builds plain containers only (any class reference is refused), so
   no code in the file runs. One sample per (ref, sentence): the whole expression is the phrase, the referred
   object's box its target.
2. **Flickr30k Entities**: ``DIR/Sentences/<image id>.txt`` (one caption a line, phrases marked
   ``[/EN#<entity>/<type> words]``), ``DIR/Annotations/<image id>.xml`` (Pascal-VOC-like: ``<object>`` with one
   or more ``<name>`` entity ids and a ``<bndbox>`` of 1-based inclusive pixel corners, or ``<nobndbox>``), and
   ``DIR/<split>.txt`` (the image ids of a split). One sample per caption; a phrase whose entity has no box is
   not grounded (counted in ``n_phrases_without_box``), as the benchmark's protocol leaves it out.

Malformed files are errors naming the file and the row (ref, annotation, line or object) and what is wrong.
:class:`GroundingSource` serves either layout's train split to the training loop.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from un2clip.data.sources import Record, Source, Strings, check_index, decode_image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels

REFCOCO_LAYOUT = ("RefCOCO layout: DIR/instances.json (COCO images + annotations) and DIR/refs(<split_by>).p "
                  "or DIR/refs(<split_by>).json (refs with ref_id, ann_id, image_id, split, sentences)")
FLICKR_LAYOUT = ("Flickr30k Entities layout: DIR/Sentences/<id>.txt, DIR/Annotations/<id>.xml, DIR/<split>.txt "
                 "(image ids), images in DIR/flickr30k-images/<id>.jpg or --images")
LAYOUTS = f"{REFCOCO_LAYOUT}; or {FLICKR_LAYOUT}"


@dataclass(frozen=True)
class GroundingTarget:
    """A phrase of a caption: ``spans`` (begin, end) character ranges and its ground-truth boxes."""

    phrase: str
    spans: tuple[tuple[int, int], ...]
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class GroundingSample:
    """One image with one caption and the caption's grounded phrases."""

    image: str  # path of the image file
    caption: str
    targets: tuple[GroundingTarget, ...]
    key: str  # e.g. "ref 17 sentence 0" or "36979.txt line 2"
    width: int = 0  # of the image, in pixels, as the annotations give it (0: unknown)
    height: int = 0


@dataclass
class GroundingSet:
    """The samples of one split and what was left out while reading."""

    samples: list[GroundingSample]
    layout: str  # "refcoco" | "flickr30k"
    split: str
    n_phrases_without_box: int = 0
    notes: list[str] = field(default_factory=list)


def layout_of(folder: str | os.PathLike) -> str | None:
    """"refcoco", "flickr30k" or None: which grounding layout ``folder`` holds."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / "instances.json").is_file() and _refs_files(folder):
        return "refcoco"
    if (folder / "Sentences").is_dir() and (folder / "Annotations").is_dir():
        return "flickr30k"
    return None


def read_grounding(folder: str | os.PathLike, *, split: str, images: str | os.PathLike | None = None,
                   split_by: str | None = None) -> GroundingSet:
    """The samples of ``split`` of the grounding set in ``folder`` (its layout recognised)."""
    layout = layout_of(folder)
    if layout == "refcoco":
        return read_refcoco(folder, split=split, images=images, split_by=split_by)
    if layout == "flickr30k":
        if split_by:
            raise ValueError(f"{folder} is a Flickr30k Entities folder: --split-by is RefCOCO's (refs files)")
        return read_flickr30k(folder, split=split, images=images)
    if not Path(folder).exists():
        raise FileNotFoundError(f"grounding data {folder} not found; {LAYOUTS}")
    raise ValueError(f"{folder} holds no grounding set; {LAYOUTS}")


# ----------------------------------------------------------------------------- RefCOCO


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings and numbers only: a reference to any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refers to {module}.{name}; a refs file holds plain lists and dicts only")


def _refs_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if re.fullmatch(r"refs\(.+\)\.(p|json)", p.name))


def _pick_refs(folder: Path, split_by: str | None) -> Path:
    found = _refs_files(folder)
    if split_by:
        for suffix in (".p", ".json"):
            if (folder / f"refs({split_by}){suffix}").is_file():
                return folder / f"refs({split_by}){suffix}"
        raise FileNotFoundError(f"{folder} has no refs({split_by}).p or .json (found: "
                                f"{', '.join(p.name for p in found) or 'none'}); {REFCOCO_LAYOUT}")
    if len({p.stem for p in found}) > 1:
        raise ValueError(f"{folder} holds several refs files ({', '.join(p.name for p in found)}): pass --split-by "
                         "(e.g. umd or google for RefCOCOg, unc for RefCOCO and RefCOCO+)")
    if not found:
        raise FileNotFoundError(f"{folder} has no refs(<split_by>).p or .json; {REFCOCO_LAYOUT}")
    return found[0]


def load_refs(path: str | os.PathLike) -> list[dict]:
    """The refs list of a ``refs(...).p`` (plain-data pickle, Python 2 strings read as latin-1) or ``.json`` file."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            refs = json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open("rb") as f:
                refs = _PlainUnpickler(f, encoding="latin-1").load()
    except (pickle.UnpicklingError, json.JSONDecodeError, EOFError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as a refs list: {err}") from err
    if not isinstance(refs, list):
        raise ValueError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def xywh_box(bbox: Any, *, where: str) -> Box:
    """A COCO ``[x, y, w, h]`` as ``(x0, y0, x1, y1)``; a ValueError naming ``where`` unless 4 finite numbers with
    positive width and height."""
    ok = isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    if not ok or bbox[2] <= 0 or bbox[3] <= 0:
        raise ValueError(f"{where}: bbox {bbox!r} is not [x, y, w, h] of finite numbers with w, h > 0")
    x, y, w, h = (float(v) for v in bbox)
    return (x, y, x + w, y + h)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {what}") from err


def read_refcoco(folder: str | os.PathLike, *, split: str, images: str | os.PathLike | None = None,
                 split_by: str | None = None) -> GroundingSet:
    """RefCOCO-style referring expressions of ``split`` (see the module docstring); images under ``images``
    (default ``DIR/images``) at each image's ``file_name``."""
    folder = Path(folder)
    coco = _read_json(folder / "instances.json", "COCO instances of the referred objects")
    inst = folder / "instances.json"
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or \
            not isinstance(coco.get("annotations"), list):
        raise ValueError(f"{inst}: expected a COCO object with 'images' and 'annotations' lists")
    image_info: dict[int, dict] = {}
    for k, im in enumerate(coco["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or "id" not in im:
            raise ValueError(f"{inst}: images[{k}] needs an id and a file_name")
        image_info[im["id"]] = im
    ann_box: dict[int, tuple[int, Box]] = {}
    for k, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann:
            raise ValueError(f"{inst}: annotations[{k}] needs an id, an image_id and a bbox")
        ann_box[ann["id"]] = (ann["image_id"], xywh_box(ann.get("bbox"), where=f"{inst}: annotations[{k}] "
                                                                              f"(id {ann['id']})"))
    refs_path = _pick_refs(folder, split_by)
    refs = load_refs(refs_path)
    root = Path(images) if images else folder / "images"
    samples: list[GroundingSample] = []
    splits: set[str] = set()
    for k, ref in enumerate(refs):
        where = f"{refs_path}: ref {k}"
        if not isinstance(ref, dict) or not {"ann_id", "split", "sentences"} <= set(ref):
            raise ValueError(f"{where} needs ann_id, split and sentences")
        splits.add(str(ref["split"]))
        if ref["split"] != split:
            continue
        where += f" (ref_id {ref.get('ref_id')})"
        if ref["ann_id"] not in ann_box:
            raise ValueError(f"{where} names ann_id {ref['ann_id']}, which {inst} does not hold")
        image_id, box = ann_box[ref["ann_id"]]
        if image_id not in image_info:
            raise ValueError(f"{inst}: annotation {ref['ann_id']} names image_id {image_id}, not in its images")
        im = image_info[image_id]
        if not isinstance(ref["sentences"], list):
            raise ValueError(f"{where}: sentences must be a list")
        for j, sent in enumerate(ref["sentences"]):
            text = sent.get("sent", sent.get("raw")) if isinstance(sent, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: sentence {j} has no text ('sent' or 'raw')")
            text = text.strip()
            target = GroundingTarget(phrase=text, spans=((0, len(text)),), boxes=(box,))
            samples.append(GroundingSample(image=str(root / im["file_name"]), caption=text, targets=(target,),
                                           key=f"ref {ref.get('ref_id', k)} sentence {j}",
                                           width=int(im.get("width") or 0), height=int(im.get("height") or 0)))
    if not samples:
        raise ValueError(f"{refs_path} has no refs of split {split!r} (splits found: "
                         f"{', '.join(sorted(splits)) or 'none'})")
    return GroundingSet(samples=samples, layout="refcoco", split=split)


# ----------------------------------------------------------------------------- Flickr30k Entities

_ENTITY = re.compile(r"\[/EN#(\d+)((?:/[^\s\]]+)+)\s+([^\[\]]*)\]")


def parse_entities_sentence(line: str, *, where: str) -> tuple[str, list[tuple[str, str, tuple[int, int]]]]:
    """A Flickr30k Entities sentence -> (plain caption, [(entity id, phrase, (begin, end)) ...]): the markup
    ``[/EN#id/type words]`` becomes ``words``, spans index the plain caption. A ValueError naming ``where`` for
    an unbalanced or malformed bracket."""
    caption, phrases, pos = [], [], 0
    length = 0
    for m in _ENTITY.finditer(line):
        plain = line[pos:m.start()]
        if "[" in plain or "]" in plain:
            raise ValueError(f"{where}: malformed phrase markup near {plain.strip()[:40]!r} "
                             "(expected [/EN#<id>/<type> words])")
        caption.append(plain)
        length += len(plain)
        words = m.group(3).strip()
        phrases.append((m.group(1), words, (length, length + len(words))))
        caption.append(words)
        length += len(words)
        pos = m.end()
    rest = line[pos:]
    if "[" in rest or "]" in rest:
        raise ValueError(f"{where}: malformed phrase markup near {rest.strip()[:40]!r} "
                         "(expected [/EN#<id>/<type> words])")
    caption.append(rest)
    return "".join(caption), phrases


def read_entity_boxes(path: str | os.PathLike) -> tuple[dict[str, list[Box]], int, int]:
    """``({entity id: boxes}, width, height)`` of a Flickr30k Entities ``Annotations/<id>.xml``; boxes are
    0-based ``(x0, y0, x1, y1)`` with exclusive x1, y1 (the file's corners are 1-based and inclusive)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path} is not valid XML ({err}); {FLICKR_LAYOUT}") from err
    size = root.find("size")
    width = int(size.findtext("width", "0")) if size is not None else 0
    height = int(size.findtext("height", "0")) if size is not None else 0
    boxes: dict[str, list[Box]] = {}
    for k, obj in enumerate(root.iter("object")):
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        bnd = obj.find("bndbox")
        if bnd is None:
            continue  # <nobndbox> or <scene>: the entity has no box
        try:
            x0, y0, x1, y1 = (float(bnd.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: object {k} has a bndbox without numeric xmin, ymin, xmax, ymax") from err
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
            raise ValueError(f"{path}: object {k} has bndbox ({x0}, {y0}, {x1}, {y1}): need xmin <= xmax, "
                             "ymin <= ymax")
        if not names:
            raise ValueError(f"{path}: object {k} has a bndbox but no <name> (entity id)")
        for name in names:
            boxes.setdefault(name, []).append((x0 - 1.0, y0 - 1.0, x1, y1))
    return boxes, width, height


def read_flickr30k(folder: str | os.PathLike, *, split: str,
                   images: str | os.PathLike | None = None) -> GroundingSet:
    """Flickr30k Entities phrases of ``split`` (image ids from ``DIR/<split>.txt``); images under ``images``
    (default ``DIR/flickr30k-images``) as ``<id>.jpg``."""
    folder = Path(folder)
    ids_file = folder / f"{split}.txt"
    if not ids_file.is_file():
        raise FileNotFoundError(f"{ids_file} not found: the image ids of split {split!r}; {FLICKR_LAYOUT}")
    ids = [line.strip() for line in ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    root = Path(images) if images else folder / "flickr30k-images"
    samples: list[GroundingSample] = []
    without_box = 0
    for image_id in ids:
        sentences = folder / "Sentences" / f"{image_id}.txt"
        annotation = folder / "Annotations" / f"{image_id}.xml"
        for path in (sentences, annotation):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found (image {image_id} of {ids_file}); {FLICKR_LAYOUT}")
        boxes, width, height = read_entity_boxes(annotation)
        lines = sentences.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            caption, phrases = parse_entities_sentence(line.strip(), where=f"{sentences} line {n}")
            targets = []
            for entity, words, span in phrases:
                if entity not in boxes:
                    without_box += 1
                    continue
                targets.append(GroundingTarget(phrase=words, spans=(span,), boxes=tuple(boxes[entity])))
            if targets:
                samples.append(GroundingSample(image=str(root / f"{image_id}.jpg"), caption=caption,
                                               targets=tuple(targets), key=f"{image_id}.txt line {n}",
                                               width=width, height=height))
    if not samples:
        raise ValueError(f"{ids_file}: split {split!r} has no phrase with a box")
    return GroundingSet(samples=samples, layout="flickr30k", split=split, n_phrases_without_box=without_box)


# ----------------------------------------------------------------------------- training source


@dataclass
class GroundingRecord(Record):
    """A training record with its caption's grounded phrases (boxes in pixels of ``image``)."""

    targets: tuple[GroundingTarget, ...] = ()


class GroundingSource(Source):
    """The samples of one split of a grounding folder as a training source: ``load(i)`` -> :class:`GroundingRecord`.

    Opening checks every file of the split; an image that cannot be decoded is skipped and counted by the loop.
    """

    kind = "grounding"

    def __init__(self, folder: str | os.PathLike, *, split: str = "train",
                 images: str | os.PathLike | None = None, split_by: str | None = None):
        self.spec = str(folder)
        data = read_grounding(folder, split=split, images=images, split_by=split_by)
        self.layout = data.layout
        self._keys = Strings(s.key for s in data.samples)
        self._samples = Strings(json.dumps([s.image, s.caption, [[t.phrase, t.spans, t.boxes] for t in s.targets]])
                                for s in data.samples)

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> str:
        return self._keys[check_index(i, len(self))]

    def sample(self, i: int) -> tuple[str, str, tuple[GroundingTarget, ...]]:
        """(image path, caption, targets) of sample ``i``, without decoding the image."""
        image, caption, targets = json.loads(self._samples[check_index(i, len(self))])
        return image, caption, tuple(GroundingTarget(phrase=p, spans=tuple(map(tuple, s)), boxes=tuple(map(tuple, b)))
                                     for p, s, b in targets)

    def load(self, i: int) -> GroundingRecord | None:
        image_path, caption, targets = self.sample(i)
        image = decode_image(image_path, self.key(i))
        if image is None:
            return None
        return GroundingRecord(image=image, text=caption, key=self.key(i), targets=targets)
