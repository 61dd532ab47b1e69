"""SDXL's parts: the full architecture's size (meta device, nothing allocated) and a tiny SDXL built from
config, saved in diffusers layout and loaded through the loader every model takes."""

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


@pytest.mark.parametrize("model", ["sdxl", "tiny_xl"])
def test_training_sdxl_is_refused_with_one_line_before_anything_loads(tmp_path, model):
    from dbexp.errors import UserInputError

    with pytest.raises(UserInputError, match=rf"model={model}: SDXL loads and saves"):
        run(compose_train(tmp_path, tmp_path / "cache", f"model={model}"))
