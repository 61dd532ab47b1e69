"""The original Stable Diffusion checkpoint layout (CompVis ``ldm`` module names), which AUTOMATIC1111, ComfyUI
and diffusers' ``from_single_file`` read, and kohya's LoRA key names — from diffusers' module names.

diffusers ships only the reading direction (``diffusers.loaders.single_file_utils``: original → diffusers); this
is the writing one, derived from each model's own config (levels, layers per level, which levels attend), so the
tiny and toy models convert by the same rules as SD1.5. The tests convert back with diffusers' readers and
compare every tensor.

Layout: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer.*``
(a CLIP text encoder, SD1.x). SDXL: ``conditioner.embedders.0.transformer.*`` (CLIP ViT-L) and
``conditioner.embedders.1.model.*`` (OpenCLIP bigG in OpenCLIP's own layout: fused q/k/v, ``resblocks``, the
projection transposed). SD2.x's OpenCLIP ViT-H (its last layer dropped by diffusers) is not written here:
:func:`check_writable` says so in one line.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
XL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
XL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

#: Inside a UNet residual block: diffusers name → ldm name.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
#: Inside an OpenCLIP residual block: diffusers (transformers' CLIP) name → OpenCLIP name (q/k/v are fused).
_OPEN_CLIP_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
#: Inside a VAE residual block and its attention.
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_prefixes(config: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(diffusers prefix, ldm prefix, renames inside it) for a ``UNet2DConditionModel`` config."""
    per = int(config["layers_per_block"])
    up_types = list(config["up_block_types"])
    out: list[tuple[str, str, dict[str, str]]] = [
        ("time_embedding.linear_1.", "time_embed.0.", {}),
        ("time_embedding.linear_2.", "time_embed.2.", {}),
        ("add_embedding.linear_1.", "label_emb.0.0.", {}),  # SDXL's micro-conditioning
        ("add_embedding.linear_2.", "label_emb.0.2.", {}),
        ("conv_in.", "input_blocks.0.0.", {}),
        ("conv_norm_out.", "out.0.", {}),
        ("conv_out.", "out.2.", {}),
        ("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET),
        ("mid_block.attentions.0.", "middle_block.1.", {}),
        ("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET),
    ]
    for i in range(len(config["block_out_channels"])):
        for j in range(per):  # input_blocks.0 is conv_in; each level has `per` layers and a downsampler
            block = (per + 1) * i + j + 1
            out += [
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0.", _UNET_RESNET),
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1.", {}),
            ]
        out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op.", {}))
        for j in range(per + 1):
            block = (per + 1) * i + j
            out += [
                (f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0.", _UNET_RESNET),
                (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1.", {}),
            ]
        after = 2 if "CrossAttn" in up_types[i] else 1  # the upsampler follows the attention, if there is one
        out.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{after}.", {}))
    return out


def vae_prefixes(config: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """The same for an ``AutoencoderKL`` config (the decoder's levels are numbered from the bottom in ldm)."""
    levels = len(config["block_out_channels"])
    per = int(config["layers_per_block"])
    out: list[tuple[str, str, dict[str, str]]] = []
    for side in ("encoder", "decoder"):
        out += [
            (f"{side}.conv_norm_out.", f"{side}.norm_out.", {}),
            (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", _VAE_ATTENTION),
            *((f"{side}.mid_block.resnets.{j}.", f"{side}.mid.block_{j + 1}.", _VAE_RESNET) for j in range(2)),
        ]
    for i in range(levels):
        out += [
            (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _VAE_RESNET) for j in range(per)
        ]
        out.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", {}))
        level = levels - 1 - i
        out += [
            (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{level}.block.{j}.", _VAE_RESNET)
            for j in range(per + 1)
        ]
        out.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{level}.upsample.", {}))
    return out


def rename(state: dict[str, torch.Tensor], prefixes: list[tuple[str, str, dict[str, str]]]) -> dict[str, torch.Tensor]:
    """``state``'s keys moved by the longest matching prefix (keys no prefix matches keep their name)."""
    ordered = sorted(prefixes, key=lambda p: len(p[0]), reverse=True)
    out = {}
    for key, value in state.items():
        for old, new, inside in ordered:
            if key.startswith(old):
                rest = key[len(old) :]
                for a, b in inside.items():
                    if rest.startswith(f"{a}."):
                        rest = b + rest[len(a) :]
                        break
                key = new + rest
                break
        out[key] = value
    return out


def vae_to_original(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = rename(state, vae_prefixes(config))
    for key, value in out.items():  # ldm's VAE attention projects with 1×1 convolutions, diffusers' with linears
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return out


def text_encoder_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIP text model under ``text_model.*`` (transformers ≥ 5.6 drops that level from ``CLIPTextModel``)."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}


def open_clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` (SDXL's OpenCLIP bigG) in OpenCLIP's layout — what diffusers'
    ``convert_open_clip_checkpoint`` reads back: q/k/v fused into ``in_proj_*``, the projection transposed."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        key = key.removeprefix("text_model.")
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.removeprefix("final_layer_norm.")] = value
        elif key.startswith("encoder.layers."):
            layer, rest = key.removeprefix("encoder.layers.").split(".", 1)
            block = f"transformer.resblocks.{layer}."
            projection, _, kind = rest.removeprefix("self_attn.").partition(".")
            if rest.startswith("self_attn.") and projection in ("q_proj", "k_proj", "v_proj"):
                fused.setdefault(f"{block}attn.in_proj_{kind}", {})[projection] = value
                continue
            for a, b in _OPEN_CLIP_BLOCK.items():
                if rest.startswith(f"{a}."):
                    rest = b + rest[len(a) :]
                    break
            out[block + rest] = value
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


def check_writable(text_encoder, text_encoder_2=None) -> None:
    """A text encoder whose original layout is not written here (SD2.x's OpenCLIP ViT-H, 1024 wide): one line.
    SDXL's pair (CLIP ViT-L + OpenCLIP bigG with projection) is written."""
    from dbexp.errors import UserInputError

    xl = text_encoder_2 is not None
    writable = type(text_encoder).__name__ == "CLIPTextModel" and (xl or int(text_encoder.config.hidden_size) != 1024)
    if xl:
        writable = writable and type(text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    if not writable:
        raise UserInputError(
            "export.formats=[single_file]: a full model's single file is written for SD1.x and SDXL text encoders "
            "only (SD2.x keeps OpenCLIP's layout); drop single_file (LoRA single files work for every model)"
        )


def single_file_state(unet, vae, text_encoder, text_encoder_2=None) -> dict[str, torch.Tensor]:
    """The whole pipeline's weights under their original-layout names (the tensors themselves, not copies;
    SDXL's OpenCLIP q/k/v fused into new ones)."""
    check_writable(text_encoder, text_encoder_2)
    parts = [
        (UNET_PREFIX, rename(unet.state_dict(), unet_prefixes(unet.config))),
        (VAE_PREFIX, vae_to_original(vae.state_dict(), vae.config)),
    ]
    if text_encoder_2 is None:
        parts.append((CLIP_PREFIX, text_encoder_to_original(text_encoder.state_dict())))
    else:
        parts.append((XL_CLIP_PREFIX, text_encoder_to_original(text_encoder.state_dict())))
        parts.append((XL_OPEN_CLIP_PREFIX, open_clip_to_original(text_encoder_2.state_dict())))
    return {prefix + key: value for prefix, state in parts for key, value in state.items()}


def lora_to_kohya(
    unet_layers: dict[str, torch.Tensor],
    text_encoder_layers: dict[str, torch.Tensor] | None,
    alpha: float,
    text_encoder_2_layers: dict[str, torch.Tensor] | None = None,
    unet_config: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """peft LoRA weights (``lora_A`` / ``lora_B``, as :func:`dbexp.finetune.save_lora` writes them) in kohya's
    names (``lora_unet_…`` / ``lora_te_…`` with ``lora_down`` / ``lora_up`` and an ``alpha`` per layer), which
    AUTOMATIC1111, ComfyUI and ``load_lora_weights`` read. diffusers' ``convert_state_dict_to_kohya`` does the
    renaming; the alpha is the run's (it writes alpha = rank) and the text encoder's prefix SD1.x's ``lora_te_``.
    SDXL (``unet_config`` given): kohya's SDXL names — the UNet's layers under their original (ldm) names
    (``lora_unet_input_blocks_4_1_…``), the text encoders as ``lora_te1_`` / ``lora_te2_``."""
    from diffusers.utils import convert_state_dict_to_kohya

    xl = unet_config is not None
    if xl:
        unet_layers = rename(unet_layers, unet_prefixes(unet_config))
    state = {f"unet.{k}": v for k, v in unet_layers.items()}
    for key, value in (text_encoder_layers or {}).items():
        state[f"text_encoder.{text_encoder_to_original({key: value}).popitem()[0]}"] = value
    for key, value in (text_encoder_2_layers or {}).items():
        state[f"text_encoder_2.{key}"] = value
    kohya = convert_state_dict_to_kohya(state)
    out = {}
    for key, value in kohya.items():
        if not xl:
            key = key.replace("lora_te1_", "lora_te_", 1)
        out[key] = torch.tensor(float(alpha)) if key.endswith(".alpha") else value
    return out
