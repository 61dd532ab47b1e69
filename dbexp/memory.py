"""Owner of ``conf/memory``: what trades speed (or nothing) for GPU memory during training.

The presets (``memory=24gb|16gb|12gb``) are named by the GPU they are meant to fit (SD1.5 at
512 px, batch 1 + 1 class image); they also set mixed precision (``trainer.precision``) and the
latent / text-embedding caches (``data.cache_*``), which are not this group's keys but belong to a
tier. This module applies the keys of its own schema, :class:`MemoryConfig`.
"""

from __future__ import annotations

from dbexp.config import MemoryConfig
from dbexp.errors import UserInputError
from dbexp.extras import require

ATTENTION = ("sdpa", "eager")
HALF_DTYPES = ("bfloat16", "float16")  # memory.lora_base_dtype's explicit values (torch's names)
#: The half type each mixed trainer.precision computes in (Lightning's names and their short aliases).
MIXED_PRECISION = {"bf16-mixed": "bfloat16", "bf16": "bfloat16", "16-mixed": "float16", "16": "float16"}


def check_memory_config(cfg: MemoryConfig, optimizer_name: str, precision: str | int | None = None) -> None:
    """Config errors (and a missing bitsandbytes) found before anything loads."""
    if cfg.attention not in ATTENTION:
        raise UserInputError(f"memory.attention={cfg.attention}: use one of {', '.join(ATTENTION)}")
    if cfg.lora_base_dtype not in (None, "auto", *HALF_DTYPES):
        raise UserInputError(f"memory.lora_base_dtype={cfg.lora_base_dtype}: use null, auto, {', '.join(HALF_DTYPES)}")
    if cfg.lora_base_dtype in HALF_DTYPES and cfg.lora_base_dtype != MIXED_PRECISION.get(str(precision)):
        raise UserInputError(
            f"memory.lora_base_dtype={cfg.lora_base_dtype} needs autocast in that type, but trainer.precision="
            f"{precision}: use memory.lora_base_dtype=auto (it follows trainer.precision) or null"
        )
    if cfg.optimizer_8bit:
        if optimizer_name != "adamw":
            raise UserInputError(
                f"memory.optimizer_8bit=true is 8-bit AdamW, but optimizer.name={optimizer_name}: "
                "use optimizer=adamw, or memory.optimizer_8bit=false"
            )
        adamw_8bit_class()


def adamw_8bit_class():
    """bitsandbytes' ``AdamW8bit`` (the ``memory`` extra) — or one line saying how to get it."""
    require("memory", "memory.optimizer_8bit=true", instead="set memory.optimizer_8bit=false")
    from bitsandbytes.optim import AdamW8bit

    return AdamW8bit


def half_base_dtype(cfg: MemoryConfig, finetune_method: str, precision: str | int | None):
    """The torch dtype LoRA's frozen base weights are held in (``memory.lora_base_dtype``; ``auto``: the half
    type a mixed ``trainer.precision`` computes in), or None (float32, as loaded)."""
    import torch

    if finetune_method != "lora" or cfg.lora_base_dtype is None:
        return None
    name = MIXED_PRECISION.get(str(precision)) if cfg.lora_base_dtype == "auto" else cfg.lora_base_dtype
    return getattr(torch, name) if name else None


def hold_frozen_in(dtype, models: list) -> int:
    """Casts the frozen parameters of ``models`` (the base weights around LoRA's adapters) to ``dtype``; the
    trained ones (the adapters) stay as they are. Returns the bytes saved."""
    saved = 0
    for model in models:
        for parameter in model.parameters():
            if not parameter.requires_grad and parameter.dtype != dtype:
                before = parameter.nbytes
                parameter.data = parameter.data.to(dtype)
                saved += before - parameter.nbytes
    return saved


def apply_memory_settings(cfg: MemoryConfig, unet, vae, text_encoders: list, text_encoder_trains: bool) -> None:
    """Attention kernels and activation checkpointing on the model parts (before training starts); SDXL has
    two ``text_encoders``."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0 if cfg.attention == "sdpa" else AttnProcessor
    for model in (unet, vae):
        model.set_attn_processor(processor())
    for text_encoder in text_encoders:
        text_encoder.set_attn_implementation("sdpa" if cfg.attention == "sdpa" else "eager")
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for text_encoder in text_encoders if text_encoder_trains else ():
            # Non-reentrant (its default here): with LoRA the encoder's inputs need no grad, which reentrant
            # checkpointing would take as "nothing to differentiate", dropping the adapters' gradients.
            text_encoder.activation_checkpointing_enable()
