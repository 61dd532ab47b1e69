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


def check_memory_config(cfg: MemoryConfig, optimizer_name: str) -> None:
    """Config errors (and a missing bitsandbytes) found before anything loads."""
    if cfg.attention not in ATTENTION:
        raise UserInputError(f"memory.attention={cfg.attention}: use one of {', '.join(ATTENTION)}")
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
