"""Generic data plumbing: sources of images (with optional captions), the resumable loader, transforms,
the latent cache. :func:`open_source` recognises the layout of a data path (see :mod:`.sources`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from un2clip.data.latent_cache import LatentCacheSource, is_latent_cache
from un2clip.data.shards import WebDatasetSource, shard_paths
from un2clip.data.sources import LAYOUTS, ImageFolderSource, Source, TableSource


def open_source(spec: str | os.PathLike, *, image_column: str | None = None,
                caption_column: str | None = None, image_folder: str | os.PathLike | None = None) -> Source:
    """Open training data; the layout is recognised from ``spec`` (see the module docstring).

    ``image_column`` / ``caption_column`` name table columns for CSV/TSV files; for
    webdataset shards they name member extensions (``"jpg;png"``, ``"txt"``); image
    folders ignore them. A ``.json`` file is LLaVA's conversation format
    (:class:`~un2clip.data.conversations.ConversationSource`), its image paths relative to ``image_folder``
    (default: the file's folder). A folder in a grounding layout (RefCOCO's instances.json + refs, or Flickr30k
    Entities' Sentences/ + Annotations/) opens its train split as a
    :class:`~un2clip.data.grounding.GroundingSource`, images under ``image_folder``. Raises FileNotFoundError for a
    path that does not exist and
    ValueError for a source without images.
    """
    spec = os.fspath(spec)
    if not spec:
        raise FileNotFoundError(f"no data path given; {LAYOUTS}")
    shards = shard_paths(spec)
    if shards is not None:
        kwargs: dict[str, Any] = {}
        if image_column:
            kwargs["image_extensions"] = [e for e in re.split(r"[;,]", image_column) if e]
        if caption_column:
            kwargs["caption_extension"] = caption_column
        return WebDatasetSource(shards, spec=spec, **kwargs)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data path not found: {path}; {LAYOUTS}")
    if path.is_dir():
        if is_latent_cache(path):  # written by `un2clip cache-latents`
            return LatentCacheSource(path)
        from un2clip.data.grounding import GroundingSource, layout_of

        if layout_of(path):  # RefCOCO or Flickr30k Entities annotations: its train split, for train-grounding
            return GroundingSource(path, split="train", images=image_folder)
        return ImageFolderSource(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        from un2clip.data.conversations import ConversationSource

        return ConversationSource(path, image_folder=image_folder)
    if suffix in (".csv", ".tsv"):
        return TableSource(path, image_column=image_column, caption_column=caption_column)
    if suffix in (".gz", ".tgz", ".bz2", ".xz", ".zst") and ".tar" in path.name.lower():
        raise ValueError(f"{path} is a compressed tar, which cannot be read by random access; "
                         f"store shards uncompressed (img2dataset does by default); {LAYOUTS}")
    raise ValueError(f"cannot read {path} as training data (unknown file type {suffix or 'none'!r}); {LAYOUTS}")


__all__ = ["ImageFolderSource", "LatentCacheSource", "Source", "TableSource", "WebDatasetSource", "open_source"]
