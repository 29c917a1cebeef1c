"""Training images with optional captions: one map-style interface, three on-disk layouts.

``un2clip.data.open_source(spec)`` recognises (and a folder written by ``un2clip cache-latents``,
which holds ``un2clip_latents.json``, opens as :class:`un2clip.data.latent_cache.LatentCacheSource`;
the shards are read by :mod:`un2clip.data.shards`)

1. an **image folder**, searched recursively (``.jpg .jpeg .png .webp .bmp .gif``, any
   case; hidden files and folders are skipped; symlinked folders are followed once).
   A caption is read from a sidecar ``<stem>.txt`` next to an image when one exists.
2. a **CSV or TSV table** (``.csv`` / ``.tsv``) with an image-path column and an optional
   caption column; relative paths resolve against the table's folder.
3. **webdataset tar shards** as img2dataset writes them (``<key>.jpg`` + ``<key>.txt``
   + ...): one ``.tar``, a folder that directly holds ``.tar`` files, or a pattern such
   as ``shards/{00000..00010}.tar`` (brace ranges and lists, ``*`` globs, several
   patterns joined by ``::``). The tars are indexed once when opened (member offsets
   per sample), so they are read by random access with the standard ``tarfile``
   layout; the ``webdataset`` package is not needed. Only uncompressed tars can be
   read this way.

Every source is map-style: ``len(source)``, ``source.key(i)`` and ``source.load(i)``,
which returns a :class:`Record` with an RGB image, or ``None`` when the image cannot be
read (missing, zero bytes, corrupt, truncated, a decompression bomb). ``load`` never
raises for a bad image: training skips and counts it.

Index lists are kept in flat numpy buffers rather than Python lists so that data-loader
workers forked from the main process do not copy them page by page (reference counts
of millions of small Python objects would).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from un2clip.data.transforms import to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
TABLE_IMAGE_COLUMNS = ("image", "filepath", "path", "file", "image_path")
TABLE_CAPTION_COLUMNS = ("caption", "text", "title")

LAYOUTS = (
    "accepted layouts: an image folder (searched recursively for "
    + "/".join(e[1:] for e in IMAGE_EXTENSIONS)
    + "), a .csv/.tsv file with an image-path column, or webdataset .tar shards "
    "(one .tar, a folder of .tar files, or a pattern like shards/{00000..00010}.tar)"
)


def is_image_name(name: str) -> bool:
    """Whether a file name is one the image readers take: not hidden, an :data:`IMAGE_EXTENSIONS` ending, any case."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass
class Record:
    """One training example: an RGB image, its caption if any, and a stable key."""

    image: Image.Image
    text: str | None
    key: str


@dataclass
class MaskedRecord(Record):
    """A training example with a per-pixel label map (index values, 255 ignored) of the image's size."""

    mask: np.ndarray | None = None


# ----------------------------------------------------------------------------- helpers


class Strings:
    """An immutable list of strings stored as one UTF-8 buffer plus offsets (fork friendly)."""

    def __init__(self, items: Iterable[str]):
        encoded = [s.encode("utf-8", "surrogateescape") for s in items]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        if encoded:
            np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._blob[a:b].tobytes().decode("utf-8", "surrogateescape")


def decode_image(source: str | os.PathLike | bytes, name: str | None = None) -> Image.Image | None:
    """Fully decode an image file or bytes into RGB; ``None`` if it cannot be read for any reason.

    An image over Pillow's pixel limit (its decompression-bomb guard) is refused like any unreadable
    one, with a warning that names it (``name``, else the path) and the limit.
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                return None
            fp: Any = io.BytesIO(source)
        else:
            fp = source
        with Image.open(fp) as image:
            image.load()  # force decoding: lazy open does not notice truncated data
            rgb = to_rgb(image)
            if rgb is image:
                rgb = image.copy()  # detach from the file before it closes
        if rgb.width < 1 or rgb.height < 1:
            return None
        return rgb
    except Image.DecompressionBombError as err:
        where = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "an image")
        log.warning("%s skipped (counted as unreadable): %s Pillow refuses images over twice "
                    "PIL.Image.MAX_IMAGE_PIXELS (now %s); raise that limit to read them", where, err,
                    Image.MAX_IMAGE_PIXELS)
        return None
    except Exception:  # any other decoder failure is a bad image
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return None


def check_index(i: int, n: int) -> int:
    i = int(i)
    if not 0 <= i < n:
        raise IndexError(f"sample index {i} out of range for a source of {n} samples")
    return i


class Source:
    """A map-style collection of images: ``len``, ``key(i)``, ``load(i) -> Record | None``."""

    #: "folder", "table" or "webdataset"
    kind: str = "source"
    #: what was opened (the spec as given)
    spec: str = ""
    #: entries seen at open time but left out of the index (e.g. empty paths, tar samples without an image)
    n_skipped: int = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def key(self, i: int) -> str:
        """A stable name of sample ``i`` (relative path, table path, or webdataset key); no decoding."""
        raise NotImplementedError

    def load(self, i: int) -> Record | None:
        """Sample ``i`` as a Record, or ``None`` when its image cannot be read."""
        raise NotImplementedError

    def __repr__(self) -> str:
        skipped = f", {self.n_skipped} skipped at open" if self.n_skipped else ""
        return f"{type(self).__name__}({self.spec!r}, {len(self)} samples{skipped})"


class _PathSource(Source):
    """A source indexed by a list of image paths (``_paths``); the path is the key."""

    _paths: Strings

    def __len__(self) -> int:
        return len(self._paths)

    def key(self, i: int) -> str:
        return self._paths[check_index(i, len(self))]


# ----------------------------------------------------------------------------- image folder


class ImageFolderSource(_PathSource):
    """Images under a folder (recursive, sorted by relative path); captions from sidecar .txt files."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.spec = str(root)
        rel_paths: list[str] = []
        has_text: list[bool] = []
        seen_dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:  # a symlink loop or a folder linked twice
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            names = set(filenames)
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if not is_image_name(name):
                    continue
                stem = os.path.splitext(name)[0]
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                rel_paths.append(Path(rel).as_posix())
                has_text.append(stem + ".txt" in names)
        order = sorted(range(len(rel_paths)), key=rel_paths.__getitem__)
        self._paths = Strings(rel_paths[k] for k in order)
        self._has_text = np.array([has_text[k] for k in order], dtype=bool)
        if len(self._paths) == 0:
            raise ValueError(f"no images found under {self.root} (looked recursively for "
                             f"{', '.join(IMAGE_EXTENSIONS)}, any case); {LAYOUTS}")

    def load(self, i: int) -> Record | None:
        i = check_index(i, len(self))
        rel = self._paths[i]
        path = os.path.join(self.root, rel)
        image = decode_image(path, rel)
        if image is None:
            return None
        text = _read_text(os.path.splitext(path)[0] + ".txt") if self._has_text[i] else None
        return Record(image=image, text=text, key=rel)


# ----------------------------------------------------------------------------- CSV / TSV


def _pick_column(found: Sequence[str], wanted: str | None, defaults: Sequence[str]) -> str | None:
    """The column named ``wanted`` (or the first of ``defaults``); exact match first, then any case."""
    candidates = [wanted] if wanted else list(defaults)
    for name in candidates:
        if name in found:
            return name
    lowered = {c.lower(): c for c in found}
    for name in candidates:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def column_index(header: Sequence[str], wanted: str | None, defaults: Sequence[str], *, what: str,
                 path: str | os.PathLike, layout: str) -> int:
    """Index in ``header`` of the column ``wanted`` (or the first of ``defaults`` present; cells stripped, any
    case); a ValueError naming ``path``, the ``what`` column, the names looked for and the columns found, then
    ``layout``, when there is none."""
    stripped = [h.strip() for h in header]
    name = _pick_column(stripped, wanted, defaults)
    if name is None:
        looked = ", ".join([wanted] if wanted else defaults)
        raise ValueError(f"{path} has no {what} column (looked for {looked}; columns: {', '.join(header)}); {layout}")
    return stripped.index(name)


class TableSource(_PathSource):
    """Rows of a CSV/TSV file: an image path per row and an optional caption."""

    kind = "table"

    def __init__(self, path: str | os.PathLike, *, image_column: str | None = None,
                 caption_column: str | None = None):
        self.path = Path(path)
        self.spec = str(path)
        delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
        base = self.path.parent
        paths: list[str] = []
        texts: list[str] = []
        skipped = 0
        self.empty_caption_rows: list[int] = []  # table rows (1 = the header) whose caption cell is blank
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{self.path} is empty: expected a header row with an image-path column "
                                 f"({', '.join(TABLE_IMAGE_COLUMNS)})")
            header = [h.strip() for h in header]
            img_col = _pick_column(header, image_column, TABLE_IMAGE_COLUMNS)
            if img_col is None:
                accepted = repr(image_column) if image_column else ", ".join(TABLE_IMAGE_COLUMNS)
                hint = ""
                if any(h.lower() == "url" for h in header):
                    hint = ("; a 'url' column is not downloaded here: fetch the images first (img2dataset "
                            "writes webdataset shards this loader reads)")
                raise ValueError(f"{self.path}: no image column; columns found: {header}; "
                                 f"accepted: {accepted}{hint}")
            cap_col = _pick_column(header, caption_column, TABLE_CAPTION_COLUMNS)
            if caption_column and cap_col is None:
                raise ValueError(f"{self.path}: no caption column {caption_column!r}; columns found: {header}; "
                                 f"accepted: {caption_column!r} (or leave it unset to try "
                                 f"{', '.join(TABLE_CAPTION_COLUMNS)})")
            ii = header.index(img_col)
            ci = header.index(cap_col) if cap_col is not None else None
            for row in reader:
                value = row[ii].strip() if ii < len(row) else ""
                if not value:
                    skipped += 1
                    continue
                if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
                    raise ValueError(f"{self.path}: column {img_col!r} holds URLs ({value[:80]!r}); only local "
                                     "paths are read: download the images first (img2dataset writes webdataset "
                                     "shards this loader reads)")
                paths.append(value if os.path.isabs(value) else os.path.join(base, value))
                if ci is not None:
                    texts.append(row[ci] if ci < len(row) else "")
                    if not texts[-1].strip():
                        self.empty_caption_rows.append(reader.line_num)
        self.image_column, self.caption_column = img_col, cap_col
        self.n_skipped = skipped
        self._paths = Strings(paths)
        self._texts = Strings(texts) if ci is not None else None
        if not paths:
            raise ValueError(f"{self.path}: no rows with an image path in column {img_col!r}")

    def caption(self, i: int) -> str | None:
        """The caption cell of row ``i`` (``None`` without a caption column); the image is not read."""
        i = check_index(i, len(self))
        return self._texts[i] if self._texts is not None else None

    def load(self, i: int) -> Record | None:
        i = check_index(i, len(self))
        path = self._paths[i]
        image = decode_image(path)
        if image is None:
            return None
        text = self._texts[i] if self._texts is not None else None
        return Record(image=image, text=text, key=path)
