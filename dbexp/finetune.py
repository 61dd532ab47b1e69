"""Owner of ``conf/finetune``: how the base weights train — all of them (``full``) or LoRA adapters
(``lora``), with or without the text encoder, and the loss options min-SNR-γ and offset noise.

Adapters come from peft through the diffusers and transformers integrations (``add_adapter``), as in
diffusers' DreamBooth LoRA example: the base weights stay frozen, only the low-rank matrices train.
The export is diffusers' LoRA format (``pytorch_lora_weights.safetensors``, written by
``StableDiffusionPipeline.save_lora_weights``) plus ``dbexp.json`` naming the base model, so
``StableDiffusionPipeline.load_lora_weights`` puts it on the base model and ``dbexp.generate`` /
``dbexp.evaluate`` load it like a full pipeline folder.
"""

from __future__ import annotations

from pathlib import Path

from dbexp.config import FinetuneConfig
from dbexp.errors import UserInputError

METHODS = ("full", "lora")
#: The file ``save_lora_weights`` writes (diffusers' LoRA format).
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def check_finetune_config(cfg: FinetuneConfig) -> None:
    """Config errors found before anything loads."""
    if cfg.method not in METHODS:
        raise UserInputError(f"finetune.method={cfg.method}: use one of {', '.join(METHODS)}")
    if cfg.min_snr_gamma is not None and cfg.min_snr_gamma <= 0:
        raise UserInputError(f"finetune.min_snr_gamma={cfg.min_snr_gamma}: must be > 0 (or null to disable)")
    if cfg.method != "lora":
        return
    lora = cfg.lora
    if lora.rank < 1:
        raise UserInputError(f"finetune.lora.rank={lora.rank}: must be >= 1 (4-64 is usual)")
    if lora.alpha is not None and lora.alpha <= 0:
        raise UserInputError(f"finetune.lora.alpha={lora.alpha}: must be > 0 (or null for alpha = rank)")
    if not 0 <= lora.dropout < 1:
        raise UserInputError(f"finetune.lora.dropout={lora.dropout}: must be in [0, 1)")
    for key in ("unet_target_modules", "text_encoder_target_modules"):
        if not getattr(lora, key):
            raise UserInputError(
                f"finetune.lora.{key} is empty: name the layers to adapt, e.g. to_q, to_k, to_v, to_out.0"
            )


def check_lora_targets(cfg: FinetuneConfig, unet, text_encoder, text_encoder_2=None) -> None:
    """Every target names a layer of the loaded model (as peft matches them: the full name or its last
    dotted parts) — checked right after loading, before class images and training. SDXL's second text
    encoder takes the same targets as the first."""
    if cfg.method != "lora":
        return
    lora = cfg.lora
    encoders = [e for e in (text_encoder, text_encoder_2) if e is not None] if cfg.train_text_encoder else []
    pairs = [("unet_target_modules", unet)] + [("text_encoder_target_modules", e) for e in encoders]
    for key, model in pairs:
        names = [name for name, _ in model.named_modules()]
        missing = [t for t in getattr(lora, key) if not any(n == t or n.endswith(f".{t}") for n in names)]
        if missing:
            raise UserInputError(
                f"finetune.lora.{key}={list(getattr(lora, key))}: no layer named {', '.join(missing)} in the "
                f"{key.removesuffix('_target_modules').replace('_', ' ')} (e.g. to_q, to_k, to_v, to_out.0, conv1)"
            )


def set_trainable(cfg: FinetuneConfig, unet, text_encoder, text_encoder_2=None) -> None:
    """``full``: the UNet's weights (and the text encoders') train; ``lora``: the base weights are frozen and
    trainable LoRA adapters are added to the UNet (and the text encoders: SDXL's both)."""
    encoders = [e for e in (text_encoder, text_encoder_2) if e is not None]
    if cfg.method != "lora":
        unet.requires_grad_(True)
        for encoder in encoders:
            encoder.requires_grad_(cfg.train_text_encoder)
        return
    from peft import LoraConfig

    lora = cfg.lora

    def config(targets: list[str]) -> LoraConfig:
        return LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
            lora_dropout=lora.dropout,
            init_lora_weights="gaussian",  # A ~ N(0, 1/r), B = 0: training starts at the base model
            target_modules=list(targets),
        )

    # peft raises only when no target matches; a misspelt one beside good ones would be skipped silently.
    check_lora_targets(cfg, unet, text_encoder, text_encoder_2)
    unet.requires_grad_(False)
    for encoder in encoders:
        encoder.requires_grad_(False)
    unet.add_adapter(config(lora.unet_target_modules))
    for encoder in encoders if cfg.train_text_encoder else ():
        encoder.add_adapter(config(lora.text_encoder_target_modules))


def save_lora(
    unet, text_encoder, text_encoder_too: bool, folder: Path, text_encoder_2=None
) -> tuple[dict, dict | None, dict | None]:
    """The adapters in diffusers' LoRA format (what ``load_lora_weights`` reads) into ``folder`` (SDXL's
    with its second text encoder's); returns the UNet's and each text encoder's adapter weights (peft's
    names; None where none train)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    def layers(model):
        # peft's key names (lora_A / lora_B), which load_lora_weights reads as they are. Not converted to
        # the older lora.down / lora.up names: that conversion renames linear layers only, and a file
        # mixing both (adapters on convolutions too) loads with the attention adapters silently dropped.
        state = get_peft_model_state_dict(model, save_embedding_layers=False)  # adapters only, never embeddings
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def adapter_config(model) -> dict:
        # rank, alpha, targets in the file's header: without them load_lora_weights takes alpha = rank
        (config,) = model.peft_config.values()
        return config.to_dict()

    unet_layers = layers(unet)
    text_layers = layers(text_encoder) if text_encoder_too else None
    second = {}
    text_2_layers = layers(text_encoder_2) if text_encoder_2 is not None and text_encoder_too else None
    if text_encoder_2 is not None:
        second = {
            "text_encoder_2_lora_layers": text_2_layers,
            "text_encoder_2_lora_adapter_metadata": adapter_config(text_encoder_2) if text_encoder_too else None,
        }
    pipeline = StableDiffusionXLPipeline if text_encoder_2 is not None else StableDiffusionPipeline
    pipeline.save_lora_weights(
        folder,
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=text_layers,
        safe_serialization=True,
        unet_lora_adapter_metadata=adapter_config(unet),
        text_encoder_lora_adapter_metadata=adapter_config(text_encoder) if text_encoder_too else None,
        **second,
    )
    return unet_layers, text_layers, text_2_layers


def is_lora_export(folder: Path) -> bool:
    return (folder / LORA_WEIGHTS).is_file() and not (folder / "model_index.json").is_file()
