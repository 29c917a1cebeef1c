"""`un2clip curate`: stream a pool of image-text pairs through the curation rules, write the kept subset.

A pool is a CSV/TSV table (image path + caption) or webdataset tar shards (:func:`un2clip.data.open_source`).
It is processed shard by shard (a tar, or ``rows_per_shard`` rows of a table) in three passes, each
resumable: finished shards are recorded under ``OUT/.curate/`` and skipped when the command is run again
with the same settings.

1. **features** per pair: is the image readable, its size, the caption, the metadata entries it matches,
   the scoring model's image-text cosine (only the small numbers are kept, never the images);
2. **decide** (from the features alone): unreadable images and empty captions are dropped, then the ALIGN
   rules, then MetaCLIP's matching and balancing (counts over the pairs still in), then the score filter
   (top fraction or minimum score over the pairs still in);
3. **write** the kept pairs in the pool's format: the same tar names with every member of a kept sample
   copied byte for byte, or a table of the kept rows (paths relative to the new table), plus
   ``curate_summary.json``: counts in and out, drops per reason, rules tripped, per metadata entry
   matched and kept, the entry-count histogram before and after balancing, the score threshold.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from un2clip.curate.match import EntryMatcher
from un2clip.curate.rules import (
    AlignRules,
    align_tripped,
    balance_keep,
    balance_probabilities,
    count_histogram,
    normalize_caption,
    top_fraction,
)
from un2clip.files import atomic_path, atomic_write_text

WORK = ".curate"
SUMMARY = "curate_summary.json"


@dataclass
class CurateOptions:
    """What to apply; None switches a method off."""

    align: AlignRules | None = None
    metadata: list[str] | None = None
    balance_t: float | None = None
    score_model: str | None = None
    keep_fraction: float | None = None
    min_score: float | None = None
    seed: int = 0
    batch_size: int = 256
    rows_per_shard: int = 10000
    device: str | None = None
    image_column: str | None = None
    caption_column: str | None = None

    def check(self) -> CurateOptions:
        if self.align is None and self.metadata is None and self.score_model is None:
            raise ValueError("nothing to do: give --filters align, --metadata FILE and/or --score-model M")
        if self.balance_t is not None and self.metadata is None:
            raise ValueError("--balance-t balances metadata entries: give --metadata FILE too")
        if self.score_model is not None and (self.keep_fraction is None) == (self.min_score is None):
            raise ValueError("--score-model needs exactly one of --keep-fraction and --min-score")
        if self.score_model is None and (self.keep_fraction is not None or self.min_score is not None):
            raise ValueError("--keep-fraction / --min-score filter by a model's score: give --score-model M")
        if self.rows_per_shard < 1 or self.batch_size < 1:
            raise ValueError("rows_per_shard and batch_size must be >= 1")
        if self.keep_fraction is not None and not 0.0 <= self.keep_fraction <= 1.0:
            raise ValueError(f"--keep-fraction must be in [0, 1], got {self.keep_fraction}")
        return self

    def feature_key(self) -> str:
        """What the features depend on (a changed key recomputes them)."""
        meta = hashlib.sha1("\n".join(self.metadata or []).encode()).hexdigest()
        return json.dumps({"metadata": meta, "score_model": self.score_model, "rows_per_shard": self.rows_per_shard,
                           "image_column": self.image_column, "caption_column": self.caption_column})


# ----------------------------------------------------------------------------- the pool's shards


class _Shard:
    """One unit of work: a tar of a webdataset pool, or a range of rows of a table."""

    def __init__(self, index: int, name: str, source: Any, indices: np.ndarray, tar: str | None = None):
        self.index, self.name, self.source, self.indices, self.tar = index, name, source, indices, tar


def _shards(pool: str, opts: CurateOptions) -> tuple[str, list[_Shard], Any]:
    from un2clip.data import open_source
    from un2clip.data.shards import WebDatasetSource
    from un2clip.data.sources import TableSource

    source = open_source(pool, image_column=opts.image_column, caption_column=opts.caption_column)
    if isinstance(source, WebDatasetSource):
        shards = []
        for k, tar in enumerate(source.shards):
            try:
                one = WebDatasetSource([tar], spec=tar, image_extensions=source.image_extensions,
                                       caption_extension=source.caption_extension)
            except ValueError:  # a shard without a readable sample: nothing to keep from it
                one = None
            n = len(one) if one is not None else 0
            shards.append(_Shard(k, Path(tar).name, one, np.arange(n), tar))
        return "webdataset", shards, source
    if isinstance(source, TableSource):
        n, size = len(source), opts.rows_per_shard
        shards = [_Shard(k, f"rows {a}-{min(a + size, n) - 1}", source, np.arange(a, min(a + size, n)))
                  for k, a in enumerate(range(0, n, size))]
        return "table", shards, source
    raise ValueError(f"{pool}: curate reads image-text pools: a CSV/TSV table or webdataset shards, not "
                     f"{source.kind} ({type(source).__name__})")


# ----------------------------------------------------------------------------- pass 1: features


def _score_pairs(model, images: list, texts: list[str], batch_size: int) -> np.ndarray:
    """Cosine similarity of each image with its own caption (batched)."""
    import torch

    from un2clip.eval.core.embed import inference_context

    out = []
    with inference_context(model.device, "auto"):
        for a in range(0, len(images), batch_size):
            pixels = torch.stack([model.processing(im) for im in images[a:a + batch_size]]).to(model.device)
            img = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)  # (B, D)
            txt = torch.nn.functional.normalize(model.encode_text(texts[a:a + batch_size]).float(), dim=-1)
            out.append((img * txt).sum(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _features(shard: _Shard, matcher: EntryMatcher | None, model, batch_size: int) -> dict[str, np.ndarray]:
    n = len(shard.indices)
    readable = np.zeros(n, bool)
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    texts: list[str] = [""] * n
    keys: list[str] = [""] * n
    match_ids: list[int] = []
    match_offsets = np.zeros(n + 1, np.int64)
    scores = np.full(n, np.nan, np.float32)
    pending: list[tuple[int, Any, str]] = []

    def flush() -> None:
        if pending:
            s = _score_pairs(model, [p[1] for p in pending], [p[2] for p in pending], batch_size)
            scores[[p[0] for p in pending]] = s
            pending.clear()

    for j, i in enumerate(shard.indices):
        keys[j] = shard.source.key(int(i))
        record = shard.source.load(int(i))
        if record is not None:
            readable[j] = True
            width[j], height[j] = record.image.size
            texts[j] = (record.text or "").strip()
            if matcher is not None and texts[j]:
                match_ids.extend(matcher.match(texts[j]))
            if model is not None and texts[j]:
                pending.append((j, record.image, texts[j]))
                if len(pending) >= batch_size:
                    flush()
        match_offsets[j + 1] = len(match_ids)
    flush()
    return {"readable": readable, "width": width, "height": height, "text": np.array(texts, dtype=str),
            "key": np.array(keys, dtype=str), "match_ids": np.asarray(match_ids, np.int64),
            "match_offsets": match_offsets, "score": scores}


def _load_features(file: Path) -> dict[str, np.ndarray]:
    with np.load(file, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _matches(f: dict[str, np.ndarray]) -> list[np.ndarray]:
    off, ids = f["match_offsets"], f["match_ids"]
    return [ids[off[j]:off[j + 1]] for j in range(len(off) - 1)]


# ----------------------------------------------------------------------------- pass 2: decide


def _decide(feats: list[dict[str, np.ndarray]], opts: CurateOptions) -> tuple[list[np.ndarray], dict]:
    """Per shard: (N,) keep masks; and the summary's counts. Pure: features in, decisions out."""
    reasons: Counter = Counter()
    tripped: Counter = Counter()
    alive = []
    for f in feats:  # readable image and a caption
        ok = f["readable"].copy()
        reasons["unreadable_image"] += int((~ok).sum())
        empty = ok & (np.char.str_len(f["text"]) == 0) if len(ok) else ok
        reasons["empty_caption"] += int(empty.sum())
        alive.append(ok & ~empty)
    if opts.align is not None:
        shared = Counter(normalize_caption(t) for f, a in zip(feats, alive) for t in f["text"][a])
        for f, a in zip(feats, alive):
            for j in np.flatnonzero(a):
                hit = align_tripped(int(f["width"][j]), int(f["height"][j]), str(f["text"][j]),
                                    shared[normalize_caption(str(f["text"][j]))], opts.align)
                tripped.update(hit)
                if hit:
                    a[j] = False
                    reasons[f"align:{hit[0]}"] += 1
    summary: dict[str, Any] = {}
    if opts.metadata is not None:
        n_entries = len(opts.metadata)
        matched_counts = np.zeros(n_entries, np.int64)
        for f, a in zip(feats, alive):
            for j, ids in enumerate(_matches(f)):
                if a[j]:
                    if len(ids) == 0:
                        a[j] = False
                        reasons["no_metadata_match"] += 1
                    else:
                        matched_counts[ids] += 1
        kept_counts = matched_counts.copy()
        if opts.balance_t is not None:
            probs = balance_probabilities(matched_counts, opts.balance_t)
            kept_counts[:] = 0
            for k, (f, a) in enumerate(zip(feats, alive)):
                rng = np.random.default_rng([int(opts.seed), k])  # per shard: the same draws on a resumed run
                idx = np.flatnonzero(a)
                matches = _matches(f)
                keep = balance_keep([matches[j] for j in idx], probs, rng)
                reasons["balanced_out"] += int((~keep).sum())
                a[idx[~keep]] = False
                for j in idx[keep]:
                    kept_counts[matches[j]] += 1
        summary["entries"] = {opts.metadata[e]: {"matched": int(matched_counts[e]), "kept": int(kept_counts[e])}
                              for e in np.flatnonzero(matched_counts)}
        summary["entry_count_histogram"] = {"before": count_histogram(matched_counts),
                                            "after": count_histogram(kept_counts)}
        if opts.balance_t is not None:
            summary["balance_t"] = opts.balance_t
    if opts.score_model is not None:
        pos = [(k, j) for k, a in enumerate(alive) for j in np.flatnonzero(a)]
        scores = np.array([feats[k]["score"][j] for k, j in pos], np.float64)
        if opts.keep_fraction is not None:
            keep = top_fraction(scores, opts.keep_fraction)
            summary["score_threshold"] = float(scores[keep].min()) if keep.any() else None
        else:
            keep = scores >= opts.min_score
            summary["score_threshold"] = opts.min_score
        if len(scores):
            summary["score_quantiles"] = {q: float(np.quantile(scores, float(q))) for q in ("0.1", "0.5", "0.9")}
        for (k, j), kk in zip(pos, keep):
            if not kk:
                alive[k][j] = False
        reasons["score_below"] += int((~keep).sum())
    summary["dropped"] = {k: v for k, v in reasons.items() if v}
    summary["align_tripped"] = dict(tripped) if opts.align is not None else None
    return alive, summary


# ----------------------------------------------------------------------------- pass 3: write


def _tar_key(name: str) -> str:
    from un2clip.data.shards import _split_tar_name

    name = name[2:] if name.startswith("./") else name
    return _split_tar_name(name)[0]


def _write_tar(src: str, dst: Path, keys: set[str]) -> None:
    """Copy every member of the kept samples of ``src`` into ``dst`` (atomically), in their order."""
    with atomic_path(dst) as tmp, tarfile.open(src, "r:") as tin, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tout:
        while True:
            try:
                member = tin.next()
            except (tarfile.TarError, OSError, EOFError):  # a damaged tail: what came before is kept
                break
            if member is None:
                break
            if member.isfile() and _tar_key(member.name) in keys:
                data = tin.extractfile(member)
                tout.addfile(member, data)


def _write_rows(dst: Path, source, shard: _Shard, keep: np.ndarray, base: Path) -> None:
    delimiter = "\t" if dst.suffix.lower() == ".tsv" else ","
    with atomic_path(dst) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        texts = source._texts  # the caption column as read (None: the table had none)
        for j in np.flatnonzero(keep):
            i = int(shard.indices[j])
            path = source.key(i)
            try:
                rel = os.path.relpath(path, base)
            except ValueError:  # another drive
                rel = path
            writer.writerow([rel, texts[i] if texts is not None else ""])


# ----------------------------------------------------------------------------- the command


def curate(pool: str, output: str | os.PathLike, opts: CurateOptions, *, progress: bool = True,
           fresh: bool = False) -> dict:
    """Curate ``pool`` into ``output``; returns the summary (also written to ``output/curate_summary.json``)."""
    opts.check()
    out = Path(output)
    kind, shards, source = _shards(pool, opts)
    if kind == "table" and out.resolve() == Path(source.path).resolve().parent:
        raise ValueError(f"--output {out} is the pool's own folder; write the curated table elsewhere")
    work = out / WORK
    key = opts.feature_key()
    if fresh or not (work / "features.json").is_file() or (work / "features.json").read_text() != key:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "features.json", key)
    matcher = EntryMatcher(opts.metadata) if opts.metadata is not None else None
    model = None
    n_total = sum(len(s.indices) for s in shards)
    todo = [s for s in shards if not (work / f"features-{s.index:05d}.npz").is_file()]
    if todo and opts.score_model is not None:
        from un2clip.eval.core.embed import pick_device
        from un2clip.load import load_clip

        model = load_clip(opts.score_model).to(pick_device(opts.device)).eval()
    with tqdm(total=n_total, desc="curate: reading the pool", unit="pair", disable=not progress) as bar:
        bar.update(n_total - sum(len(s.indices) for s in todo))
        for s in todo:
            feats = _features(s, matcher, model, opts.batch_size) if s.source is not None else _features_empty()
            with atomic_path(work / f"features-{s.index:05d}.npz") as tmp:
                np.savez(tmp, **feats)
            bar.update(len(s.indices))
    feats = [_load_features(work / f"features-{s.index:05d}.npz") for s in shards]
    keeps, summary = _decide(feats, opts)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "webdataset":
        for s, keep in tqdm(list(zip(shards, keeps)), desc="curate: writing shards", disable=not progress):
            done = work / f"written-{s.index:05d}"
            if not done.exists():
                _write_tar(s.tar, out / s.name, {str(k) for k in feats[s.index]["key"][keep]})
                done.write_text("")
        written = [str(out / s.name) for s in shards]
    else:
        parts = []
        for s, keep in zip(shards, keeps):
            part = work / f"rows-{s.index:05d}{source.path.suffix.lower()}"
            _write_rows(part, source, s, keep, out)
            parts.append(part)
        table = out / source.path.name
        delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
        with atomic_path(table) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, delimiter=delimiter, lineterminator="\n").writerow(
                [source.image_column, source.caption_column or "caption"])
            for part in parts:
                f.write(part.read_text(encoding="utf-8"))
        written = [str(table)]
    n_out = int(sum(k.sum() for k in keeps))
    summary = {"pool": str(pool), "format": kind, "n_in": n_total, "n_out": n_out,
               "n_skipped_at_open": int(getattr(source, "n_skipped", 0)),
               "options": _options_record(opts), **summary, "written": written}
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def _features_empty() -> dict[str, np.ndarray]:
    z = np.zeros(0)
    return {"readable": z.astype(bool), "width": z.astype(np.int32), "height": z.astype(np.int32),
            "text": np.array([], dtype=str), "key": np.array([], dtype=str), "match_ids": z.astype(np.int64),
            "match_offsets": np.zeros(1, np.int64), "score": z.astype(np.float32)}


def _options_record(opts: CurateOptions) -> dict:
    record = asdict(opts)
    if opts.metadata is not None:  # the entries decide what is kept: their count and a digest of their text
        digest = hashlib.sha1("\n".join(opts.metadata).encode()).hexdigest()
        record["metadata"] = {"n_entries": len(opts.metadata), "sha1": digest}
    return record
