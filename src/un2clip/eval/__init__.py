"""Evaluations, one contract: ``evaluate(model, data, **options) -> dict[str, float]``, registered by name.

Each evaluation runs in three steps kept apart: embed (:mod:`un2clip.eval.core.embed`), score
matrix, metric (pure functions in :mod:`un2clip.eval.core.metrics`).

A registered task (:class:`EvalTask`, in :mod:`un2clip.eval.tasks`) is the one source of an evaluation:
its description, its flags, the extras it needs, what it loads; `un2clip eval` is generated from it.
Importing this package imports no task module (and no torch): each task's ``evaluate`` is imported on
its first call.

>>> from un2clip.eval import evaluate
>>> evaluate("mmvp", model, "data/MMVP_VLM")  # doctest: +SKIP
{'Orientation and Direction': 13.3, ..., 'average': 19.3, 'n_pairs': 135}
"""

from __future__ import annotations

from un2clip.eval import tasks as _tasks  # noqa: F401  (registers every evaluation)
from un2clip.eval.registry import TASKS, EvalTask, LazyFunction, evaluate, get_task, register_task

__all__ = ["TASKS", "EvalTask", "LazyFunction", "evaluate", "get_task", "register_task"]
