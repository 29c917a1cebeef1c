"""Sound clips: a WAV reader and writer (standard library + numpy), and the two environmental-sound layouts.

- **ESC-50**: ``DIR/audio/<filename>.wav`` and ``DIR/meta/esc50.csv`` with columns ``filename, fold, target,
  category`` (others, e.g. ``esc10``, ``src_file``, ``take``, are ignored).
- **UrbanSound8K**: ``DIR/audio/fold<N>/<slice_file_name>`` and ``DIR/metadata/UrbanSound8K.csv`` with columns
  ``slice_file_name, fold, classID, class``.

Either meta file may carry two more columns, which the shapes world writes: ``caption`` (the clip's text
for training instead of its category) and ``image`` (a picture of the same scene, relative to ``DIR``), so
that an audio head can be trained on audio-image and audio-text pairs. A category's text is its name with
``_`` read as a space, as AudioCLIP does. A malformed meta file is refused with the row that is wrong.

:class:`AudioSource` is the training view (``len``, ``key``, ``load`` -> :class:`AudioRecord` or None for an
unreadable clip, as the image sources); :func:`read_audio_set` opens a layout.
"""

from __future__ import annotations

import csv
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from un2clip.data.sources import Source, check_index, decode_image

ESC50_META = Path("meta") / "esc50.csv"
US8K_META = Path("metadata") / "UrbanSound8K.csv"
LAYOUTS = ("an ESC-50 folder (audio/*.wav, meta/esc50.csv) or an UrbanSound8K folder (audio/foldN/*.wav, "
           "metadata/UrbanSound8K.csv)")

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


# ----------------------------------------------------------------------------- WAV files


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples (channels, frames) float32 in [-1, 1], sample rate) of a RIFF WAVE file: 8/16/24/32-bit PCM or
    32/64-bit float, WAVE_FORMAT_EXTENSIBLE included. Raises ValueError naming the file when it is not one."""
    data = Path(path).read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF WAVE file")
    fmt, samples, pos = None, None, 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if chunk == b"fmt ":
            if len(body) < 16:
                raise ValueError(f"{path}: fmt chunk of {len(body)} bytes, fewer than 16")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the format code
            fmt = (tag, channels, rate, bits)
        elif chunk == b"data":
            samples = body
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    if fmt is None or samples is None:
        raise ValueError(f"{path}: no {'fmt' if fmt is None else 'data'} chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1:
        raise ValueError(f"{path}: {channels} channels at {rate} Hz")
    width = bits // 8
    samples = samples[:len(samples) // (width * channels) * width * channels]
    if tag == _PCM and bits == 8:
        x = (np.frombuffer(samples, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _PCM and bits in (16, 32):
        x = np.frombuffer(samples, f"<i{width}").astype(np.float32) / float(2 ** (bits - 1))
    elif tag == _PCM and bits == 24:
        b = np.frombuffer(samples, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif tag == _FLOAT and bits in (32, 64):
        x = np.frombuffer(samples, f"<f{width}").astype(np.float32)
    else:
        raise ValueError(f"{path}: unsupported WAV encoding (format {tag}, {bits} bits); PCM 8/16/24/32-bit "
                         "or float 32/64-bit are read")
    return np.ascontiguousarray(x.reshape(-1, channels).T), rate


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono (T,) or (channels, T) samples in [-1, 1] as 16-bit PCM WAV (values outside are clipped)."""
    x = np.atleast_2d(np.asarray(samples, dtype=np.float64))
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").T.tobytes()
    channels = x.shape[0]
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, _PCM, channels,
                         sample_rate, sample_rate * channels * 2, channels * 2, 16, b"data", len(pcm))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(header + pcm)


# ----------------------------------------------------------------------------- the layouts


@dataclass(frozen=True)
class Clip:
    """One row of a meta file: the clip's path, fold, class index, and its training text and image (if any)."""

    path: str
    fold: int
    target: int
    text: str
    image: str | None = None


@dataclass
class AudioSet:
    """An environmental-sound set: its clips, class names (by target index) and which layout it came in."""

    root: Path
    layout: str  # "esc50" | "us8k"
    clips: list[Clip]
    classnames: list[str]

    @property
    def folds(self) -> list[int]:
        return sorted({c.fold for c in self.clips})


def _columns(header: list[str], wanted: tuple[str, ...], meta: Path) -> dict[str, int]:
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{meta}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
    return {c: header.index(c) for c in header}


def _read_meta(meta: Path, *, file_col: str, target_col: str, class_col: str,
               folder_of_fold: bool) -> tuple[list[Clip], list[str]]:
    root = meta.parent.parent
    with open(meta, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{meta}: empty file")
    header = [h.strip() for h in rows[0]]
    col = _columns(header, (file_col, "fold", target_col, class_col), meta)
    clips, names = [], {}
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{meta}: row {n} has {len(row)} fields, the header {len(header)}")
        cell = {name: row[i].strip() for name, i in col.items()}.__getitem__
        try:
            fold, target = int(cell("fold")), int(cell(target_col))
        except ValueError:
            raise ValueError(f"{meta}: row {n}: fold {cell('fold')!r} and {target_col} {cell(target_col)!r} must be "
                             "integers") from None
        if fold < 1 or target < 0:
            raise ValueError(f"{meta}: row {n}: fold must be >= 1 and {target_col} >= 0, got {fold} and {target}")
        name, file = cell(class_col), cell(file_col)
        if not name or not file:
            raise ValueError(f"{meta}: row {n}: empty {class_col if not name else file_col}")
        if names.setdefault(target, name) != name:
            raise ValueError(f"{meta}: row {n}: {target_col} {target} is {name!r} here but {names[target]!r} above")
        audio = root / "audio" / (f"fold{fold}" if folder_of_fold else "") / file
        caption = cell("caption") if "caption" in col else ""
        image = cell("image") if "image" in col else ""
        clips.append(Clip(str(audio), fold, target, caption or name.replace("_", " ").strip(),
                          str(root / image) if image else None))
    if not clips:
        raise ValueError(f"{meta}: no clips")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{meta}: {target_col} values must be 0..{len(names) - 1} without gaps, got "
                         f"{sorted(names)[:10]}")
    with_image = sum(c.image is not None for c in clips)
    if with_image not in (0, len(clips)):
        row = next(i for i, c in enumerate(clips) if c.image is None) + 2
        raise ValueError(f"{meta}: row {row}: no image, while {with_image} other rows have one (all or none)")
    return clips, [names[t].replace("_", " ").strip() for t in range(len(names))]


def read_audio_set(data: str | os.PathLike) -> AudioSet:
    """Open an ESC-50 or UrbanSound8K folder (the layout is recognised by its meta file)."""
    root = Path(data)
    if (root / ESC50_META).is_file():
        clips, names = _read_meta(root / ESC50_META, file_col="filename", target_col="target", class_col="category",
                                  folder_of_fold=False)
        return AudioSet(root, "esc50", clips, names)
    if (root / US8K_META).is_file():
        clips, names = _read_meta(root / US8K_META, file_col="slice_file_name", target_col="classID",
                                  class_col="class", folder_of_fold=True)
        return AudioSet(root, "us8k", clips, names)
    if not root.exists():
        raise FileNotFoundError(f"{root} not found; expected {LAYOUTS}")
    raise ValueError(f"{root} holds neither {ESC50_META} nor {US8K_META}; expected {LAYOUTS}")


# ----------------------------------------------------------------------------- training view


@dataclass
class AudioRecord:
    """One training example: mono samples at their own rate, the clip's text, its image if any, a stable key."""

    waveform: np.ndarray
    sample_rate: int
    text: str
    image: Image.Image | None
    key: str


class AudioSource(Source):
    """The clips of an :class:`AudioSet` as a training source (``load`` is None for an unreadable clip or image)."""

    def __init__(self, data: str | os.PathLike):
        self.set = read_audio_set(data)
        self.kind, self.spec = self.set.layout, os.fspath(data)
        self.has_images = self.set.clips[0].image is not None

    def __len__(self) -> int:
        return len(self.set.clips)

    def key(self, i: int) -> str:
        return self.set.clips[check_index(i, len(self))].path

    def load(self, i: int) -> AudioRecord | None:
        clip = self.set.clips[check_index(i, len(self))]
        try:
            samples, rate = read_wav(clip.path)
        except (OSError, ValueError, struct.error):
            return None
        if samples.shape[1] == 0:
            return None
        image = None
        if clip.image is not None:
            image = decode_image(clip.image)
            if image is None:
                return None
        return AudioRecord(samples.mean(axis=0), rate, clip.text, image, clip.path)
