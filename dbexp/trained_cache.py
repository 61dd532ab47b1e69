"""Trained weights by content: a run whose training-relevant config equals a finished run's reuses its
weights and only samples and evaluates (a sweep trial that differs in guidance scale alone, say).

The key hashes everything that changes the trained weights: the resolved config reduced to what
changes them (:func:`dbexp.config_roles.training_setting`), the base model's per-part content
fingerprints, the pixels of the instance (and user class) photos, and dbexp's
version. Training's randomness comes from per-sample generators seeded by ``seed``, so sample grids or
in-training evaluations do not change the weights (tested).

An entry is ``<cache>/trained/<key>/``: ``weights.safetensors`` (the trained weights only — the UNet,
and the text encoder when it trains, or their LoRA adapters; frozen parts come from the base model) and
``manifest.json`` (key fields, the training metrics at the end, the run it came from, last use). Entries are written
under a temporary name and renamed; ``python -m dbexp.cache prune --kind trained`` removes them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from dbexp import __version__
from dbexp.atomic_files import atomic_path
from dbexp.config_roles import training_setting
from dbexp.fingerprint import fields_key, image_digest

log = logging.getLogger(__name__)
KIND = "trained"
#: Hex characters of an entry's key (changing it renames every entry).
KEY_LENGTH = 24
WEIGHTS, MANIFEST = "weights.safetensors", "manifest.json"


def enabled(cfg: DictConfig) -> bool:
    """``reuse_trained``: true | false | null (null: in sweeps — multiruns — only)."""
    if cfg.reuse_trained is not None:
        return bool(cfg.reuse_trained)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def training_key(
    cfg: DictConfig, model_identity: dict[str, str], instance_images: list, class_photos: list | None
) -> str:
    return fields_key(
        {
            "dbexp": __version__,
            "config": training_setting(cfg),
            "model": model_identity,
            "instance_images": [image_digest(i) for i in instance_images],
            "class_photos": [image_digest(i) for i in class_photos or []],
        },
        length=KEY_LENGTH,
    )


@dataclass
class TrainedEntry:
    key: str
    folder: Path
    manifest: dict[str, Any]

    def load_into(self, module) -> None:
        """Put the cached trained weights into ``module`` (the frozen parts stay the base model's)."""
        weights = load_file(self.folder / WEIGHTS)
        if set(weights) != module.trained_keys():
            raise RuntimeError(f"trained cache entry {self.folder} does not match this model's trained weights")
        module.load_state_dict(weights, strict=False)

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.manifest.get("metrics", {}))


def find(cache_dir: str | Path, key: str) -> TrainedEntry | None:
    folder = Path(cache_dir) / KIND / key
    manifest_path = folder / MANIFEST
    if not (manifest_path.is_file() and (folder / WEIGHTS).is_file()):
        return None
    manifest = json.loads(manifest_path.read_text())
    manifest["last_used"] = datetime.now(UTC).isoformat()
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return TrainedEntry(key, folder, manifest)


def store(cache_dir: str | Path, key: str, module, metrics: dict[str, float], source: str | Path) -> tuple[Path, bool]:
    """The module's trained weights and its training metrics under ``key`` (kept if already there); whether this
    call wrote them."""
    folder = Path(cache_dir).resolve() / KIND / key
    if (folder / MANIFEST).is_file():
        return folder, False
    weights = {k: v.detach().to("cpu").contiguous() for k, v in module.trained_state_dict().items()}
    now = datetime.now(UTC).isoformat()
    manifest = {
        "key": key,
        "dbexp": __version__,
        "source_run": str(source),
        "metrics": {k: v if isinstance(v, int) else float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        "created": now,
        "last_used": now,
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(weights, str(tmp / WEIGHTS))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("trained weights cached: %s", folder)
    return folder, True
