"""Data methods of the CLIP family: ALIGN filters, MetaCLIP matching and balancing, CLIP-score / DFN filtering.

Pure rules (:mod:`.rules`, :mod:`.match`) apart from the streaming I/O (:mod:`.pipeline`).
"""

from un2clip.curate.match import AhoCorasick, EntryMatcher, read_metadata, spaced
from un2clip.curate.pipeline import CurateOptions, curate
from un2clip.curate.rules import (
    DEFAULT_BOILERPLATE,
    AlignRules,
    align_tripped,
    balance_keep,
    balance_probabilities,
    count_histogram,
    top_fraction,
)

__all__ = ["DEFAULT_BOILERPLATE", "AhoCorasick", "AlignRules", "CurateOptions", "EntryMatcher", "align_tripped",
           "balance_keep", "balance_probabilities", "count_histogram", "curate", "read_metadata", "spaced",
           "top_fraction"]
