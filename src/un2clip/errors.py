"""Errors the toolkit raises on purpose; the command line prints each as one line, never a traceback.

Bad input keeps Python's own types (``ValueError``, ``FileNotFoundError``): those are what a caller
of the library catches, and the command line already treats them as the user's mistake. The classes
here carry what the command line needs beyond that: that a training run *stopped* (exit status 1,
its newest checkpoint intact, ``--resume`` continues it) rather than refused to start (status 2),
and the faults that are neither plain bad input nor a bug: an unreachable Hub, a damaged
checkpoint, a run folder in use by another process.
"""

from __future__ import annotations

from collections.abc import Sequence


def first_few(items: Sequence[object], n: int = 3) -> str:
    """The first ``n`` items joined by commas, and how many more there are: what an error names of a long list
    ("a, b, c and 4 more")."""
    shown = ", ".join(str(x) for x in items[:n])
    return f"{shown} and {len(items) - n} more" if len(items) > n else shown


class Un2clipError(Exception):
    """Base of the toolkit's own errors: a message meant for the user, complete on one line."""


class RunStopped(Un2clipError, RuntimeError):
    """A training run stopped before its last step; its newest checkpoint is intact (exit status 1)."""


class HubUnavailable(Un2clipError, OSError):
    """A model named by a Hub id could not be fetched: no network, offline mode, or no such repository."""


class CheckpointDamaged(Un2clipError, ValueError):
    """A checkpoint whose files do not match its index (truncated, bit-flipped, missing): never loaded."""


class RunInUse(Un2clipError, RuntimeError):
    """Another live process holds the lock of the run folder."""
