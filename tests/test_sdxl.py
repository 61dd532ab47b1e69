"""SDXL's parts: the full architecture's size (meta device, nothing allocated) and a tiny SDXL built from
config, saved in diffusers layout and loaded through the loader every model takes."""

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from transformers import CLIPTextModelWithProjection

from dbexp.model_loading import load_components, materialize_architecture, parameter_counts
from dbexp.train import run
from tests.conftest import compose_train


def test_the_sdxl_architecture_has_the_released_parameter_counts(tmp_path):
    cfg = compose_train(tmp_path, tmp_path / "cache", "model=sdxl", "model.init=random")
    counts = parameter_counts(cfg.model.architecture)
    assert counts == {
        "unet": 2_567_463_684,  # stabilityai/stable-diffusion-xl-base-1.0's UNet
        "vae": 83_653_863,
        "text_encoder": 123_060_480,  # CLIP ViT-L/14 (SD1.5's)
        "text_encoder_2": 694_659_840,  # OpenCLIP ViT-bigG/14 with its projection
    }


def test_a_tiny_sdxl_is_saved_in_diffusers_layout_and_loads_through_the_same_loader(tmp_path):
    cfg = compose_train(tmp_path, tmp_path / "cache", "model=tiny_xl")
    folder = materialize_architecture("tiny_xl", cfg.model.architecture, tmp_path / "cache")
    parts = load_components(str(folder))
    assert parts.xl and isinstance(parts.text_encoder_2, CLIPTextModelWithProjection)
    assert {"tokenizer_2", "text_encoder_2"} <= set(parts.identity)
    assert parts.unet.config.addition_embed_type == "text_time"
    pipeline = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)  # diffusers' own reader
    drawn = [
        p(
            prompt="a photo of a sks dog",
            num_inference_steps=2,
            height=32,
            width=32,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        ).images
        for p in (pipeline, parts.pipeline())
    ]
    assert drawn[0].shape == (1, 3, 32, 32) and torch.equal(drawn[0], drawn[1])


def test_sdxl_text_conditioning_is_the_pipelines_and_is_cached_with_the_pooled_embedding(tmp_path):
    from dbexp.encoding_cache import cached_text_embeddings, encode_text, token_ids

    cfg = compose_train(tmp_path, tmp_path / "cache", "model=tiny_xl")
    parts = load_components(str(materialize_architecture("tiny_xl", cfg.model.architecture, tmp_path / "cache")))
    prompt = "a photo of a sks dog"
    with torch.no_grad():
        states, _, pooled, _ = parts.pipeline().encode_prompt(prompt, do_classifier_free_guidance=False)
        mine = encode_text(parts.text_encoder, text_encoder_2=parts.text_encoder_2, **token_ids(parts, prompt))
    assert mine["states"].shape == (1, 77, 64) and mine["pooled"].shape == (1, 32)
    assert torch.equal(mine["states"], states) and torch.equal(mine["pooled"], pooled)
    first = cached_text_embeddings(parts, [prompt, "a photo of a dog"], tmp_path / "cache")
    files = sorted((tmp_path / "cache" / "text").iterdir())
    again = cached_text_embeddings(parts, [prompt], tmp_path / "cache")
    assert len(files) == 2 and sorted((tmp_path / "cache" / "text").iterdir()) == files  # found, not recomputed
    assert torch.equal(first[0]["pooled"], mine["pooled"]) and torch.equal(again[0]["states"], mine["states"])


XL = ["model=tiny_xl", "eval.metrics=tiny", "eval.val_every_n_steps=2"]


def _csv_losses(cfg):
    import csv

    rows = csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open())
    return [float(r[k]) for r in rows if r["train/loss"] for k in ("train/loss_instance", "train/loss_prior")]


def test_sdxl_trains_with_prior_and_the_caches_change_no_loss(make_cfg, tmp_path):
    """Full fine-tune of a tiny SDXL (both text encoders, pooled embedding and time ids) with prior
    preservation: the same losses with and without the latent and text caches; the export loads with
    diffusers' SDXL pipeline and through dbexp.generate's loader."""
    from dbexp.generate import load_pipeline

    common = [*XL, "data.random_flip=true", "trainer.max_steps=4", f"paths.cache_dir={tmp_path / 'cache'}"]
    plain = make_cfg(*common, "data.cache_latents=false", "data.cache_text_embeddings=false", name="plain")
    cached = make_cfg(*common, "eval.final=false", "export.enabled=false", name="cached")
    metrics = run(plain)
    run(cached)
    assert _csv_losses(cached) == pytest.approx(_csv_losses(plain), rel=1e-5, abs=1e-6) and len(_csv_losses(plain)) == 8
    assert len(list((tmp_path / "cache" / "text").glob("*.safetensors"))) == 2  # states + pooled, per prompt
    assert metrics["val/loss_prior"] > 0 and "eval/score" in metrics
    export = Path(plain.paths.output_dir) / "pipeline"
    pipeline = StableDiffusionXLPipeline.from_pretrained(export, local_files_only=True)
    assert isinstance(load_pipeline(str(export), "cpu", "float32"), StableDiffusionXLPipeline)
    assert pipeline.text_encoder_2 is not None


def test_sdxl_lora_on_the_unet_and_both_text_encoders_loads_with_load_lora_weights(make_cfg):
    import numpy as np

    from dbexp.generate import load_pipeline
    from dbexp.model_loading import load_model
    from dbexp.run import make_module, plan_run

    lora = ["finetune.method=lora", "finetune.train_text_encoder=true", "finetune.lora.rank=2", "optimizer.lr=1e-2"]
    cfg = make_cfg(*XL, *lora, "eval.final=false")
    run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"unet", "text_encoder", "text_encoder_2"}

    def draw(pipeline):
        generator = torch.Generator().manual_seed(0)
        return pipeline("a photo of sks dog", num_inference_steps=2, generator=generator, output_type="np").images

    module = make_module(cfg, plan_run(cfg), load_model(cfg.model, cfg.paths.cache_dir), None)
    module.load_state_dict(ckpt["state_dict"], strict=False)
    with module.sampling() as live:
        trained = draw(live)
    loaded = load_pipeline(str(run_dir / "pipeline"), "cpu", "float32")  # the base it names + the adapters
    np.testing.assert_allclose(draw(loaded), trained, atol=1e-5)


def test_the_time_ids_come_from_each_photos_real_crop():
    from PIL import Image

    from dbexp.datamodule import ImageStream, center_geometry

    wide = Image.new("RGB", (300, 200))  # resized to 48 x 32, centre crop 32 x 32 from x = 8
    stream = ImageStream([wide], 0, 0, 32, center_crop=True, random_flip=False)
    assert stream[0]["geometry"].tolist() == [200, 300, 0, 8, 32, 32] == center_geometry(wide, (32, 32)).tolist()
    flipped = ImageStream([wide], 0, 0, 32, center_crop=False, random_flip=True)
    for index in range(8):  # random crops: the left edge as the model sees it (mirrored when flipped)
        top, left = flipped[index]["geometry"].tolist()[2:4]
        assert top == 0 and 0 <= left <= 16


#: tiny_xl with its two text encoders of different widths, as SDXL's (768 / 1280): diffusers' single-file reader
#: tells the two apart by width.
WIDER_SECOND = ["model.architecture.text_encoder_2.hidden_size=48", "model.architecture.unet.cross_attention_dim=80"]


def test_a_full_sdxl_single_file_in_the_original_layout_draws_what_the_folder_draws(make_cfg):
    import numpy as np
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from dbexp.export import SINGLE_FILE
    from dbexp.original_layout import XL_CLIP_PREFIX, XL_OPEN_CLIP_PREFIX

    cfg = make_cfg(*XL, *WIDER_SECOND, "export.formats=[diffusers,single_file]", "eval.final=false")
    run(cfg)
    folder = Path(cfg.paths.output_dir) / "pipeline"
    state = load_file(folder / SINGLE_FILE["full"])
    assert any(k.startswith(XL_CLIP_PREFIX + "text_model.encoder.layers.0.") for k in state)
    assert f"{XL_OPEN_CLIP_PREFIX}transformer.resblocks.0.attn.in_proj_weight" in state  # OpenCLIP's fused q/k/v
    assert state[f"{XL_OPEN_CLIP_PREFIX}text_projection"].shape == (48, 32)  # (width, projection): transposed
    assert any(k.startswith("model.diffusion_model.label_emb.0.0.") for k in state)  # the added conditioning

    def draw(pipeline):
        generator = torch.Generator().manual_seed(0)
        return pipeline("a photo of sks dog", num_inference_steps=2, generator=generator, output_type="np").images

    from_folder = draw(StableDiffusionXLPipeline.from_pretrained(folder))
    single = StableDiffusionXLPipeline.from_single_file(
        folder / SINGLE_FILE["full"], config=str(folder), local_files_only=True
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):  # every tensor back where it was
        own = getattr(StableDiffusionXLPipeline.from_pretrained(folder), name).state_dict()
        back = getattr(single, name).state_dict()
        for key, value in own.items():
            torch.testing.assert_close(back[key], value, rtol=0, atol=0, msg=f"{name}.{key}")
    # every tensor is identical (above); the modules from_single_file builds may compute in another order
    # (measured: up to 1.9e-6 apart with one torch thread, 0 with two)
    np.testing.assert_allclose(draw(single), from_folder, atol=1e-5)


def test_an_sdxl_lora_in_kohya_names_draws_what_the_diffusers_file_draws(make_cfg):
    import json

    import numpy as np
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from dbexp.export import SINGLE_FILE

    lora = ["finetune.method=lora", "finetune.train_text_encoder=true", "finetune.lora.rank=2", "optimizer.lr=1e-2"]
    cfg = make_cfg(*XL, *lora, "export.formats=[diffusers,single_file]", "eval.final=false")
    run(cfg)
    folder = Path(cfg.paths.output_dir) / "pipeline"
    kohya = load_file(folder / SINGLE_FILE["lora"])
    prefixes = {k.split("_")[1] for k in kohya}
    assert prefixes == {"unet", "te1", "te2"}  # kohya's SDXL names
    assert any(k.startswith("lora_unet_input_blocks_") for k in kohya)  # the UNet under its original names

    def draw(pipeline):
        generator = torch.Generator().manual_seed(0)
        return pipeline("a photo of sks dog", num_inference_steps=2, generator=generator, output_type="np").images

    base = json.loads((folder / "dbexp.json").read_text())["base"]["pretrained"]
    pipeline = StableDiffusionXLPipeline.from_pretrained(base)
    plain = draw(pipeline)
    pipeline.load_lora_weights(folder)
    from_diffusers = draw(pipeline)
    pipeline = StableDiffusionXLPipeline.from_pretrained(base)
    pipeline.load_lora_weights(str(folder), weight_name=SINGLE_FILE["lora"])
    from_kohya = draw(pipeline)
    np.testing.assert_allclose(from_kohya, from_diffusers, atol=1e-5)
    assert np.abs(from_kohya - plain).max() > 1e-3  # the adapters are on
