"""Named things of one kind — presets, objectives, evaluations, segmentation heads — in one mechanism."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A dict of ``name -> item`` that refuses a second item under one name and names the known ones when
    asked for an unknown name. Iteration follows registration order."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # what one item is, in messages: "preset", "evaluation", ...

    def add(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def lookup(self, name: str) -> T:
        """The item called ``name``; a ValueError that lists the known names otherwise."""
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self)}") from None
