"""Image generation shared by class-image generation, training samples and ``dbexp.generate``.

Everything goes through diffusers' ``StableDiffusionPipeline``: classifier-free guidance runs
the conditional and unconditional passes as one batch. Image i of a request uses its own
generator seeded with its seed, so a picture does not depend on how requests are batched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import diffusers
import torch
from diffusers import SchedulerMixin, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from dbexp.errors import UserInputError

#: Short sampler names usable in configs (``eval.sampler``, ``prior.sampler``, generate's ``sampler=``).
SAMPLERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def check_sampler(name: str | None, key: str) -> None:
    if name is not None and name not in SAMPLERS:
        raise UserInputError(f"{key}={name}: use one of {', '.join(SAMPLERS)} (or null for the model's own)")


def sampler(base: SchedulerMixin, name: str | None) -> SchedulerMixin:
    """``base`` itself (the model's own sampler) or the named one with ``base``'s noise schedule."""
    if name is None:
        return base
    return getattr(diffusers, SAMPLERS[name]).from_config(base.config)


def build_pipeline(
    vae, text_encoder, tokenizer, unet, scheduler: SchedulerMixin, text_encoder_2=None, tokenizer_2=None
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A pipeline over live modules (no copies): what it draws is what the model has learnt so far. With a
    second text encoder (SDXL): ``StableDiffusionXLPipeline`` (no invisible watermark: dbexp's pictures are
    measured, and the watermark's package is not a dependency)."""
    if text_encoder_2 is not None:
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipeline


@torch.no_grad()
def generate(
    pipeline: StableDiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    guidance_scale: float,
    num_inference_steps: int,
    negative_prompt: str = "",
    resolution: int | tuple[int, int] | None = None,
    batch_size: int = 4,
    progress: str | None = None,
) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order, ``resolution`` square or (width, height) (None: the
    pipeline's own size); ``progress`` names a bar (None: no bar)."""
    width, height = (resolution, resolution) if resolution is None or isinstance(resolution, int) else resolution
    if len(prompts) != len(seeds):
        raise ValueError("generate() takes one seed per prompt")
    pipeline.set_progress_bar_config(disable=True)  # one bar over images, not one per batch
    images: list[Image.Image] = []
    bar = tqdm(total=len(prompts), desc=progress, unit="img", disable=progress is None)
    for begin in range(0, len(prompts), batch_size):
        chunk = slice(begin, begin + batch_size)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[chunk]]
        out = pipeline(
            prompt=list(prompts[chunk]),
            negative_prompt=[negative_prompt] * len(generators) if negative_prompt else None,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            height=height,
            width=width,
            generator=generators,
            output_type="pil",
        )
        images.extend(out.images)
        bar.update(len(generators))
    bar.close()
    return images


def make_grid(
    images: Sequence[Image.Image],
    columns: int,
    row_labels: Sequence[str] | None = None,
    min_cell: int = 128,
) -> Image.Image:
    """Images in a grid (row-major), small images upscaled (nearest) to ``min_cell``, rows labelled."""
    rows = math.ceil(len(images) / columns)
    cell = max(min_cell, max(max(im.size) for im in images))
    label_width = 0
    font = ImageFont.load_default()
    if row_labels:
        label_width = min(360, 12 + max(int(font.getlength(label)) for label in row_labels))
    grid = Image.new("RGB", (label_width + columns * cell, rows * cell), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        row, col = divmod(i, columns)
        resample = Image.Resampling.NEAREST if max(image.size) < cell else Image.Resampling.LANCZOS
        grid.paste(image.resize((cell, cell), resample), (label_width + col * cell, row * cell))
    for row, label in enumerate(row_labels or []):
        draw.text((6, row * cell + cell // 2 - 6), _clip(label, font, label_width - 12), fill="black", font=font)
    return grid


def _clip(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"
