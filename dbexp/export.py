"""Owner of ``conf/export``: what a run leaves in ``<run dir>/pipeline/``.

* ``diffusers`` (always): a ``StableDiffusionPipeline`` folder (``from_pretrained``), or — with
  ``finetune=lora`` — diffusers' LoRA file (``load_lora_weights``) with ``dbexp.json`` naming the base model.
* ``single_file``: one ``.safetensors`` that AUTOMATIC1111 and ComfyUI load — the whole model in the original
  Stable Diffusion layout (``single_file.safetensors``; ``from_single_file`` reads it too), or the LoRA in
  kohya's names (``lora_kohya.safetensors``).

Every file is written in ``export.dtype`` (``auto``: the model's ``export_dtype``, float16 for SD models — what
people load; training keeps its own precision) and carries in its safetensors header what made it: dbexp's
version, the base model and revision, the run's training setting and its final metrics (``dbexp.*`` keys; the
kohya file also kohya's ``ss_network_*``). The folder appears whole or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from dbexp.atomic_files import atomic_path
from dbexp.console import format_bytes
from dbexp.errors import UserInputError

log = logging.getLogger(__name__)

#: Written beside the diffusers files: what ``dbexp.evaluate`` / ``dbexp.generate`` need to know about the model.
METADATA = "dbexp.json"
FORMATS = ("diffusers", "single_file")
DTYPES = ("float16", "bfloat16", "float32")  # torch's names, as dbexp.generate's dtype
#: The single file, by fine-tuning method.
SINGLE_FILE = {"full": "single_file.safetensors", "lora": "lora_kohya.safetensors"}


def check_export_config(cfg, model_cfg) -> None:
    """Config errors found before anything loads."""
    unknown = [f for f in cfg.formats if f not in FORMATS]
    if unknown or "diffusers" not in cfg.formats:
        raise UserInputError(
            f"export.formats={list(cfg.formats)}: list diffusers (what dbexp.generate and dbexp.evaluate load), "
            f"optionally with single_file"
        )
    if export_dtype(cfg, model_cfg) not in DTYPES:
        raise UserInputError(f"export.dtype={cfg.dtype}: use auto, {', '.join(DTYPES)}")


def check_export_parts(cfg, finetune_cfg, parts) -> None:
    """What only the loaded model tells (the text encoder's layout), right after loading, before training."""
    if cfg.enabled and "single_file" in cfg.formats and finetune_cfg.method == "full":
        from dbexp.original_layout import check_writable

        check_writable(parts.text_encoder, parts.text_encoder_2)


def export_dtype(cfg, model_cfg) -> str:
    return model_cfg.export_dtype if cfg.dtype == "auto" else cfg.dtype


def export_run(module, cfg, folder: str | Path, metrics: dict[str, Any]) -> Path:
    """The module's current weights (with the base model's sampler) into ``folder``, replacing an earlier export."""
    import torch

    from dbexp.finetune import save_lora
    from dbexp.model_loading import write_pipeline
    from dbexp.original_layout import lora_to_kohya, single_file_state

    finetune = module.finetune_cfg
    dtype = getattr(torch, export_dtype(cfg.export, cfg.model))
    header = safetensors_metadata(module, cfg, metrics)
    pointer = {"base_model": cfg.model.name, "eval_metrics": cfg.model.eval_metrics, "finetune": finetune.method}
    single = "single_file" in cfg.export.formats
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    with atomic_path(folder) as staging:
        staging.mkdir(parents=True)
        if finetune.method == "lora":
            pointer["base"] = {
                "pretrained": module.base_source,
                "revision": cfg.model.revision,
                "variant": cfg.model.variant,
                "vae": cfg.model.vae,  # the VAE it was trained with, when not the base's own
            }
            alpha = finetune.lora.alpha or finetune.lora.rank
            pointer["lora"] = {"rank": finetune.lora.rank, "alpha": alpha, "text_encoder": module.train_text_encoder}
            unet, text, text_2 = save_lora(
                module.unet, module.text_encoder, module.train_text_encoder, staging, module.text_encoder_2
            )
            if single:
                kohya_header = header | {
                    "ss_network_module": "networks.lora",
                    "ss_network_dim": str(finetune.lora.rank),
                    "ss_network_alpha": f"{alpha:g}",
                }
                xl_config = dict(module.unet.config) if module.xl else None  # SDXL: kohya's ldm names
                kohya = lora_to_kohya(unet, text, alpha, text_2, xl_config)
                save_safetensors(kohya, staging / SINGLE_FILE["lora"], dtype, kohya_header)
        else:
            write_pipeline(module.model_parts(), staging)
            if single:
                state = single_file_state(module.unet, module.vae, module.text_encoder, module.text_encoder_2)
                save_safetensors(state, staging / SINGLE_FILE["full"], dtype, header)
        for file in staging.rglob("*.safetensors"):
            if file.name not in SINGLE_FILE.values():
                rewrite_safetensors(file, dtype, header)
        (staging / METADATA).write_text(json.dumps(pointer, indent=2) + "\n")
        readable(staging)
    log.info("pipeline exported to %s", folder)
    return folder


def safetensors_metadata(module, cfg, metrics: dict[str, Any]) -> dict[str, str]:
    """What every exported file says about its making (string values, as safetensors headers hold):
    ``format: pt`` (transformers and diffusers check it), ``dbexp.*`` keys."""
    from dbexp import __version__
    from dbexp.config_roles import training_setting

    setting = training_setting(cfg)
    setting.get("model", {}).pop("architecture", None)  # the base's shape, named by dbexp.base_model already
    final = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {
        "format": "pt",
        "dbexp.version": __version__,
        "dbexp.base_model": str(module.base_source),
        "dbexp.base_revision": str(cfg.model.revision or ""),
        "dbexp.finetune": str(module.finetune_cfg.method),
        "dbexp.training": json.dumps(setting, sort_keys=True, default=str),
        "dbexp.metrics": json.dumps(dict(sorted(final.items()))),
    }


def save_safetensors(state: dict, path: Path, dtype, metadata: dict[str, str]) -> None:
    """``state`` written with its floating tensors in ``dtype`` (the one place exports are cast)."""
    from safetensors.torch import save_file

    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()}
    save_file(state, path, metadata=metadata)


def rewrite_safetensors(path: Path, dtype, metadata: dict[str, str]) -> None:
    """``path`` again with its floating tensors in ``dtype`` and ``metadata`` added to its header (one file's
    tensors in memory at a time, in the new dtype)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        header = (f.metadata() or {}) | metadata
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    tmp = path.with_name(f".{path.name}.tmp")
    save_safetensors(state, tmp, dtype, header)
    os.replace(tmp, path)


def readable(folder: Path) -> None:
    """Every file as the umask allows: safetensors writes its files 0600, which others on a shared server
    could not load."""
    mask = os.umask(0)
    os.umask(mask)
    for file in folder.rglob("*"):
        if file.is_file():
            file.chmod(0o666 & ~mask)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors file (``dbexp.*``: what made it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def describe_export(folder: Path) -> str:
    """``<folder> (LoRA weights + base pointer, 60.0 KiB)`` or ``<folder> (full pipeline, 6.7 MiB)``."""
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    kind = "full pipeline" if (folder / "model_index.json").is_file() else "LoRA weights + base pointer"
    singles = [name for name in SINGLE_FILE.values() if (folder / name).is_file()]
    extra = f", + {singles[0]}" if singles else ""
    return f"{folder} ({kind}{extra}, {format_bytes(size)})"
