"""Webdataset tar shards (as img2dataset writes them) read by random access, without the webdataset package.

The tars are indexed once when opened (member offsets per sample, cached on disk for large shards), so
every sample is one seek and one read; only uncompressed tars can be read this way.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from un2clip.data.sources import LAYOUTS, Record, Source, Strings, check_index, decode_image
from un2clip.errors import first_few
from un2clip.files import atomic_path

log = logging.getLogger(__name__)

TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TAR_CAPTION_EXTENSION = "txt"


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{000..012}`` ranges (zero padding kept), left to right, nested ok."""
    depth, start = 0, -1
    for pos, ch in enumerate(pattern):
        if ch == "{":
            if depth == 0:
                start = pos
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                head, body, tail = pattern[:start], pattern[start + 1:pos], pattern[pos + 1:]
                return [head + a + b for a in _brace_alternatives(body) for b in expand_braces(tail)]
    return [pattern]


def _brace_alternatives(body: str) -> list[str]:
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if m:
        a, b = m.group(1), m.group(2)
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        padded = (len(a) > 1 and a.lstrip("-").startswith("0")) or (len(b) > 1 and b.lstrip("-").startswith("0"))
        width = max(len(a), len(b)) if padded else 0
        return [str(v).zfill(width) for v in range(lo, hi + step, step)]
    parts, depth, cur = [], 0, ""
    for ch in body:  # split on top-level commas only
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    if len(parts) == 1:  # "{x}" is not a brace expression in shells either
        return ["{" + body + "}"]
    return [s for p in parts for s in expand_braces(p)]


def _split_tar_name(name: str) -> tuple[str, str]:
    """webdataset's grouping: key = folder + basename up to its first dot; extension = the rest, lower case."""
    folder, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (folder + "/" + stem if folder else stem), (ext.lower() if dot else "")


class _NotPlainTar(Exception):
    """The lean header scanner met something it leaves to ``tarfile``."""


_ZERO_BLOCK = bytes(512)


def _tar_number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return -((1 << (8 * len(field) - 8)) - value) if field[:1] == b"\xff" else value
    digits = field.replace(b"\0", b" ").strip()
    return int(digits, 8) if digits else 0


def _pax_records(data: bytes) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        if length <= 0:
            break
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _scan_tar(path: str, size_on_disk: int) -> tuple[list[tuple[str, int, int]], str | None]:
    """Regular members ``(name, data offset, size)`` of an uncompressed tar, reading headers only.

    Handles ustar, GNU long names and pax headers (Python's tarfile writes one per member
    whenever mtime is a float, as webdataset writers do). Returns the members read and a
    message if the archive ended early or is damaged. Raises ``_NotPlainTar`` for
    anything else (sparse files, a first header that does not check), to let ``tarfile``
    decide.
    """
    members: list[tuple[str, int, int]] = []
    pending: dict[str, str] = {}
    long_name: str | None = None
    pos = 0
    last = ("the start", 0, 0)  # (what, data offset, data size) of the last entry read
    with open(path, "rb", buffering=0) as f:
        def read(n: int, at: int) -> bytes:
            f.seek(at)
            return f.read(n)

        while True:
            if pos > size_on_disk:  # the last entry's data or padding runs past the end of the file
                name, data_at, size = last
                if data_at + size > size_on_disk:
                    return members, (f"truncated at byte {size_on_disk}, the end of the file, inside the data of "
                                     f"{name} (bytes {data_at} to {data_at + size})")
                return members, f"ends at byte {size_on_disk} after {name}, without an end-of-archive marker"
            if pos + 512 > size_on_disk:
                return members, (None if pos == size_on_disk and members else
                                 f"ends without an end-of-archive marker at byte {pos}")
            header = read(512, pos)
            if header == _ZERO_BLOCK:
                return members, None
            try:
                checksum = _tar_number(header[148:156])
                size = _tar_number(header[124:136])
            except ValueError:
                checksum, size = -1, -1
            unsigned = sum(header) - sum(header[148:156]) + 8 * 32
            if checksum != unsigned and checksum != unsigned - 256 * sum(  # signed sums of old tars
                    b > 127 for b in header[:148] + header[156:]):
                checksum = -1
            if checksum < 0 or size < 0:
                if pos == 0:
                    raise _NotPlainTar("first header does not check")
                return members, f"damaged header at byte {pos}"
            kind = header[156:157]
            data_at = pos + 512
            last = (f"the {kind.decode('latin-1')!r} header at byte {pos}", data_at, size)
            if kind == b"x":
                pending.update(_pax_records(read(size, data_at)))
            elif kind == b"g":
                pass
            elif kind == b"L":
                long_name = read(size, data_at).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"S":
                raise _NotPlainTar("sparse member")
            else:
                if kind in (b"0", b"\0", b"7"):
                    if pending.get("size", "").isdigit():
                        size = int(pending["size"])
                    name = pending.get("path") or long_name
                    if name is None:
                        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                        if header[257:262] == b"ustar":
                            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                            if prefix:
                                name = prefix + "/" + name
                    members.append((name, data_at, size))
                    last = (f"member {name!r}", data_at, size)
                elif pending.get("size", "").isdigit():
                    size = int(pending["size"])
                pending, long_name = {}, None
            pos = data_at + (size + 511) // 512 * 512


def _scan_tar_with_tarfile(path: str) -> tuple[list[tuple[str, int, int]], str | None]:
    members: list[tuple[str, int, int]] = []
    problem = None
    with tarfile.open(path, mode="r:") as tf:
        while True:
            try:
                member = tf.next()
            except (tarfile.TarError, OSError, EOFError) as err:
                problem = str(err)
                break
            if member is None:
                break
            if member.isfile():
                members.append((member.name, member.offset_data, member.size))
    return members, problem


#: shards with at least this many members get their header index cached on disk
INDEX_CACHE_MIN_MEMBERS = 1024
_INDEX_CACHE_VERSION = 2  # 2: damage messages give offsets inside the file


def index_cache_dir() -> Path | None:
    """Where shard indexes are cached: ``$UN2CLIP_CACHE_DIR/tar-index`` (``0``/``off`` disables) or
    ``$XDG_CACHE_HOME/un2clip/tar-index`` (default ``~/.cache/un2clip/tar-index``)."""
    env = os.environ.get("UN2CLIP_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none", "false") else Path(env) / "tar-index"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "un2clip" / "tar-index"


def _cache_file(path: str, stat: os.stat_result) -> Path | None:
    folder = index_cache_dir()
    if folder is None:
        return None
    ident = f"{_INDEX_CACHE_VERSION}|{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()
    return folder / f"{digest}.npz"


def _load_cached_index(file: Path | None) -> tuple[list[tuple[str, int, int]], str | None] | None:
    if file is None or not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            names = z["names"].tobytes().decode("utf-8", "surrogateescape").split("\0")
            offsets, sizes = z["offsets"].tolist(), z["sizes"].tolist()
            problem = z["problem"].tobytes().decode("utf-8") or None
        if names == [""] and not offsets:
            names = []
        if len(names) != len(offsets):
            return None
        return list(zip(names, offsets, sizes)), problem
    except Exception:  # a damaged cache file is rebuilt
        return None


def _save_cached_index(file: Path | None, members: list[tuple[str, int, int]], problem: str | None) -> None:
    if file is None:
        return
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        names = "\0".join(m[0] for m in members).encode("utf-8", "surrogateescape")
        with atomic_path(file) as tmp:  # keeps the .npz suffix, so numpy adds none
            np.savez(tmp, names=np.frombuffer(names, np.uint8), offsets=np.asarray([m[1] for m in members], np.int64),
                     sizes=np.asarray([m[2] for m in members], np.int64),
                     problem=np.frombuffer((problem or "").encode("utf-8"), np.uint8))
    except OSError as err:  # a read-only home is fine: the index is rebuilt next time
        log.debug("cannot cache the index of a shard in %s (%s)", file, err)


def _scan_shard(path: str) -> tuple[list[tuple[str, int, int]], str | None, int]:
    """All regular members of a shard, from the on-disk cache when it is fresh."""
    stat = os.stat(path)
    cache = _cache_file(path, stat)
    cached = _load_cached_index(cache)
    if cached is not None:
        return cached[0], cached[1], stat.st_size
    try:
        members, problem = _scan_tar(path, stat.st_size)
    except _NotPlainTar:
        members, problem = _scan_tar_with_tarfile(path)
    if len(members) >= INDEX_CACHE_MIN_MEMBERS:
        _save_cached_index(cache, members, problem)
    return members, problem, stat.st_size


def _index_shard(path: str, image_exts: Sequence[str], text_ext: str) -> tuple[list, int]:
    """Scan one tar's headers -> ([(key, img_off, img_size, txt_off, txt_size)], n_without_image)."""
    try:
        members, problem, size_on_disk = _scan_shard(path)
    except (tarfile.TarError, OSError, ValueError) as err:
        log.warning("cannot read shard %s (%s); skipping it", path, err)
        return [], 0
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    cut: set[str] = set()  # samples with a member whose data the file does not hold (a truncated shard)
    for name, offset, size in members:
        name = name[2:] if name.startswith("./") else name
        if os.path.basename(name).startswith((".", "__")):
            continue
        key, ext = _split_tar_name(name)
        if offset + size > size_on_disk:  # truncated shard: the data is not there
            cut.add(key)
            continue
        groups.setdefault(key, {})[ext] = (offset, size)
    rows, no_image = [], 0
    for key, found in groups.items():
        img = next((found[e] for e in image_exts if e in found), None)
        if img is None:
            no_image += 1
            continue
        txt = found.get(text_ext, (0, -1))
        rows.append((key, img[0], img[1], txt[0], txt[1]))
    used = {row[0] for row in rows}
    # a sample cut short is left out when its image is gone (its caption alone does not make a sample)
    lost_note = (f"; {sum(key not in used for key in cut)} sample(s) lost their image data and are left out "
                 "(counted as skipped)") if cut else ""
    if problem:
        whole = sum(1 for _, offset, size in members if offset + size <= size_on_disk)
        log.warning("shard %s is damaged (%s); using the %d whole member(s) before it%s", path, problem, whole,
                    lost_note)
    elif cut:
        log.warning("shard %s is cut short%s; the rest of the shard is used", path, lost_note)
    lost = [key for key in cut if key not in groups]  # the others are in no_image already
    return rows, no_image + len(lost)


def shard_paths(spec: str) -> list[str] | None:
    """The tar files named by ``spec``, or ``None`` if ``spec`` is not a shard spec."""
    parts = [p for p in spec.split("::") if p]
    patterned = len(parts) > 1 or any(("{" in p or "*" in p or "?" in p) for p in parts)
    if not patterned:
        return _shard_paths_literal(Path(spec).expanduser())
    if Path(spec).expanduser().exists():  # a real path that happens to contain braces or stars
        return _shard_paths_literal(Path(spec).expanduser())
    paths: list[str] = []
    missing: list[str] = []
    for part in parts:
        for expanded in expand_braces(os.path.expanduser(part)):
            if any(c in expanded for c in "*?["):
                found = sorted(glob.glob(expanded))
                if not found:
                    missing.append(expanded)
                paths.extend(found)
            elif os.path.isfile(expanded):
                paths.append(expanded)
            else:
                missing.append(expanded)
    if missing:
        raise FileNotFoundError(f"shard pattern {spec!r}: {len(missing)} shard(s) not found: "
                                f"{first_few(missing)} (pass the folder instead to use the shards "
                                f"that exist); {LAYOUTS}")
    not_tar = [p for p in paths if not p.lower().endswith(".tar")]
    if not_tar:
        raise ValueError(f"shard pattern {spec!r} matches files that are not .tar: {not_tar[:3]}; {LAYOUTS}")
    return paths


def _shard_paths_literal(path: Path) -> list[str] | None:
    if path.is_file() and path.suffix.lower() == ".tar":
        return [str(path)]
    if path.is_dir():
        tars = sorted(str(p) for p in path.iterdir()
                      if p.suffix.lower() == ".tar" and p.is_file() and not p.name.startswith("."))
        return tars or None
    return None


class WebDatasetSource(Source):
    """Samples of webdataset tar shards, indexed at open and read by random access.

    ``image_extensions``: member extensions tried in order for the image (default jpg,
    jpeg, png, webp); ``caption_extension``: member holding the caption (default txt).
    File handles are opened lazily and per process (keyed by pid), so data-loader
    workers that fork from the main process never share a file position.
    """

    kind = "webdataset"
    max_open_files = 64

    def __init__(self, shards: Sequence[str], *, spec: str | None = None,
                 image_extensions: Sequence[str] = TAR_IMAGE_EXTENSIONS,
                 caption_extension: str = TAR_CAPTION_EXTENSION, index_threads: int = 8):
        self.shards = [str(s) for s in shards]
        self.spec = spec if spec is not None else (self.shards[0] if len(self.shards) == 1 else f"{len(self.shards)} shards")
        self.image_extensions = tuple(e.lower().lstrip(".") for e in image_extensions)
        self.caption_extension = caption_extension.lower().lstrip(".")
        if not self.shards:
            raise ValueError(f"no .tar shards given; {LAYOUTS}")
        threads = max(1, min(index_threads, len(self.shards)))
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(lambda p: _index_shard(p, self.image_extensions, self.caption_extension),
                                    self.shards))
        keys: list[str] = []
        shard_ids, img_off, img_size, txt_off, txt_size = [], [], [], [], []
        for sid, (rows, no_image) in enumerate(results):
            self.n_skipped += no_image
            for key, io_, is_, to_, ts_ in rows:
                keys.append(key)
                shard_ids.append(sid)
                img_off.append(io_)
                img_size.append(is_)
                txt_off.append(to_)
                txt_size.append(ts_)
        self._keys = Strings(keys)
        self._shard = np.asarray(shard_ids, dtype=np.int32)
        self._img = np.stack([np.asarray(img_off, np.int64), np.asarray(img_size, np.int64)], 1) if keys else None
        self._txt = np.stack([np.asarray(txt_off, np.int64), np.asarray(txt_size, np.int64)], 1) if keys else None
        if not keys:
            raise ValueError(f"no samples with an image member ({', '.join(self.image_extensions)}) in "
                             f"{len(self.shards)} shard(s) of {self.spec!r}; {LAYOUTS}")
        self._pid = -1
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    # file handles: never carried across fork or pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        state["_pid"] = -1
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        pid = os.getpid()
        if pid != self._pid:  # forked (or first use): the parent's handles and lock are not ours
            self._handles = OrderedDict()
            self._lock = threading.Lock()
            self._pid = pid
        with self._lock:
            f = self._handles.get(shard)
            if f is None:
                f = open(self.shards[shard], "rb")  # kept open for later reads
                self._handles[shard] = f
                while len(self._handles) > self.max_open_files:
                    self._handles.popitem(last=False)[1].close()
            else:
                self._handles.move_to_end(shard)
            if hasattr(os, "pread"):
                return os.pread(f.fileno(), size, offset)
            f.seek(offset)
            return f.read(size)

    def close(self) -> None:
        """Close this process's open shard files (they reopen on the next load)."""
        if self._pid != os.getpid():
            return
        with self._lock:
            for f in self._handles.values():
                f.close()
            self._handles = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> str:
        return self._keys[check_index(i, len(self))]

    def load(self, i: int) -> Record | None:
        i = check_index(i, len(self))
        shard = int(self._shard[i])
        offset, size = (int(v) for v in self._img[i])
        try:
            data = self._read(shard, offset, size)
        except OSError:
            return None
        if len(data) != size:
            return None
        image = decode_image(data, f"{self.shards[shard]}:{self._keys[i]}")
        if image is None:
            return None
        text = None
        t_off, t_size = (int(v) for v in self._txt[i])
        if t_size >= 0:
            try:
                raw = self._read(shard, t_off, t_size)
                text = raw.decode("utf-8", "replace").strip()
            except OSError:
                text = None
        return Record(image=image, text=text, key=self._keys[i])
