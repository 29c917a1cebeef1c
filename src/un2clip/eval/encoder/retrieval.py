"""Zero-shot image-text retrieval with CLIP_benchmark's protocol: recall@k both ways.

Inputs (several captions per image allowed, as in the Flickr30k and COCO Karpathy splits):

- a CSV/TSV table with an image-path column (image, filepath, path, file or image_path)
  and a caption column (caption, text or title), one row per caption; rows naming the
  same image belong to one image. Relative paths resolve against the table's folder.
- a JSONL file (or a JSON list) of objects with ``image`` and ``caption`` (a string)
  or ``captions`` (a list of strings).
- CLIP_benchmark's retrieval webdataset: ``DIR/dataset_type.txt`` holding ``retrieval``,
  ``DIR/<split>/nshards.txt`` and tars with an image and a ``.txt`` of captions, one a line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from un2clip.data.sources import column_index
from un2clip.eval.core.embed import ImageList, PathImages, SourceImages, embed_images, embed_texts
from un2clip.eval.core.metrics import retrieval_metrics

if TYPE_CHECKING:
    from PIL import Image

    from un2clip.models.clip import ClipModel

IMAGE_COLUMNS = ("image", "filepath", "path", "file", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title")
LAYOUT = ("expected a CSV/TSV with an image-path column and a caption column (one row per caption), a JSONL file "
          "of {\"image\": ..., \"caption\" | \"captions\": ...} objects, or a CLIP_benchmark retrieval webdataset "
          "(DIR/dataset_type.txt = retrieval, DIR/<split>/nshards.txt, tars with image + .txt)")


@dataclass
class RetrievalSet:
    """Images with their captions: ``load(i) -> (image or None, list of captions)`` for i in range(n)."""

    load: Callable[[int], tuple[Image.Image | None, Any]]
    n: int
    layout: str  # "table" | "jsonl" | "webdataset"
    n_skipped_at_open: int = 0  # webdataset samples without an image member


def _grouped(pairs: list[tuple[str, str]], base: Path) -> tuple[list[str], list[list[str]]]:
    """(image, caption) rows -> images in order of first appearance and each one's captions."""
    captions: dict[str, list[str]] = {}
    for image, caption in pairs:
        captions.setdefault(image, []).append(caption)
    return [str(base / image) for image in captions], list(captions.values())


def _read_table(path: Path, image_column: str | None, caption_column: str | None) -> list[tuple[str, str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if not rows:
        raise ValueError(f"{path} is empty; {LAYOUT}")
    img = column_index(rows[0], image_column, IMAGE_COLUMNS, what="image-path", path=path, layout=LAYOUT)
    cap = column_index(rows[0], caption_column, CAPTION_COLUMNS, what="caption", path=path, layout=LAYOUT)
    return [(r[img].strip(), r[cap].strip()) for r in rows[1:] if len(r) > max(img, cap) and r[img].strip()]


def _read_json(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        if path.suffix.lower() == ".json":
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {LAYOUT}") from None
    pairs = []
    for k, rec in enumerate(records if isinstance(records, list) else []):
        caps = rec.get("captions", rec.get("caption")) if isinstance(rec, dict) else None
        if not isinstance(rec, dict) or "image" not in rec or caps is None:
            raise ValueError(f"{path} record {k + 1} lacks \"image\" or \"caption\"/\"captions\"; {LAYOUT}")
        pairs += [(str(rec["image"]), str(c)) for c in ([caps] if isinstance(caps, str) else caps)]
    return pairs


def captions_of(text: str | None) -> list[str]:
    """The captions of a webdataset ``.txt`` member, one per non-empty line; ``ValueError`` when absent."""
    caps = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not caps:
        raise ValueError("sample has no caption")
    return caps


def load_retrieval_set(data: str | Path, *, split: str = "test", image_column: str | None = None,
                       caption_column: str | None = None) -> RetrievalSet:
    """Open a caption table, a JSONL file or a CLIP_benchmark retrieval webdataset."""
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; {LAYOUT}")
    if path.is_dir():
        from un2clip.data.shards import WebDatasetSource
        from un2clip.eval.encoder.zeroshot import webdataset_shards

        kind = (path / "dataset_type.txt").read_text().strip().lower() if (path / "dataset_type.txt").is_file() else ""
        shards = webdataset_shards(path, split) if kind == "retrieval" else None
        if not shards:
            raise ValueError(f"{path} is a folder but not a retrieval webdataset; {LAYOUT}")
        source = WebDatasetSource(shards, spec=str(path), caption_extension="txt")
        return RetrievalSet(SourceImages(source, captions_of), len(source), "webdataset", source.n_skipped)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        pairs, layout = _read_table(path, image_column, caption_column), "table"
    elif suffix in (".jsonl", ".json"):
        pairs, layout = _read_json(path), "jsonl"
    else:
        raise ValueError(f"{path}: unknown file type {suffix!r}; {LAYOUT}")
    if not pairs:
        raise ValueError(f"{path} holds no image-caption rows; {LAYOUT}")
    images, captions = _grouped(pairs, path.parent)
    return RetrievalSet(PathImages(images, captions), len(images), layout)


def retrieval_scores(text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """(T, D) and (I, D) normalised embeddings -> (T, I) cosine similarities."""
    return text_embeds @ image_embeds.T


def evaluate(model: ClipModel, data: str | Path, *, split: str = "test", image_column: str | None = None,
             caption_column: str | None = None, ks: Sequence[int] = (1, 5, 10), batch_size: int = 64,
             num_workers: int = 0, precision: str = "auto", progress: bool = True) -> dict[str, float]:
    """text_to_image_recall@k and image_to_text_recall@k, with the counts of images, captions, skipped images.

    A caption whose image cannot be read is left out with its image.
    """
    model.eval()
    rset = load_retrieval_set(data, split=split, image_column=image_column, caption_column=caption_column)
    images = embed_images(model, ImageList(rset.load, rset.n, model.processing), batch_size=batch_size,
                          num_workers=num_workers, precision=precision, progress=progress, desc="retrieval images")
    captions = [c for caps in images.payloads for c in caps]
    caption_image = torch.tensor([row for row, caps in enumerate(images.payloads) for _ in caps], dtype=torch.long)
    texts = embed_texts(model, captions, batch_size=max(batch_size, 64), precision=precision, progress=progress,
                        desc="retrieval captions")
    metrics = retrieval_metrics(retrieval_scores(texts, images.embeds), caption_image, ks)
    metrics.update(n_images=images.embeds.shape[0], n_captions=len(captions),
                   n_skipped_images=images.n_skipped + rset.n_skipped_at_open)
    return metrics
