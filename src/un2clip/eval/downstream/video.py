"""Video evaluations of a frozen CLIP image encoder: text-video retrieval and zero-shot action recognition.

A video is seen as a few frames, each encoded by the image tower, pooled without parameters:

- ``video-retrieval``: CLIP4Clip's parameter-free variant (Luo et al. 2021, ``sim_header meanP``). As
  CLIP4Clip reads a video file (``feature_framerate 1``), one frame a second is taken first (frames 0, fps,
  2 fps, ... with fps truncated to an integer; ``extract_fps`` sets the rate, 0 takes every frame, and a
  file whose frame rate PyAV cannot tell gives every frame); twelve of those are then picked uniformly
  (CLIP4Clip's MSR-VTT setting, ``slice_framepos 2``: evenly spaced indices from the first to the last,
  every one when there are fewer). A frame folder is taken to hold frames already extracted at that rate
  (CLIP4Clip's own preprocessing): its frames are sampled uniformly as they are. Each frame embedding
  L2-normalised, averaged over the video, L2-normalised again; cosine with each caption, a caption cut at
  32 tokens with its start and end tokens (CLIP4Clip's ``max_words``). Recall@1/5/10, median and mean rank,
  text->video and video->text. With several captions per video (MSR-VTT's 20 per video), video->text is
  CLIP4Clip's: each video ranks its own best caption among the V videos' best captions
  (``tensor_video_to_text_sim``); ``video_to_text="captions"`` ranks it among all T captions instead, as
  image retrieval does (keys ``video_to_caption_*``). Ties count against the query
  (:mod:`un2clip.eval.core.metrics`).
- ``video-zeroshot``: ActionCLIP's zero-shot recognition with its ``meanP`` fusion (Wang et al. 2021). Eight
  frames, the middle frame of eight equal segments (ActionCLIP's test sampling); the frame embeddings
  averaged, then L2-normalised; classes embedded from ActionCLIP's 16 prompt templates, ensembled as image
  zero-shot classification ensembles them (normalised mean of normalised template embeddings; ActionCLIP
  averages the per-template softmax instead); acc1, acc5, mean per-class recall.

Neither pooling sees frame order: what a video's frames show, not the order they come in, is scored.

Layouts (a video is a video file, decoded with PyAV — ``pip install 'un2clip[video]'`` — or a folder of its
frames, read in natural order: ``2.png`` before ``10.png``, zero-padded names in plain order):

- retrieval (MSR-VTT style): ``DIR/captions.csv`` + ``DIR/videos/``, or ``--data FILE.csv --videos DIR``;
  a video-id column and a caption column, several rows per video allowed; an id names ``VIDEOS/<id>``
  (a frame folder, or a file with its extension) or ``VIDEOS/<id>.<ext>``.
- actions (Kinetics / UCF101 style): ``DIR/[<split>/]<class>/<video file or frame folder>``, optional
  ``DIR/classnames.txt`` (one name a line, sorted folder order) and ``DIR/templates.txt``.

A video that does not decode, or a frame folder without frames, is an error naming the file unless
``skip_bad`` (then it is skipped and counted, with a retrieval video's captions); a caption naming a video
that is not there is always an error naming the table row.
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from un2clip.data.sources import IMAGE_EXTENSIONS, column_index, decode_image, is_image_name
from un2clip.eval.core.embed import embed_texts, inference_context
from un2clip.eval.core.metrics import video_retrieval_metrics, zeroshot_metrics
from un2clip.eval.downstream.common import report_skipped
from un2clip.eval.encoder.zeroshot import read_lines, zeroshot_classifier, zeroshot_logits

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                    ".ogv")
INSTALL = "pip install 'un2clip[video]' (or: pip install av)"
RETRIEVAL_FRAMES = 12  # CLIP4Clip's max_frames on MSR-VTT
EXTRACT_FPS = 1  # CLIP4Clip's feature_framerate: frames taken a second before the uniform pick
CAPTION_TOKENS = 32  # CLIP4Clip's max_words: start token, 30 tokens, end token
VIDEO_TO_TEXT = ("clip4clip", "captions")
ACTION_FRAMES = 8  # ActionCLIP's 8-frame models (num_segments 8)
SAMPLINGS = ("uniform", "segments")
# ActionCLIP's text prompts (utils/Text_Prompt.py), {} where the action name goes
ACTION_TEMPLATES = (
    "a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action", "{} this is an action",
    "{}, a video of action", "Playing action of {}", "{}", "Playing a kind of action, {}",
    "Doing a kind of action, {}", "Look, the human is {}", "Can you recognize the action of {}?",
    "Video classification of {}", "A video of {}", "The man is {}", "The woman is {}",
)
VIDEO_COLUMNS = ("video_id", "video", "vid", "id", "video_path", "path")
CAPTION_COLUMNS = ("sentence", "caption", "text", "title")
RETRIEVAL_LAYOUT = ("expected DIR/captions.csv + DIR/videos/, or --data FILE.csv (or .tsv) --videos DIR: a video-id "
                    "column (video_id, video, vid, id, video_path or path) and a caption column (sentence, caption, "
                    "text or title), one row per caption; an id names VIDEOS/<id> (a folder of frames or a video "
                    "file) or VIDEOS/<id>.<ext>")
ACTION_LAYOUT = ("expected DIR/[<split>/]<class>/<video file or frame folder> (Kinetics / UCF101 style), optional "
                 "DIR/classnames.txt (one name a line, sorted folder order) and DIR/templates.txt")


class BadVideo(ValueError):
    """A video file that does not decode, or a frame folder with no readable frames."""


# -- pure: frame sampling and pooling ----------------------------------------------------------------------


def sample_frame_indices(n: int, k: int, mode: str = "uniform") -> list[int]:
    """Indices of the ``k`` frames of an ``n``-frame video that are encoded.

    ``uniform`` (CLIP4Clip): ``k`` evenly spaced indices from 0 to n - 1, truncated (``numpy.linspace(...,
    dtype=int)``); every frame when n <= k. ``segments`` (ActionCLIP / TSN test sampling): the middle frame
    of each of ``k`` equal segments; when n <= k, frame ``i * n // k`` for i < k (frames repeat).
    """
    if n < 1 or k < 1:
        raise ValueError(f"need at least one frame and one frame to take, got n={n}, k={k}")
    if mode == "uniform":
        if n <= k:
            return list(range(n))
        return np.linspace(0, n - 1, num=k, dtype=int).tolist()
    if mode == "segments":
        if n <= k:
            return [i * n // k for i in range(k)]
        offset = (n / k - 1) / 2
        return [int(i * n / k + offset) for i in range(k)]
    raise ValueError(f"unknown frame sampling {mode!r}; known: {', '.join(SAMPLINGS)}")


def fps_frame_indices(n: int, fps: float, rate: int = EXTRACT_FPS) -> list[int]:
    """Indices of the frames CLIP4Clip's ``RawVideoExtractorCV2`` reads from an ``n``-frame video at ``fps``:
    ``rate`` frames a second (offsets 0, fps // rate, ... within each second, fps truncated to an integer),
    second by second while frames last. ``rate`` 0: every frame."""
    if n < 1:
        raise ValueError(f"need at least one frame, got n={n}")
    if rate < 0:
        raise ValueError(f"frames a second must be >= 0, got {rate}")
    step = max(1, int(fps))
    if rate == 0 or rate >= step:
        return list(range(n))
    offsets = list(range(0, step, max(1, step // rate)))[:rate]
    seconds = (n + step - 1) // step
    return [sec * step + o for sec in range(seconds + 1) for o in offsets if sec * step + o < n]


def pool_frames(frame_embeds: torch.Tensor, mask: torch.Tensor | None = None, *,
                normalize_frames: bool = True) -> torch.Tensor:
    """(V, T, D) frame embeddings, (V, T) bool mask of real frames -> (V, D) unit video embeddings.

    ``normalize_frames``: each frame L2-normalised before the masked mean (CLIP4Clip's meanP); without it the
    raw frames are averaged (ActionCLIP's meanP). The mean is L2-normalised either way.
    """
    x = frame_embeds.float()
    if normalize_frames:
        x = F.normalize(x, dim=-1)
    w = torch.ones(x.shape[:2]) if mask is None else mask.float()  # (V, T)
    w = w.to(x.device)
    pooled = (x * w.unsqueeze(-1)).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp(min=1.0)  # (V, D)
    return F.normalize(pooled, dim=-1)


def natural_key(name: str) -> list:
    """Sort key reading digit runs as numbers: ``frame2.png`` before ``frame10.png``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


# -- reading videos ---------------------------------------------------------------------------------------


def has_av() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _require_av(path: Path):
    try:
        import av
    except ImportError:
        raise ImportError(f"{path} is a video file: decoding it needs PyAV: {INSTALL}; or give a folder of its "
                          "frames instead (one folder of images per video)") from None
    return av


def frame_files(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, in natural order."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and is_image_name(p.name)]
    return sorted(files, key=lambda p: natural_key(p.name))


def _decoded_frames(av, path: Path, wanted: set[int]) -> tuple[dict[int, Image.Image], int]:
    """Frames at the ``wanted`` indices of the first video stream (RGB) and the count of frames decoded."""
    got: dict[int, Image.Image] = {}
    last = max(wanted) if wanted else -1
    n = 0
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise BadVideo(f"{path} holds no video stream")
        for n, frame in enumerate(container.decode(video=0), 1):
            if n - 1 in wanted:
                got[n - 1] = frame.to_image().convert("RGB")
            if n - 1 >= last >= 0:
                break
    return got, n


def _video_file_frames(path: Path, k: int, mode: str, extract_fps: int = 0) -> list[Image.Image]:
    av = _require_av(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadVideo(f"{path} holds no video stream")
            stream = container.streams.video[0]
            count = int(stream.frames or 0)  # 0 when the container does not say
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0  # 0: unknown, every frame is a candidate
        for _ in range(2):
            if count < 1:  # count by decoding every frame
                count = _decoded_frames(av, path, set())[1]
                if count < 1:
                    raise BadVideo(f"{path}: no frame decoded")
            candidates = fps_frame_indices(count, fps, extract_fps) if extract_fps and fps > 0 else list(range(count))
            indices = [candidates[i] for i in sample_frame_indices(len(candidates), k, mode)]
            got, _ = _decoded_frames(av, path, set(indices))
            if all(i in got for i in indices):
                return [got[i] for i in indices]
            count = 0  # the container announced more frames than it holds
        raise BadVideo(f"{path}: frames missing on decoding")
    except BadVideo:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError, RuntimeError) as err:
        raise BadVideo(f"{path} does not decode as a video ({type(err).__name__}: {err})") from None


def read_video_frames(path: str | Path, k: int, mode: str = "uniform", extract_fps: int = 0) -> list[Image.Image]:
    """The ``k`` sampled frames (RGB) of a video file or a frame folder; :class:`BadVideo` naming the path when
    it does not decode or holds no frames. ``extract_fps`` > 0: a video file whose frame rate is known is first
    thinned to that many frames a second (:func:`fps_frame_indices`); a frame folder is taken as already
    extracted at that rate."""
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise BadVideo(f"{path} is a frame folder without frames ({', '.join(IMAGE_EXTENSIONS)})")
        frames = []
        for i in sample_frame_indices(len(files), k, mode):
            image = decode_image(files[i])
            if image is None:
                raise BadVideo(f"{files[i]}: frame of {path} does not decode")
            frames.append(image)
        return frames
    if not path.is_file():
        raise FileNotFoundError(f"video {path} not found")
    return _video_file_frames(path, k, mode, extract_fps)


class VideoClips(torch.utils.data.Dataset):
    """Item i -> (model inputs (T, 3, S, S) or None, i, error message or None); picklable for workers."""

    def __init__(self, paths: Sequence[Path], frames: int, mode: str, transform, extract_fps: int = 0):
        self.paths, self.frames, self.mode, self.transform = list(paths), frames, mode, transform
        self.extract_fps = extract_fps

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            images = read_video_frames(self.paths[i], self.frames, self.mode, self.extract_fps)
        except BadVideo as err:
            return None, i, str(err)
        return torch.stack([self.transform(im) for im in images]), i, None


@dataclass
class EmbeddedVideos:
    embeds: torch.Tensor  # (V, D) float32, unit rows, on the CPU: the readable videos
    index: torch.Tensor  # (V,) their positions in the input list
    n_skipped: int
    skipped: list[str] = field(default_factory=list)  # why each skipped video was skipped


def embed_videos(model: ClipModel, paths: Sequence[Path], *, frames: int, sampling: str, normalize_frames: bool,
                 skip_bad: bool = False, batch_size: int = 16, num_workers: int = 0, precision: str = "auto",
                 progress: bool = True, desc: str = "videos", extract_fps: int = 0) -> EmbeddedVideos:
    """Pooled embeddings of the videos at ``paths`` (``batch_size`` videos a forward pass); skipped videos are
    named on the console (the first few and the count)."""
    if batch_size < 1 or frames < 1:
        raise ValueError(f"batch_size and frames must be >= 1, got {batch_size} and {frames}")
    loader = torch.utils.data.DataLoader(VideoClips(paths, frames, sampling, model.processing, extract_fps),
                                         batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    chunks, index, skipped, reasons = [], [], 0, []
    with inference_context(model.device, precision), tqdm(total=len(paths), desc=desc, unit="video",
                                                          disable=not progress, leave=False) as bar:
        for batch in loader:
            good = []
            for pixels, i, error in batch:
                if error is None:
                    good.append((pixels, i))
                elif skip_bad:
                    skipped += 1
                    reasons.append(error)
                else:
                    raise BadVideo(f"{error} (skip_bad / --skip-bad skips such videos and counts them)")
            bar.update(len(batch))
            if not good:
                continue
            emb = model.encode_image(torch.cat([p for p, _ in good]).to(model.device)).float().cpu()  # (sum T, D)
            counts = [p.shape[0] for p, _ in good]
            per_video = emb.split(counts)
            padded = torch.nn.utils.rnn.pad_sequence(list(per_video), batch_first=True)  # (B, T, D)
            mask = torch.arange(padded.shape[1]).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)  # (B, T)
            chunks.append(pool_frames(padded, mask, normalize_frames=normalize_frames))
            index += [i for _, i in good]
    if not chunks:
        raise ValueError(f"none of the {len(paths)} videos could be read")
    report_skipped("videos", reasons)
    return EmbeddedVideos(torch.cat(chunks), torch.tensor(index, dtype=torch.long), skipped, reasons)


def _check_decodable(paths: Sequence[Path]) -> None:
    """A video file among ``paths`` while PyAV is missing: the install hint, before any model loads."""
    if has_av():
        return
    first = next((p for p in paths if not p.is_dir()), None)
    if first is not None:
        _require_av(first)


# -- retrieval --------------------------------------------------------------------------------------------


@dataclass
class VideoCaptionSet:
    """Distinct videos (order of first appearance) with their captions."""

    ids: list[str]
    videos: list[Path]
    captions: list[list[str]]


def _video_index(folder: Path) -> dict[str, Path]:
    """Name -> path of every frame folder and video file in ``folder``, also by a video file's stem."""
    index: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or p.suffix.lower() in VIDEO_EXTENSIONS:
            index.setdefault(p.name, p)
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            index.setdefault(p.stem, p)
    return index


def _table_and_videos(data: str | Path, videos: str | Path | None) -> tuple[Path, Path]:
    data = Path(data)
    if data.is_dir():
        table = data / "captions.csv"
        if not table.is_file():
            raise FileNotFoundError(f"{table} not found; {RETRIEVAL_LAYOUT}")
        folder = Path(videos) if videos else data / "videos"
    elif data.is_file():
        if data.suffix.lower() not in (".csv", ".tsv"):
            raise ValueError(f"{data}: unknown caption table type {data.suffix!r}; {RETRIEVAL_LAYOUT}")
        table = data
        folder = Path(videos) if videos else (data.parent / "videos" if (data.parent / "videos").is_dir()
                                              else data.parent)
    else:
        raise FileNotFoundError(f"{data} not found; {RETRIEVAL_LAYOUT}")
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} not found; {RETRIEVAL_LAYOUT}")
    return table, folder


def read_video_captions(data: str | Path, *, videos: str | Path | None = None, video_column: str | None = None,
                        caption_column: str | None = None) -> VideoCaptionSet:
    """Open a caption table and find each row's video; an id without its video is an error naming the row."""
    table, folder = _table_and_videos(data, videos)
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    with open(table, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if len(rows) < 2:
        raise ValueError(f"{table} holds no caption rows; {RETRIEVAL_LAYOUT}")
    vid = column_index(rows[0], video_column, VIDEO_COLUMNS, what="video-id", path=table, layout=RETRIEVAL_LAYOUT)
    cap = column_index(rows[0], caption_column, CAPTION_COLUMNS, what="caption", path=table, layout=RETRIEVAL_LAYOUT)
    index = _video_index(folder)
    captions: dict[str, list[str]] = {}
    where: dict[str, Path] = {}
    for line, row in enumerate(rows[1:], 2):
        if len(row) <= max(vid, cap) or not row[vid].strip():
            continue
        key, text = row[vid].strip(), row[cap].strip()
        if key not in where:
            path = folder / key if (folder / key).exists() else index.get(key)
            if path is None:
                raise ValueError(f"{table}:{line}: video {key!r} is neither a frame folder nor a video file in "
                                 f"{folder}; {RETRIEVAL_LAYOUT}")
            where[key] = path
        captions.setdefault(key, []).append(text)
    if not captions:
        raise ValueError(f"{table} holds no video-caption rows; {RETRIEVAL_LAYOUT}")
    ids = list(captions)
    _check_decodable([where[k] for k in ids])
    return VideoCaptionSet(ids, [where[k] for k in ids], [captions[k] for k in ids])


def evaluate_retrieval(model: ClipModel, data: str | Path, *, videos: str | Path | None = None,
                       video_column: str | None = None, caption_column: str | None = None,
                       frames: int = RETRIEVAL_FRAMES, sampling: str = "uniform", normalize_frames: bool = True,
                       extract_fps: int = EXTRACT_FPS, caption_tokens: int = CAPTION_TOKENS,
                       video_to_text: str = "clip4clip", ks: Sequence[int] = (1, 5, 10), skip_bad: bool = False,
                       batch_size: int = 16, num_workers: int = 0, precision: str = "auto",
                       progress: bool = True) -> dict[str, float]:
    """text_to_video_recall@k, video_to_text_recall@k (``video_to_caption_*`` with ``video_to_text="captions"``),
    median and mean rank both ways, and the counts of videos, captions and skipped videos (a skipped video's
    captions are left out with it)."""
    if video_to_text not in VIDEO_TO_TEXT:
        raise ValueError(f"video_to_text must be one of {', '.join(VIDEO_TO_TEXT)}, got {video_to_text!r}")
    if caption_tokens < 3:
        raise ValueError(f"caption_tokens must be >= 3 (start, one word, end), got {caption_tokens}")
    model.eval()
    vset = read_video_captions(data, videos=videos, video_column=video_column, caption_column=caption_column)
    emb = embed_videos(model, vset.videos, frames=frames, sampling=sampling, normalize_frames=normalize_frames,
                       skip_bad=skip_bad, batch_size=batch_size, num_workers=num_workers, precision=precision,
                       progress=progress, desc="retrieval videos", extract_fps=extract_fps)
    kept = emb.index.tolist()
    captions = [c for v in kept for c in vset.captions[v]]
    caption_video = torch.tensor([row for row, v in enumerate(kept) for _ in vset.captions[v]], dtype=torch.long)
    with context_length(model, caption_tokens):
        texts = embed_texts(model, captions, batch_size=max(batch_size, 64), precision=precision, progress=progress,
                            desc="retrieval captions")
    scores = texts @ emb.embeds.T  # (T, V) cosine similarities
    metrics = video_retrieval_metrics(scores, caption_video, ks, video_to_text=video_to_text)
    metrics.update(n_videos=len(kept), n_captions=len(captions), n_skipped_videos=emb.n_skipped)
    return metrics


@contextlib.contextmanager
def context_length(model: ClipModel, tokens: int):
    """Tokenise texts at most ``tokens`` long (start and end included) inside the block: CLIP4Clip's
    ``max_words``. With the causal text mask, cutting the context is cutting the caption."""
    meta = model.meta
    before = meta.context_length
    meta.context_length = min(before, tokens)
    try:
        yield
    finally:
        meta.context_length = before


# -- zero-shot action recognition -------------------------------------------------------------------------


@dataclass
class VideoClassSet:
    """Videos with class indices, the class names and the prompt templates."""

    videos: list[Path]
    labels: list[int]
    classnames: list[str]
    templates: list[str]


def _class_videos(folder: Path) -> list[Path]:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")
               and (p.is_dir() or p.suffix.lower() in VIDEO_EXTENSIONS)]
    return sorted(entries, key=lambda p: natural_key(p.name))


def read_video_classes(data: str | Path, *, split: str | None = None,
                       classnames: Sequence[str] | str | Path | None = None,
                       templates: Sequence[str] | str | Path | None = None) -> VideoClassSet:
    """Class folders of videos (files or frame folders); inside ``DIR/<split>`` when a split is given."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; {ACTION_LAYOUT}")
    where = root / split if split else root
    if not where.is_dir():
        raise FileNotFoundError(f"split folder {where} not found; {ACTION_LAYOUT}")
    folders = sorted(p for p in where.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = [(f, _class_videos(f)) for f in folders]
    if isinstance(classnames, (str, Path)):
        classnames = read_lines(classnames)
    elif classnames is None and (root / "classnames.txt").is_file():
        classnames = read_lines(root / "classnames.txt")
    if classnames is not None and len(classnames) != len(folders):
        raise ValueError(f"{len(classnames)} class names for {len(folders)} class folders in {where}; "
                         f"{ACTION_LAYOUT}")
    names = list(classnames) if classnames is not None else [f.name.replace("_", " ") for f in folders]
    videos, labels, kept_names = [], [], []
    for (_, vids), name in zip(found, names):
        if vids:
            kept_names.append(name)
            videos += vids
            labels += [len(kept_names) - 1] * len(vids)
    if len(kept_names) < 2:
        raise ValueError(f"{where} has {len(kept_names)} class folders with videos: zero-shot recognition needs "
                         f"two or more; {ACTION_LAYOUT}")
    if isinstance(templates, (str, Path)):
        templates = read_lines(templates)
    elif templates is None:
        templates = read_lines(root / "templates.txt") if (root / "templates.txt").is_file() else ACTION_TEMPLATES
    _check_decodable(videos)
    return VideoClassSet(videos, labels, kept_names, list(templates))


def evaluate_zeroshot(model: ClipModel, data: str | Path, *, split: str | None = None,
                      classnames: Sequence[str] | str | Path | None = None,
                      templates: Sequence[str] | str | Path | None = None, frames: int = ACTION_FRAMES,
                      sampling: str = "segments", normalize_frames: bool = False, skip_bad: bool = False,
                      batch_size: int = 16, num_workers: int = 0, precision: str = "auto",
                      progress: bool = True) -> dict[str, float]:
    """acc1, acc5 (5 classes or more), mean per-class recall, and the counts of videos, classes, templates and
    skipped videos."""
    model.eval()
    ds = read_video_classes(data, split=split, classnames=classnames, templates=templates)
    classifier = zeroshot_classifier(model, ds.classnames, ds.templates, precision=precision, progress=progress)
    emb = embed_videos(model, ds.videos, frames=frames, sampling=sampling, normalize_frames=normalize_frames,
                       skip_bad=skip_bad, batch_size=batch_size, num_workers=num_workers, precision=precision,
                       progress=progress, desc="action videos")
    targets = torch.tensor([ds.labels[i] for i in emb.index.tolist()], dtype=torch.long)
    metrics = zeroshot_metrics(zeroshot_logits(emb.embeds, classifier), targets)
    metrics.update(n_videos=len(targets), n_classes=len(ds.classnames), n_templates=len(ds.templates),
                   n_skipped_videos=emb.n_skipped)
    return metrics
