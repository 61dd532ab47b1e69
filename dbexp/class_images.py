"""Owner of ``conf/prior``: the class-prior images the prior-preservation loss trains on.

They are made by the *base* model (before any fine-tuning) from the class prompt; image i uses
seed ``prior.seed + i``. For now they are written into the run folder (``class_images/``);
the content-addressed cache shared across runs replaces that (issue #3).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dbexp.errors import UserInputError
from dbexp.model_loading import ModelParts
from dbexp.sampling import build_pipeline, check_sampler, generate, sampler

log = logging.getLogger(__name__)


@dataclass
class PriorConfig:
    """Schema of ``conf/prior/*.yaml``."""

    weight: float = 1.0
    class_prompt: str = "a photo of {class_noun}"
    num_class_images: int = 100
    negative_prompt: str = ""
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    scheduler: str | None = None
    batch_size: int = 4
    seed: int = 0


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
    if cfg.num_class_images < 1:
        raise UserInputError(f"prior.num_class_images={cfg.num_class_images}: must be >= 1 when prior.weight > 0")
    if cfg.batch_size < 1:
        raise UserInputError(f"prior.batch_size={cfg.batch_size}: must be >= 1")
    check_sampler(cfg.scheduler, "prior.scheduler")


def class_prompt(cfg: PriorConfig, class_noun: str | None) -> str:
    return cfg.class_prompt.format(class_noun=class_noun or "")


def generate_class_images(
    cfg: PriorConfig, parts: ModelParts, prompt: str, resolution: int, folder: str | Path
) -> list[Image.Image]:
    """``cfg.num_class_images`` images of ``prompt`` from the base model, also saved as PNGs in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(
        parts.vae, parts.text_encoder, parts.tokenizer, parts.unet, sampler(parts.inference_scheduler, cfg.scheduler)
    )
    seeds = [cfg.seed + i for i in range(cfg.num_class_images)]
    images = generate(
        pipeline,
        [prompt] * len(seeds),
        seeds,
        guidance_scale=cfg.guidance_scale,
        num_inference_steps=cfg.num_inference_steps,
        negative_prompt=cfg.negative_prompt,
        resolution=resolution,
        batch_size=cfg.batch_size,
        progress="class images",
    )
    for seed, image in zip(seeds, images, strict=True):
        target = folder / f"{seed:06d}.png"
        staging = folder / f".{target.name}.{os.getpid()}.tmp"
        image.save(staging, format="PNG")
        os.replace(staging, target)  # all-or-nothing, also when DDP ranks write the same image
    log.info("prior: generated %d class images of %r into %s", len(images), prompt, folder)
    return images
