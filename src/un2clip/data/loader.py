"""Deterministic, resumable, multi-process batches from a Source.

The data stream of a run is an endless concatenation of epochs; epoch ``e`` is a
permutation of ``range(len(source))`` drawn from ``(seed, e)``. Global stream position
``g`` (0, 1, 2, ... over all epochs) is the ``g``-th sample the whole run consumes.

* With ``num_replicas`` processes, rank ``r`` takes the positions ``start + r``,
  ``start + r + num_replicas``, ... (a strided slice of the same stream), so with a
  per-process batch of ``global_batch / num_replicas`` the union over ranks of global
  step ``s`` is exactly stream positions ``[s * global_batch, (s + 1) * global_batch)``,
  whatever the number of processes.
* Each sample's augmentations come from a ``random.Random`` seeded by
  ``(seed, epoch, index)``, so they do not depend on worker count, rank or resumption.
* A run that consumed ``S`` global samples and restarts with ``start_sample=S`` sees
  the same later batches (same indices, same augmentations) as an uninterrupted run.

The sampler yields ``(epoch, index)`` pairs (the epoch has to travel with the index:
data-loader workers live across epochs, so a dataset attribute could not carry it);
:class:`TransformedDataset` also accepts a bare ``index`` (epoch 0).

Unreadable images become ``None`` items, which :func:`collate_skip_bad` drops and
counts in ``batch["n_bad"]``; a micro-batch whose every image is bad collates to
``None`` (its size of bad images is then the batch size). Batches therefore may be
smaller than ``batch_size``; the stream is never refilled, which keeps it deterministic.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from un2clip.data.sources import Record, Source

Transform = Callable[[Record, random.Random], "dict[str, torch.Tensor] | None"]


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The per-sample generator of augmentations: a pure function of ``(seed, epoch, index)``.

    Seeding with a string goes through SHA-512 in CPython, so it is stable across runs,
    processes and ``PYTHONHASHSEED``.
    """
    return random.Random(f"un2clip/{int(seed)}/{int(epoch)}/{int(index)}")


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of ``range(n)`` from ``(seed, epoch)``."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), 0x756E32])))
    return rng.permutation(n)


class TransformedDataset(Dataset):
    """A Source plus a per-sample transform: item ``(epoch, i)`` -> ``{**transform(record, rng), "index": i}``.

    Returns ``None`` when the image is unreadable or the transform returns ``None``.
    """

    def __init__(self, source: Source, transform: Transform, *, seed: int = 0):
        self.source = source
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, ref: int | tuple[int, int]) -> dict[str, Any] | None:
        epoch, index = (int(ref[0]), int(ref[1])) if isinstance(ref, (tuple, list)) else (0, int(ref))
        record = self.source.load(index)
        if record is None:
            return None
        out = self.transform(record, sample_rng(self.seed, epoch, index))
        if out is None:
            return None
        return {**out, "index": index}


def collate_skip_bad(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Drop ``None`` items, stack the rest and add ``"n_bad"`` (int); ``None`` if every item was bad.

    The caller counts an all-bad batch as ``len(batch)`` bad images (the micro-batch size,
    since loaders from :func:`make_loader` drop incomplete batches).
    """
    good = [item for item in batch if item is not None]
    if not good:
        return None
    out = default_collate(good)
    out["n_bad"] = len(batch) - len(good)
    return out


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` of this rank's strided slice of the global sample stream.

    ``start_sample``: global samples already consumed (over all ranks and epochs).
    ``num_samples``: global samples to cover from ``start_sample`` on, or ``None`` for an
    endless stream (``len()`` then raises TypeError). Keep ``start_sample`` and
    ``num_samples`` multiples of ``num_replicas`` so ranks stay in lock-step.
    ``shuffle=False`` uses the identity order in every epoch.

    Iterating continues from where the previous iteration stopped. ``state_dict()``
    reports what was *yielded*; a DataLoader prefetches ahead of what the training loop
    consumed, so a loop should checkpoint its own count (``step * global_batch``) and
    pass it back as ``start_sample`` (``state_at(samples)`` gives the same as a dict).
    """

    def __init__(self, n: int, *, seed: int = 0, start_sample: int = 0, num_samples: int | None = None,
                 num_replicas: int = 1, rank: int = 0, shuffle: bool = True):
        if n <= 0:
            raise ValueError(f"cannot sample from an empty source (n={n})")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        if start_sample < 0:
            raise ValueError(f"start_sample must be >= 0, got {start_sample}")
        if num_samples is not None and num_samples < 0:
            raise ValueError(f"num_samples must be >= 0 or None, got {num_samples}")
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.num_samples = num_samples
        self._position = int(start_sample)  # global stream position of the next block of num_replicas
        self._cache: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            order = epoch_permutation(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n)
            self._cache = (epoch, order)
        return self._cache[1]

    def at(self, position: int) -> tuple[int, int]:
        """``(epoch, index)`` at global stream position ``position``."""
        epoch, offset = divmod(int(position), self.n)
        return epoch, int(self._order(epoch)[offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        stop = None if self.num_samples is None else self._position + self.num_samples
        while True:
            g = self._position + self.rank
            if stop is not None and g >= stop:
                return
            item = self.at(g)
            self._position += self.num_replicas
            yield item

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("an endless ResumableSampler has no length (pass num_samples)")
        return max(0, -(-(self.num_samples - self.rank) // self.num_replicas))

    @property
    def position(self) -> int:
        """Global samples yielded so far (over all ranks, assuming they move in lock-step)."""
        return self._position

    def batch_indices(self, start_sample: int, batch: int, batch_size: int) -> list[int]:
        """Source indices of this rank's ``batch``-th batch (0-based) of ``batch_size`` drawn from ``start_sample``.

        What a loader of :func:`make_loader` made with ``start_sample`` put into that batch, unreadable images
        included (it drops incomplete batches, so batch ``b`` holds this rank's items ``b * batch_size`` on).
        """
        first = int(batch) * int(batch_size)
        return [self.at(int(start_sample) + self.rank + (first + t) * self.num_replicas)[1]
                for t in range(int(batch_size))]

    def state_at(self, samples: int) -> dict[str, int]:
        """The state dict of a run that has consumed ``samples`` global samples."""
        epoch, offset = divmod(int(samples), self.n)
        return {"epoch": epoch, "position": offset, "seed": self.seed, "n": self.n}

    def state_dict(self) -> dict[str, int]:
        return self.state_at(self._position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("n", self.n)) != self.n:
            raise ValueError(f"the data changed since this state was saved: {state['n']} samples then, "
                             f"{self.n} now; the data order cannot be resumed")
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"the state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        self._position = int(state["epoch"]) * self.n + int(state["position"])


def ignore_stop_signals(worker_id: int) -> None:
    """Worker start: SIGINT and SIGTERM are for the main process, which decides when the run stops (a
    Ctrl-C reaches the whole process group) and then ends its workers; they still exit with their parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    source: Source,
    transform: Transform,
    *,
    batch_size: int,
    seed: int,
    start_sample: int = 0,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    num_samples: int | None = None,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """An endless (or ``num_samples``-long) DataLoader of this rank's micro-batches.

    ``batch_size`` is the per-process batch; the global batch is ``batch_size * num_replicas``.
    ``start_sample`` is the number of GLOBAL samples already consumed (``step * global_batch``).
    Each batch is a dict of stacked tensors plus ``"index"`` (source indices) and
    ``"n_bad"`` (int, unreadable images dropped from it), or ``None`` when all
    ``batch_size`` images were unreadable. The loop sums ``n_bad`` (and ``batch_size`` per
    ``None``) to report run totals. ``loader.sampler`` is the :class:`ResumableSampler`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    sampler = ResumableSampler(len(source), seed=seed, start_sample=start_sample, num_samples=num_samples,
                               num_replicas=num_replicas, rank=rank)
    dataset = TransformedDataset(source, transform, seed=seed)
    extra: dict[str, Any] = {}
    if num_workers > 0 and prefetch_factor is not None:
        extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_skip_bad,
        pin_memory=pin_memory,
        # the loader's own seed draw uses this generator, never the global torch RNG
        generator=torch.Generator().manual_seed(int(seed)),
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        **extra,
    )
