"""Export of the fine-tuned model: a diffusers ``StableDiffusionPipeline`` folder (safetensors)."""

from __future__ import annotations

import logging
from pathlib import Path

from dbexp.model_loading import save_pipeline

log = logging.getLogger(__name__)


def export_pipeline(module, folder: str | Path) -> Path:
    """The module's current weights with the base model's sampler, replacing an earlier export."""
    folder = save_pipeline(module.model_parts(), folder, replace=True)
    log.info("pipeline exported to %s", folder)
    return folder
