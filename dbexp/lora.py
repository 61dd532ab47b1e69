"""LoRA fine-tuning (``model.finetune=lora``, schema :class:`LoraSettings` under ``model.lora``).

Adapters come from peft through the diffusers and transformers integrations (``add_adapter``), as in
diffusers' DreamBooth LoRA example: the base weights stay frozen, only the low-rank matrices train.
The export is diffusers' LoRA format (``pytorch_lora_weights.safetensors``, written by
``StableDiffusionPipeline.save_lora_weights``) plus ``dbexp.json`` naming the base model, so
``StableDiffusionPipeline.load_lora_weights`` puts it on the base model and ``dbexp.generate`` /
``dbexp.evaluate`` load it like a full pipeline folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dbexp.errors import UserInputError

FINETUNE_MODES = ("full", "lora")
#: The file ``save_lora_weights`` writes (diffusers' LoRA format).
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class LoraSettings:
    """Schema of ``model.lora`` (used with ``model.finetune=lora``)."""

    rank: int = 4
    alpha: float | None = None  # null: = rank (scale 1)
    dropout: float = 0.0
    unet_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    text_encoder_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])


def check_lora_settings(finetune: str, lora: LoraSettings) -> None:
    if finetune not in FINETUNE_MODES:
        raise UserInputError(f"model.finetune={finetune}: use one of {', '.join(FINETUNE_MODES)}")
    if finetune != "lora":
        return
    if lora.rank < 1:
        raise UserInputError(f"model.lora.rank={lora.rank}: must be >= 1 (4-64 is usual)")
    if lora.alpha is not None and lora.alpha <= 0:
        raise UserInputError(f"model.lora.alpha={lora.alpha}: must be > 0 (or null for alpha = rank)")
    if not 0 <= lora.dropout < 1:
        raise UserInputError(f"model.lora.dropout={lora.dropout}: must be in [0, 1)")
    for key in ("unet_target_modules", "text_encoder_target_modules"):
        if not getattr(lora, key):
            raise UserInputError(
                f"model.lora.{key} is empty: name the layers to adapt, e.g. to_q, to_k, to_v, to_out.0"
            )


def check_lora_targets(finetune: str, lora: LoraSettings, unet, text_encoder, text_encoder_too: bool) -> None:
    """Every target names a layer of the loaded model (as peft matches them: the full name or its last
    dotted parts) — checked right after loading, before class images and training."""
    if finetune != "lora":
        return
    pairs = [("unet_target_modules", unet)] + (
        [("text_encoder_target_modules", text_encoder)] if text_encoder_too else []
    )
    for key, model in pairs:
        names = [name for name, _ in model.named_modules()]
        missing = [t for t in getattr(lora, key) if not any(n == t or n.endswith(f".{t}") for n in names)]
        if missing:
            raise UserInputError(
                f"model.lora.{key}={list(getattr(lora, key))}: no layer named {', '.join(missing)} in the "
                f"{key.removesuffix('_target_modules').replace('_', ' ')} (e.g. to_q, to_k, to_v, to_out.0, conv1)"
            )


def attach_adapters(unet, text_encoder, lora: LoraSettings, text_encoder_too: bool) -> None:
    """Freeze the base weights and add trainable LoRA adapters to the UNet (and the text encoder)."""
    from peft import LoraConfig

    def config(targets: list[str]) -> LoraConfig:
        return LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
            lora_dropout=lora.dropout,
            init_lora_weights="gaussian",  # A ~ N(0, 1/r), B = 0: training starts at the base model
            target_modules=list(targets),
        )

    # peft raises only when no target matches; a misspelt one beside good ones would be skipped silently.
    check_lora_targets("lora", lora, unet, text_encoder, text_encoder_too)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.add_adapter(config(lora.unet_target_modules))
    if text_encoder_too:
        text_encoder.add_adapter(config(lora.text_encoder_target_modules))


def save_lora(unet, text_encoder, text_encoder_too: bool, folder: Path) -> Path:
    """The adapters in diffusers' LoRA format (what ``load_lora_weights`` reads) into ``folder``."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    def layers(model):
        # peft's key names (lora_A / lora_B), which load_lora_weights reads as they are. Not converted to
        # the older lora.down / lora.up names: that conversion renames linear layers only, and a file
        # mixing both (adapters on convolutions too) loads with the attention adapters silently dropped.
        state = get_peft_model_state_dict(model, save_embedding_layers=False)  # adapters only, never embeddings
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=layers(unet),
        text_encoder_lora_layers=layers(text_encoder) if text_encoder_too else None,
        safe_serialization=True,
    )
    return folder / LORA_WEIGHTS


def is_lora_export(folder: Path) -> bool:
    return (folder / LORA_WEIGHTS).is_file() and not (folder / "model_index.json").is_file()
