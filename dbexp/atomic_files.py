"""Files that appear whole or not at all: written under a temporary name beside their place, then renamed.

A reader (another run, a sweep worker, a resumed job) never sees half a file, and a kill while
writing leaves the previous version in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write (a file, or a folder); on success it replaces ``path``.

    ``durable``: fsync the file and its folder first, so it also survives a power loss (checkpoints).
    A folder cannot replace a non-empty folder: if one appeared meanwhile, a concurrent writer
    finished first and its (identical) copy is kept.
    """
    path = Path(path)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield staging
        if durable:
            _fsync(staging)
        try:
            os.replace(staging, path)
        except OSError:
            if not (staging.is_dir() and path.is_dir()):
                raise
        if durable:
            _fsync(path.parent)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder
    finally:
        os.close(fd)
