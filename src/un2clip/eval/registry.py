"""What a registered evaluation is (:class:`EvalTask`), and the registry ``TASKS`` the tasks of
:mod:`un2clip.eval.tasks` are added to. Torch-free: a task's functions are named ``"module:function"``
and imported on their first call (:class:`LazyFunction`)."""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from un2clip.registry import Registry

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel


class LazyFunction:
    """The function ``"package.module:function"``, imported on its first call, so that the registry (and
    ``un2clip --help``) stays free of the task modules' imports (torch). ``inspect.signature`` resolves it."""

    def __init__(self, target: str):
        module, sep, name = target.partition(":")
        if not (module and sep and name):
            raise ValueError(f"a lazy function is named 'package.module:function', not {target!r}")
        self.target = target
        self._function: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        """The function itself (imports its module once)."""
        if self._function is None:
            module, _, name = self.target.partition(":")
            self._function = getattr(importlib.import_module(module), name)
        return self._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.resolve())

    def __repr__(self) -> str:
        return f"LazyFunction({self.target!r})"


def _function(ref: Callable[..., Any] | str | None) -> Callable[..., Any] | None:
    return LazyFunction(ref) if isinstance(ref, str) else ref


# adds a task's own flags to its command's argument group (the parser itself for a task with runner "seg")
FlagsHook = Callable[[argparse._ActionsContainer], None]


@dataclass(frozen=True)
class EvalTask:
    """A registered evaluation: the one place that says what it runs, what it loads and how its command reads.

    ``evaluate``, ``check_data`` and ``result_extras`` may be given as ``"module:function"`` (imported on first
    use). The command `un2clip eval NAME` is built from these fields alone: ``description`` is its help, the
    model kind's shared flags plus ``flags`` its options, and the dests of the flags in ``flags`` (with the
    shared options the task does not list in ``ignores``) are exactly the keywords passed to ``evaluate``.
    """

    name: str
    evaluate: Callable[..., dict[str, float]]  # evaluate(model, data, **options) -> metrics
    headline: tuple[str, ...]  # the metrics a report shows first
    description: str = ""  # the command's help and description
    flags: FlagsHook | None = None  # adds the task's own flags; each dest is a keyword of evaluate
    # opens the data without a model (with the keywords of evaluate it shares), so a malformed folder fails fast
    check_data: Callable[..., object] | None = None
    # what evaluate takes: "clip" (ClipModel) | "llava" (un2clip.models.llava.LlavaChat) | "audio"
    # (un2clip.models.audio.AudioClip, a `train-audio` run)
    model_kind: str = "clip"
    needs_decoder: bool = False  # evaluate takes ``decoder=UnclipDecoder``, loaded from the ``decoder`` option
    extras: tuple[str, ...] = ()  # the un2clip extras it may need: pip install 'un2clip[NAME]'
    ignores: tuple[str, ...] = ()  # shared flags of its model kind that its evaluate has no use for
    item_csv: str | None = None  # evaluate's keyword for a CSV of every item, written beside the result file
    # (options) -> the task's name in result files, when an option makes it another measurement
    label: Callable[[dict[str, Any]], str] | None = None
    # (model spec, metrics, random_weights=) -> (fields added to the result file, lines printed under the metrics)
    result_extras: Callable[..., tuple[dict[str, Any], list[str]]] | None = None
    # how `un2clip eval NAME` runs: "per-model" (the kind's shared flags; one result file per model and dataset)
    # or "seg" (the flags hook adds every flag; models x methods x datasets, then one table)
    runner: str = "per-model"

    def __post_init__(self) -> None:
        for name in ("evaluate", "check_data", "result_extras"):
            object.__setattr__(self, name, _function(getattr(self, name)))

    def result_name(self, options: dict[str, Any]) -> str:
        """The task's name in result files for these options (``label``, else ``name``)."""
        return self.label(options) if self.label else self.name


TASKS: Registry[EvalTask] = Registry("evaluation")


def register_task(task: EvalTask) -> EvalTask:
    """Add an evaluation to the registry (names are unique)."""
    return TASKS.add(task.name, task)


def get_task(name: str) -> EvalTask:
    return TASKS.lookup(name)


def evaluate(task: str, model: ClipModel, data: str | Path, **options: Any) -> dict[str, float]:
    """Run the registered evaluation ``task`` of ``model`` on ``data``."""
    return get_task(task).evaluate(model, data, **options)
