"""Curation rules of the CLIP family as pure functions on numbers, strings and arrays (no I/O).

- ALIGN (Jia et al. 2021, section 3): keep images whose shorter side is over 200 px and whose aspect
  ratio is under 3; drop alt-texts shared by more than 10 images, and those shorter than 3 or longer
  than 20 unigrams; here also captions that are boilerplate alone ("image", "photo", "untitled", ...,
  the paper's examples of noisy shared texts). Each threshold is a field with the published default.
- MetaCLIP (Xu et al. 2023): an entry matched ``c`` times keeps each of its pairs with probability
  ``min(1, t / c)``; a pair is kept when any of its entries keeps it.
- DataComp / DFN: keep the top fraction of pairs by a scoring model's image-text similarity.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BOILERPLATE: tuple[str, ...] = (
    "image", "images", "photo", "photos", "picture", "pic", "img", "alt img", "untitled", "thumbnail", "placeholder",
    "no image", "image not found", "click to enlarge", "view image", "default",
)


@dataclass(frozen=True)
class AlignRules:
    """ALIGN's simple filters; a threshold of 0 (or None) switches its rule off."""

    min_side: int = 200  # shorter image side must be larger than this (pixels)
    max_aspect: float = 3.0  # longer / shorter side must be smaller than this
    min_words: int = 3  # captions with fewer unigrams are dropped
    max_words: int = 20  # captions with more unigrams are dropped
    max_caption_shared: int = 10  # captions shared by more images are dropped
    boilerplate: tuple[str, ...] = field(default=DEFAULT_BOILERPLATE)  # captions that are only one of these

    RULES = ("min_side", "max_aspect", "min_words", "max_words", "max_caption_shared", "boilerplate")


def normalize_caption(text: str) -> str:
    """Lower case, words joined by single spaces: how captions are compared for sharing and boilerplate."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def count_words(text: str) -> int:
    """Unigrams of a caption (whitespace separated)."""
    return len(text.split())


def align_tripped(width: int, height: int, text: str, shared: int, rules: AlignRules) -> list[str]:
    """Names of the ALIGN rules a pair breaks (empty: kept). ``shared``: images that carry this caption."""
    tripped = []
    short, long_ = min(width, height), max(width, height)
    if rules.min_side and short <= rules.min_side:
        tripped.append("min_side")
    if rules.max_aspect and long_ >= rules.max_aspect * short:
        tripped.append("max_aspect")
    n = count_words(text)
    if rules.min_words and n < rules.min_words:
        tripped.append("min_words")
    if rules.max_words and n > rules.max_words:
        tripped.append("max_words")
    if rules.max_caption_shared and shared > rules.max_caption_shared:
        tripped.append("max_caption_shared")
    if rules.boilerplate and normalize_caption(text) in {normalize_caption(b) for b in rules.boilerplate}:
        tripped.append("boilerplate")
    return tripped


def balance_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """(E,) per-entry match counts -> (E,) keep probabilities min(1, t / count) (1 for unmatched entries)."""
    if t <= 0:
        raise ValueError(f"the balancing threshold t must be positive, got {t}")
    counts = np.asarray(counts, dtype=np.float64)
    return np.minimum(1.0, t / np.maximum(counts, 1.0))


def balance_keep(matched: Sequence[Sequence[int]], probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool: pair i is kept when, for any entry e it matched, a uniform draw is under p[e].

    One uniform number per (pair, matched entry), drawn in order; a pair that matched nothing is dropped.
    """
    keep = np.zeros(len(matched), dtype=bool)
    for i, ids in enumerate(matched):
        if len(ids):
            keep[i] = bool((rng.random(len(ids)) < probabilities[np.asarray(ids, dtype=np.int64)]).any())
    return keep


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """(N,) bool marking exactly round(fraction x N) highest scores (ties: the earlier pair first)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"keep fraction must be in [0, 1], got {fraction}")
    scores = np.asarray(scores, dtype=np.float64)
    k = int(round(fraction * len(scores)))
    keep = np.zeros(len(scores), dtype=bool)
    if k:
        order = np.argsort(-scores, kind="stable")
        keep[order[:k]] = True
    return keep


def count_histogram(counts: Iterable[int]) -> dict[str, int]:
    """Entries per decade of match count: {"0": n, "1-9": n, "10-99": n, ...} (MetaCLIP's head/tail picture)."""
    hist: dict[str, int] = {}
    values = [int(c) for c in counts]
    top = max(values, default=0)
    hist["0"] = sum(v == 0 for v in values)
    decades = int(math.log10(top)) + 1 if top > 0 else 0
    for d in range(decades):
        lo, hi = 10 ** d, 10 ** (d + 1) - 1
        hist[f"{lo}-{hi}"] = sum(lo <= v <= hi for v in values)
    return hist
