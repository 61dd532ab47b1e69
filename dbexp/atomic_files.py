"""Files that appear whole or not at all: written under a temporary name beside their place, then renamed.

A reader (another run, a sweep worker, a resumed job) never sees half a file, and a kill while
writing leaves the previous version in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``. ``durable``: fsync file and folder
    first, so the new file also survives a power loss (checkpoints)."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield staging
        if durable:
            _fsync(staging)
        os.replace(staging, path)
        if durable:
            _fsync(path.parent)
    finally:
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
