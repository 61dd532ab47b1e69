"""Export of the fine-tuned model: a diffusers ``StableDiffusionPipeline`` folder (safetensors), or —
with ``finetune=lora`` — the LoRA weights alone with a pointer to the base model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from dbexp.atomic_files import atomic_path
from dbexp.console import format_bytes
from dbexp.finetune import save_lora
from dbexp.model_loading import save_pipeline

log = logging.getLogger(__name__)


#: Written beside the diffusers files: what ``dbexp.evaluate`` / ``dbexp.generate`` need to know about the model.
METADATA = "dbexp.json"


def export_pipeline(module, model_cfg, folder: str | Path) -> Path:
    """The module's current weights with the base model's sampler, replacing an earlier export."""
    cfg, finetune = model_cfg, module.finetune_cfg
    metadata = {"base_model": cfg.name, "eval_metrics": cfg.eval_metrics, "finetune": finetune.method}
    folder = Path(folder)
    if finetune.method == "lora":
        metadata["base"] = {"pretrained": module.base_source, "revision": cfg.revision, "variant": cfg.variant}
        lora = finetune.lora
        metadata["lora"] = {"rank": lora.rank, "alpha": lora.alpha, "text_encoder": module.train_text_encoder}
        if folder.exists():
            shutil.rmtree(folder)
        with atomic_path(folder) as staging:
            staging.mkdir(parents=True)
            save_lora(module.unet, module.text_encoder, module.train_text_encoder, staging)
            (staging / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    else:
        folder = save_pipeline(
            module.model_parts(), folder, replace=True, extra_files={METADATA: json.dumps(metadata, indent=2) + "\n"}
        )
    log.info("pipeline exported to %s", folder)
    return folder


def describe_export(folder: Path) -> str:
    """``<folder> (LoRA weights + base pointer, 60.0 KiB)`` or ``<folder> (full pipeline, 6.7 MiB)``."""
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    kind = "full pipeline" if (folder / "model_index.json").is_file() else "LoRA weights + base pointer"
    return f"{folder} ({kind}, {format_bytes(size)})"
