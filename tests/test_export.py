"""Exports people load (dbexp.export): the diffusers folder, one file in the original Stable Diffusion layout
(from_single_file draws what the folder draws), LoRA in kohya's names (load_lora_weights draws the same),
export.dtype, and what every file's header says about its making."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from dbexp import __version__
from dbexp.errors import UserInputError
from dbexp.export import SINGLE_FILE, export_dtype, read_metadata
from dbexp.original_layout import UNET_PREFIX, VAE_PREFIX, rename, unet_prefixes, vae_to_original
from dbexp.run import plan_run
from dbexp.train import run
from tests.conftest import CONF

PROMPT = "a photo of sks dog"
UMASK = os.umask(0)
os.umask(UMASK)
SINGLE = ["export.formats=[diffusers,single_file]"]


def _draw(pipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipeline(PROMPT, num_inference_steps=3, generator=generator, output_type="np").images


def _load(folder, **kwargs):
    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False, **kwargs)


def _check_headers(folder: Path, dtype: torch.dtype, metrics: dict) -> None:
    files = sorted(folder.rglob("*.safetensors"))
    assert files
    for file in files:
        assert file.stat().st_mode & 0o777 == 0o666 & ~UMASK, file  # as the umask allows (not safetensors' 0600)
        meta = read_metadata(file)
        assert meta["format"] == "pt" and meta["dbexp.version"] == __version__, file
        assert json.loads(meta["dbexp.metrics"])["train/loss"] == pytest.approx(metrics["train/loss"])
        assert json.loads(meta["dbexp.training"])["optimizer"]["lr"] > 0
        assert "model.diffusion_model" not in meta["dbexp.training"]
        with safe_open(file, framework="pt") as f:
            floats = {f.get_slice(k).get_dtype() for k in f.keys()} - {"I64"}  # noqa: SIM118
        assert floats == {str(dtype).removeprefix("torch.").replace("float", "F")}, (file, floats)


def test_full_export_in_float16_with_a_single_file_that_draws_the_same(make_cfg):
    cfg = make_cfg(*SINGLE, "export.dtype=float16", "eval.final=false")
    metrics = run(cfg)
    folder = Path(cfg.paths.output_dir) / "pipeline"
    single = folder / SINGLE_FILE["full"]
    assert (folder / "model_index.json").is_file() and single.is_file()
    _check_headers(folder, torch.float16, metrics)
    assert (
        read_metadata(single)["dbexp.base_model"]
        == read_metadata(folder / "unet" / "diffusion_pytorch_model.safetensors")["dbexp.base_model"]
    )

    # diffusers' own readers take the single file back to exactly the folder's tensors.
    state = load_file(single)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    for model, back in (
        (unet, convert_ldm_unet_checkpoint(state, unet.config)),
        (vae, convert_ldm_vae_checkpoint(state, vae.config)),
    ):
        own = model.state_dict()
        assert set(back) == set(own)
        for key, value in own.items():
            torch.testing.assert_close(back[key].reshape(value.shape).float(), value, rtol=0, atol=0)
    text = convert_ldm_clip_checkpoint(state)
    assert text and all(k.startswith("text_model.") for k in text)

    # from_single_file (with the folder's configs, offline) draws the folder's picture.
    from_folder = _draw(_load(folder))
    from_single = StableDiffusionPipeline.from_single_file(
        single, config=str(folder), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    np.testing.assert_allclose(_draw(from_single), from_folder, atol=1e-6)


def test_lora_single_file_in_kohya_names_draws_what_the_diffusers_file_draws(make_cfg):
    lora = ["finetune.method=lora", "finetune.train_text_encoder=true", "finetune.lora.rank=2"]
    cfg = make_cfg(*lora, "finetune.lora.alpha=4", "optimizer.lr=1e-2", *SINGLE, "eval.final=false")
    metrics = run(cfg)
    folder = Path(cfg.paths.output_dir) / "pipeline"
    kohya = folder / SINGLE_FILE["lora"]
    _check_headers(folder, torch.float32, metrics)  # model=tiny: float32
    meta = read_metadata(kohya)
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("2", "4")
    state = load_file(kohya)
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in state)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in state)
    assert {float(v) for k, v in state.items() if k.endswith(".alpha")} == {4.0}

    base = json.loads((folder / "dbexp.json").read_text())["base"]["pretrained"]
    pipeline = _load(base)
    plain = _draw(pipeline)
    pipeline.load_lora_weights(folder)
    from_diffusers = _draw(pipeline)
    pipeline = _load(base)
    pipeline.load_lora_weights(str(folder), weight_name=kohya.name)
    from_kohya = _draw(pipeline)
    np.testing.assert_allclose(from_kohya, from_diffusers, atol=1e-5)
    assert np.abs(from_kohya - plain).max() > 1e-2  # the adapters (UNet and text encoder) are on


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("export.formats=[single_file]", "list diffusers"),
        ("export.formats=[diffusers,ckpt]", "list diffusers"),
        ("export.dtype=fp8", "export.dtype=fp8: use auto, float16"),
    ],
)
def test_bad_export_settings_are_one_line_errors(make_cfg, override, message):
    with pytest.raises(UserInputError, match=message):
        plan_run(make_cfg(override))


def test_export_dtype_follows_the_model(make_cfg):
    tiny = make_cfg()
    assert export_dtype(tiny.export, tiny.model) == "float32"
    sd15 = make_cfg("model=sd15", fast=False)
    assert export_dtype(sd15.export, sd15.model) == "float16"
    assert export_dtype(make_cfg("model=sd15", "export.dtype=float32", fast=False).export, sd15.model) == "float32"


@pytest.mark.parametrize("model", ["sd15", "sd21"])
def test_original_layout_of_the_real_architectures_reads_back_key_for_key(model):
    """On the meta device (no memory): every UNet and VAE tensor of SD1.5 / SD2.1 gets an original-layout name
    that diffusers' reader maps back to it, and the names are SD's own."""
    arch = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{model}.yaml"))["architecture"]
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**arch["unet"]), AutoencoderKL(**arch["vae"])
    state = {UNET_PREFIX + k: v for k, v in rename(unet.state_dict(), unet_prefixes(unet.config)).items()}
    state |= {VAE_PREFIX + k: v for k, v in vae_to_original(vae.state_dict(), vae.config).items()}
    assert set(convert_ldm_unet_checkpoint(state, unet.config)) == set(unet.state_dict())
    assert set(convert_ldm_vae_checkpoint(state, vae.config)) == set(vae.state_dict())
    for key in (  # names from the released SD checkpoints
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.middle_block.2.out_layers.3.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
    ):
        assert key in state, key
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4


def test_a_full_single_file_of_an_sd2_text_encoder_is_refused_in_one_line():
    from transformers import CLIPTextConfig, CLIPTextModel

    from dbexp.original_layout import check_writable

    small = dict(vocab_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    check_writable(CLIPTextModel(CLIPTextConfig(hidden_size=32, **small)))
    with pytest.raises(UserInputError, match="SD2.x keeps OpenCLIP's layout"):
        check_writable(CLIPTextModel(CLIPTextConfig(hidden_size=1024, **small)))  # SD2.x's width
