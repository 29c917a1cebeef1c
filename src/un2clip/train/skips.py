"""The unreadable-image rule of a training run: how many of the images drawn could not be read, and when to stop.

A run skips unreadable images and counts them; :class:`SkipMonitor` judges the counts. The run stops when
more than ``max_rate`` of the last ``window`` images drawn were unreadable (judged once ``window`` images
were drawn; a run that draws fewer is judged on all it drew, at its end), or when no image at all was
readable over ``max(source size, window)`` images in a row (a whole pass), whatever ``max_rate``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class UnreadableDataError(ValueError):
    """Too many of the images drawn could not be read; the run stopped before writing its models. Bad input
    (exit status 2 at the command line), not a :class:`~un2clip.errors.RunStopped`: the data must change
    before a resume."""


class SkipMonitor:
    """Counts of drawn and unreadable images over a sliding window of draws, and the verdict.

    ``record(drawn, bad)`` takes one draw's global counts (a micro-step over all processes) and returns why
    the run must stop, or None; ``final_verdict()`` judges a run that drew fewer than ``window`` images.
    ``remember(keys)`` keeps the most recent unreadable images' keys, named by :meth:`examples`.
    """

    def __init__(self, *, max_rate: float, window: int, source_size: int, n_examples: int = 5) -> None:
        if not 0 < max_rate <= 1:
            raise ValueError(f"max_skip_rate must be in (0, 1], got {max_rate}")
        if window < 1:
            raise ValueError(f"skip_window must be >= 1, got {window}")
        self.max_rate, self.window, self.source_size = max_rate, window, source_size
        self._draws: deque[tuple[int, int]] = deque()  # (drawn, unreadable) per draw: the fewest covering the window
        self.all_bad_run = 0  # images drawn since the last readable one
        self._keys: deque[str] = deque(maxlen=n_examples)

    @property
    def window_counts(self) -> tuple[int, int]:
        """(images drawn, unreadable) over the draws in the window."""
        return sum(d for d, _ in self._draws), sum(b for _, b in self._draws)

    def record(self, drawn: int, bad: int) -> str | None:
        """Add one draw's counts; why the run must stop (a sentence), or None."""
        if not 0 <= bad <= drawn:
            raise ValueError(f"a draw of {drawn} images cannot hold {bad} unreadable ones")
        self.all_bad_run = self.all_bad_run + drawn if bad == drawn else 0
        self._draws.append((drawn, bad))
        while len(self._draws) > 1 and self.window_counts[0] - self._draws[0][0] >= self.window:
            self._draws.popleft()  # the oldest draw is not needed to cover the window
        if self.all_bad_run >= max(self.source_size, self.window):
            return f"none of the last {self.all_bad_run} images drawn could be read"
        if self.window_counts[0] >= self.window:
            return self._rate_verdict()
        return None

    def final_verdict(self) -> str | None:
        """At the end of a run: judge all it drew when that was fewer than the window (else already judged)."""
        return self._rate_verdict() if self.window_counts[0] < self.window else None

    def _rate_verdict(self) -> str | None:
        n, bad = self.window_counts
        if n and bad / n > self.max_rate:
            return (f"{bad} of the last {n} images drawn ({bad / n:.0%}) could not be read, "
                    f"more than --max-skip-rate {self.max_rate:g}")
        return None

    def remember(self, keys: Iterable[str]) -> None:
        """Keep the keys of unreadable images just drawn (only the newest ``n_examples`` stay)."""
        self._keys.extend(keys)

    def examples(self) -> list[str]:
        """The remembered keys, newest first, each once."""
        return list(dict.fromkeys(reversed(self._keys)))
