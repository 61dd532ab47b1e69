"""Export of the fine-tuned model: a diffusers ``StableDiffusionPipeline`` folder (safetensors)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from dbexp.model_loading import ModelParts, save_pipeline

log = logging.getLogger(__name__)


def export_pipeline(module, folder: str | Path) -> Path:
    """Write the module's current weights with the base model's sampler; the folder appears whole or not at all."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    parts = ModelParts(
        tokenizer=module.tokenizer,
        text_encoder=module.text_encoder,
        vae=module.vae,
        unet=module.unet,
        noise_scheduler=module.noise_scheduler,
        inference_scheduler=module.inference_scheduler,
        source="fine-tuned",
    )
    try:
        save_pipeline(parts, staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("pipeline exported to %s", folder)
    return folder
