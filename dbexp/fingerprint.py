"""Content fingerprints: the one place where dbexp hashes content for its caches and provenance.

Every cache key and identity is a SHA-256 hex digest made here, so what "the same content" means
is defined once:

* :func:`image_digest` — decoded pixels of an image (latents, trained-weights and dataset keys).
* :func:`folder_digest` — one model part's folder on disk (the per-part model identity).
* :func:`text_digest` — a string (derived identities, hashes of an already-serialised spec).
* :func:`fields_key` — a set of fields as canonical JSON (cache entry names, setting fingerprints).

Changing any of these — the hash, the serialisation, what is read, or a caller's ``length`` —
renames every cache entry built on it: existing entries are silently no longer found (and
``ckpt_path=last`` no longer finds earlier runs). ``tests/test_fingerprint.py`` pins their values.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Config keys that record where a model was loaded from, not what it is (ignored by :func:`folder_digest`).
PATH_KEYS = ("_name_or_path", "name_or_path")


def text_digest(text: str, length: int | None = None) -> str:
    """SHA-256 of ``text`` (UTF-8), as hex, cut to its first ``length`` characters when given."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def fields_key(fields: Mapping[str, Any], length: int | None = None, *, stringify: bool = False) -> str:
    """The hash of the fields that determine a cache entry's content: JSON with sorted keys, then
    :func:`text_digest`. JSON cannot encode some values (paths, say): they raise, or with ``stringify``
    are written as ``str(value)`` (only for values whose ``str`` is their content)."""
    return text_digest(json.dumps(fields, sort_keys=True, default=str if stringify else None), length)


def image_digest(image: Image.Image) -> str:
    """Content hash of decoded pixels (so re-encoding a JPEG or renaming a file does not matter)."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}:".encode())
    digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()


def folder_digest(folder: str | Path, sample: int = 1 << 20) -> str:
    """A content fingerprint of one model part's folder: JSON configs by content (minus
    :data:`PATH_KEYS`, where they were loaded from), other files by name, size and the bytes of their
    first and last ``sample`` bytes (all of it when small). Reads ~2 MiB per file, so a 3 GB UNet costs
    milliseconds; fine-tuned weights differ in their first tensors, so they never collide with the base
    model's."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if file.suffix == ".json":  # configs: content only, not the path they were last loaded from
            config = json.loads(file.read_text())
            if isinstance(config, dict):
                config = {k: v for k, v in config.items() if k not in PATH_KEYS}
            digest.update(f"{file.relative_to(folder)}:{json.dumps(config, sort_keys=True)}".encode())
            continue
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder)}:{size}:".encode())
        with open(file, "rb") as f:
            digest.update(f.read(sample))
            if size > 2 * sample:
                f.seek(-sample, os.SEEK_END)
            digest.update(f.read(sample))
    return digest.hexdigest()
