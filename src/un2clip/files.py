"""Writing files so that a reader never sees half of one (write beside, then rename into place), and the one rule
for outputs that exist already (:func:`check_output`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed onto ``path`` when the block ends.

    The temporary file keeps ``path``'s suffix (some writers add one otherwise) and is removed if
    the block raises, so a killed or failed write leaves the previous ``path`` (or none) intact.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def check_output(output: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 overwrite: bool = False, option: str = "--output") -> Path:
    """The one rule for what a command writes: never over one of its ``inputs`` (the same path, or a folder that
    holds one: replacing it would delete the input), even with ``overwrite``; an existing file or non-empty
    folder only with ``overwrite``. Writing a new output inside an input folder is allowed.

    ``inputs`` that are not local paths (presets, Hub ids) are passed over. Raises ``ValueError`` or
    ``FileExistsError`` naming ``option``; returns ``output`` as a path.
    """
    path = Path(output)
    target = path.resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if target == source or target in source.parents:
            raise ValueError(f"{option} {output} would write over the input {given}: choose another {option}")
    if path.exists() and not overwrite and not (path.is_dir() and not any(path.iterdir())):
        raise FileExistsError(f"{option} {output} already exists: pass --overwrite to replace it, or choose another "
                              f"{option}")
    return path


@contextmanager
def replace_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` to write a file or a folder to; when the block ends it replaces ``path``
    (a previous file or folder there is removed), so an output is never a mix of an old and a new one, and a
    failed write leaves the previous ``path`` as it was."""
    import shutil

    path = Path(path)
    tag = f"{os.getpid()}.{threading.get_ident()}"
    tmp = path.with_name(f".{path.stem}.{tag}.tmp{path.suffix}")
    old = path.with_name(f".{path.stem}.{tag}.old{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        moved = path.exists() or path.is_symlink()
        if moved:
            os.replace(path, old)  # a folder cannot be renamed onto another (nor a file onto a folder): aside first
        try:
            os.replace(tmp, path)
        except BaseException:
            if moved:
                os.replace(old, path)
            raise
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            elif leftover.exists() or leftover.is_symlink():
                leftover.unlink()
