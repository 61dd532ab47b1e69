"""Export of the fine-tuned model: a diffusers ``StableDiffusionPipeline`` folder (safetensors)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dbexp.model_loading import save_pipeline

log = logging.getLogger(__name__)


#: Written beside the diffusers files: what ``dbexp.evaluate`` needs to know about the model.
METADATA = "dbexp.json"


def export_pipeline(module, folder: str | Path) -> Path:
    """The module's current weights with the base model's sampler, replacing an earlier export."""
    metadata = {"base_model": module.model_cfg.name, "eval_metrics": module.model_cfg.eval_metrics}
    folder = save_pipeline(
        module.model_parts(), folder, replace=True, extra_files={METADATA: json.dumps(metadata, indent=2) + "\n"}
    )
    log.info("pipeline exported to %s", folder)
    return folder
