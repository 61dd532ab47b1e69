"""Owner of ``conf/prior``: the class-prior images, generated once and reused by every run and trial.

Class images are drawn by the *base* model (before any fine-tuning); image i uses seed
``prior.seed + i``, so any prefix of the set is reproducible. They live in a content-addressed
cache: one folder per key, the key being a hash of everything that changes the pixels (each
model part's fingerprint, prompts, sampler, steps, guidance, resolution, seed base). Asking for
N images where M < N exist generates only the N − M missing ones; M ≥ N reuses the first N.
Images of different keys never mix. A file lock per key makes concurrent sweep workers end
with one correct set; every file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock
from PIL import Image
from tqdm.auto import tqdm

from dbexp import __version__
from dbexp.atomic_files import atomic_path
from dbexp.config import PriorConfig
from dbexp.datamodule import Size
from dbexp.errors import UserInputError
from dbexp.fingerprint import fields_key
from dbexp.images import load_image_folder, load_image_rgb
from dbexp.model_loading import ModelParts
from dbexp.sampling import check_sampler, generate, sampler

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def check_prior_config(cfg: PriorConfig, class_noun: str | None) -> None:
    if cfg.weight < 0:
        raise UserInputError(f"prior.weight={cfg.weight}: must be >= 0 (0 or prior=none turns the prior loss off)")
    if cfg.weight == 0:
        return
    if "{class_noun}" in cfg.class_prompt and not class_noun:
        raise UserInputError(
            f"prior.weight={cfg.weight} needs a class: set data.class_noun=<noun> "
            "(or a full prior.class_prompt, or prior=none to train without the prior loss)"
        )
    if not cfg.class_prompt.strip():
        raise UserInputError("prior.class_prompt is empty: set it, e.g. 'a photo of {class_noun}'")
    if cfg.class_dir:
        return  # the user's own class photos, validated when read (before any model loads)
    if cfg.num_class_images < 1:
        raise UserInputError(f"prior.num_class_images={cfg.num_class_images}: must be >= 1 when prior.weight > 0")
    if cfg.batch_size < 1:
        raise UserInputError(f"prior.batch_size={cfg.batch_size}: must be >= 1")
    check_sampler(cfg.sampler, "prior.sampler")


def class_prompt(cfg: PriorConfig, class_noun: str | None) -> str:
    return cfg.class_prompt.format(class_noun=class_noun or "")


def load_class_dir(cfg: PriorConfig) -> list[Image.Image] | None:
    """The user's own class photos (``prior.class_dir``), validated like instance photos; read-only."""
    return load_image_folder(cfg.class_dir, "prior.class_dir") if cfg.class_dir else None


def class_image_fields(cfg: PriorConfig, parts: ModelParts, prompt: str, resolution: int | Size) -> dict[str, Any]:
    """Everything that changes the pixels of class image i (batch size does not: one generator per image)."""
    return {
        "model": dict(sorted(parts.identity.items())),
        "class_prompt": prompt,
        "negative_prompt": cfg.negative_prompt,
        "num_inference_steps": cfg.num_inference_steps,
        "scheduler": type(sampler(parts.inference_scheduler, cfg.sampler)).__name__,  # named before prior.sampler
        "guidance_scale": float(cfg.guidance_scale),
        "resolution": resolution if isinstance(resolution, int) else list(resolution),  # (width, height): a bucket
        "seed": cfg.seed,
    }


def cache_key(fields: dict[str, Any]) -> str:
    return fields_key(fields, length=20)


@dataclass
class PriorImages:
    images: list[Image.Image]
    folder: Path
    reused: int
    generated: int


def class_images(
    cfg: PriorConfig,
    parts: ModelParts,
    prompt: str,
    resolution: int | Size,
    cache_dir: str | Path,
    count: int | None = None,
) -> PriorImages:
    """``count`` (default ``cfg.num_class_images``) class images from the cache, generating only the missing
    ones; ``resolution``: the square's side, or an aspect-ratio bucket's (width, height)."""
    if not isinstance(resolution, int) and resolution[0] == resolution[1]:
        resolution = resolution[0]  # a square bucket is the square: the same cache entry
    fields = class_image_fields(cfg, parts, prompt, resolution)
    folder = Path(cache_dir).expanduser().resolve() / "class_images" / cache_key(fields)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = cfg.num_class_images if count is None else count
    with FileLock(folder / ".lock"):
        manifest = _read_manifest(folder) or {
            "key": folder.name,
            "fields": fields,
            "count": 0,
            "dbexp_version": __version__,
            "created": _now(),
        }
        have = _complete_prefix(folder, manifest["count"])
        if have < wanted:
            _generate_missing(cfg, parts, prompt, resolution, folder, have, wanted)
        manifest.update(count=max(have, wanted), dbexp_version=__version__, last_used=_now())
        with atomic_path(folder / MANIFEST) as staging:
            staging.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    images = [load_image_rgb(image_path(folder, i)) for i in range(wanted)]
    reused = min(have, wanted)
    log.info(
        "prior: %d class images of %r: %d reused, %d generated (%s)", wanted, prompt, reused, wanted - reused, folder
    )
    return PriorImages(images=images, folder=folder, reused=reused, generated=wanted - reused)


def bucketed_class_images(
    cfg: PriorConfig, parts: ModelParts, prompt: str, instance_sizes: list[Size], cache_dir: str | Path
) -> tuple[list[Image.Image], list[Size]]:
    """``data.buckets``: class images drawn at each bucket's size, ``cfg.num_class_images`` shared among the
    buckets the subject's photos fall in, in proportion (at least one each), so a batch's class images have
    its instance photos' size. Returns the images and each one's size."""
    counts = Counter(tuple(size) for size in instance_sizes)
    images: list[Image.Image] = []
    sizes: list[Size] = []
    for size, photos in sorted(counts.items()):
        wanted = max(1, round(cfg.num_class_images * photos / len(instance_sizes)))
        images += class_images(cfg, parts, prompt, size, cache_dir, count=wanted).images
        sizes += [size] * wanted
    return images, sizes


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


def _generate_missing(
    cfg: PriorConfig, parts: ModelParts, prompt: str, resolution: int | Size, folder: Path, have: int, wanted: int
) -> None:
    pipeline = parts.pipeline(scheduler=sampler(parts.inference_scheduler, cfg.sampler))
    bar = tqdm(total=wanted, initial=have, desc="class images", unit="img")
    for begin in range(have, wanted, cfg.batch_size):
        indices = list(range(begin, min(begin + cfg.batch_size, wanted)))
        images = generate(
            pipeline,
            [prompt] * len(indices),
            [cfg.seed + i for i in indices],
            guidance_scale=cfg.guidance_scale,
            num_inference_steps=cfg.num_inference_steps,
            negative_prompt=cfg.negative_prompt,
            resolution=resolution,
            batch_size=cfg.batch_size,
        )
        for index, image in zip(indices, images, strict=True):
            with atomic_path(image_path(folder, index)) as staging:
                image.save(staging, format="PNG")
        bar.update(len(indices))
    bar.close()


def _complete_prefix(folder: Path, count: int) -> int:
    """How many images 0, 1, … are really there (a file deleted by hand shortens the usable prefix)."""
    for index in range(count):
        if not image_path(folder, index).is_file():
            return index
    return count


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
