"""Model loading: tiny goes through the same loader as SD1.5; random init matches the real architectures."""

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dbexp.errors import UserInputError
from dbexp.model_loading import check_model_config, load_model, save_pipeline
from tests.conftest import compose_train


def test_tiny_is_built_once_into_the_cache_and_loaded_from_there(tmp_path):
    cfg = compose_train(tmp_path, tmp_path / "cache", "model=tiny")
    first = load_model(cfg.model, cfg.paths.cache_dir)
    built = list((tmp_path / "cache" / "models").iterdir())
    assert len(built) == 1 and (built[0] / "model_index.json").is_file()
    assert (built[0] / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert first.source == str(built[0])  # loaded from the folder, not used from memory
    mtime = (built[0] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    second = load_model(cfg.model, cfg.paths.cache_dir)
    assert (built[0] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == mtime
    for a, b in zip(first.unet.parameters(), second.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert isinstance(first.tokenizer, CLIPTokenizer)
    assert first.tokenizer.tokenize("a photo of sks dog") == ["a</w>", "photo</w>", "of</w>", "sks</w>", "dog</w>"]
    assert sum(p.numel() for p in first.unet.parameters()) < 2_000_000


def test_sd15_from_a_local_folder_uses_the_real_loader(tmp_path, cache_dir):
    tiny = load_model(compose_train(tmp_path, cache_dir).model, cache_dir)
    folder = tmp_path / "my_sd15"
    save_pipeline(tiny, folder)
    cfg = compose_train(tmp_path, cache_dir, "model=sd15", f"model.pretrained={folder}")
    check_model_config(cfg.model)
    parts = load_model(cfg.model, cache_dir)
    assert parts.source == str(folder)
    assert type(parts.inference_scheduler).__name__ == "PNDMScheduler"
    for a, b in zip(tiny.unet.state_dict().values(), parts.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_prediction_type_override_reaches_both_schedulers(tmp_path, cache_dir):
    cfg = compose_train(tmp_path, cache_dir, "model.prediction_type=v_prediction")
    parts = load_model(cfg.model, cache_dir)
    assert parts.noise_scheduler.config.prediction_type == "v_prediction"
    assert parts.inference_scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize(
    ("name", "unet", "vae", "text_encoder"),
    [("sd15", 859_520_964, 83_653_863, 123_060_480), ("sd21", 865_910_724, 83_653_863, 340_387_840)],
)
def test_random_init_builds_the_real_architecture(tmp_path, name, unet, vae, text_encoder):
    """model.init=random: the full architecture, no download (counted on the meta device: no memory)."""
    cfg = compose_train(tmp_path, tmp_path / "cache", f"model={name}", "model.init=random")
    check_model_config(cfg.model)
    arch = cfg.model.architecture
    with torch.device("meta"):
        counts = [
            sum(p.numel() for p in m.parameters())
            for m in (
                UNet2DConditionModel(**arch.unet),
                AutoencoderKL(**arch.vae),
                CLIPTextModel(CLIPTextConfig(**arch.text_encoder)),
            )
        ]
    assert counts == [unet, vae, text_encoder]


def test_random_init_downloads_nothing_and_is_saved_once_in_the_cache(tmp_path):
    # Same code path as sd15 init=random, on the tiny architecture (the full one takes GBs of RAM).
    cache = tmp_path / "cache"
    cfg = compose_train(tmp_path, cache, "model.pretrained=some/hub-id", "model.init=random")
    parts = load_model(cfg.model, cache)
    folder = Path(parts.source)
    assert folder.parent == cache.resolve() / "models" and (folder / "model_index.json").is_file()
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    written = weights.stat().st_mtime_ns
    again = load_model(cfg.model, cache)  # found, not built again
    assert again.source == parts.source and weights.stat().st_mtime_ns == written
    for a, b in zip(parts.unet.parameters(), again.unet.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.pretrained=./no/such/folder", "folder does not exist"),
        ("model.init=zeros", "model.init=zeros"),
        ("model.prediction_type=sample", "model.prediction_type=sample"),
        ("model.vae=./no/such/vae", "model.vae=./no/such/vae: folder does not exist"),
    ],
)
def test_model_config_errors(tmp_path, override, message):
    cfg = compose_train(tmp_path, tmp_path / "cache", "model=sd15", override)
    with pytest.raises(UserInputError, match=message):
        check_model_config(cfg.model)


def test_a_folder_that_is_not_a_diffusers_model(tmp_path):
    (tmp_path / "weights").mkdir()
    cfg = compose_train(tmp_path, tmp_path / "cache", "model=sd15", f"model.pretrained={tmp_path / 'weights'}")
    with pytest.raises(UserInputError, match="not a diffusers Stable Diffusion folder"):
        load_model(cfg.model, tmp_path / "cache")


def test_the_default_toy_model_loads_from_the_package_through_the_sd_loader(tmp_path):
    import json

    cfg = compose_train(tmp_path, tmp_path / "cache")
    assert cfg.model.name == "toy" and Path(cfg.model.pretrained).is_dir()
    parts = load_model(cfg.model, cfg.paths.cache_dir)
    folder = Path(cfg.model.pretrained)
    assert parts.source == str(folder) and not (tmp_path / "cache" / "models").exists()  # nothing built
    weights = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    assert weights <= 20 * 2**20 and not list(folder.rglob("*.bin"))  # safetensors only, ≤ 20 MB
    prompt = "a photo of a sks checkered circle on the left"
    assert parts.tokenizer.tokenize(prompt) == [f"{w}</w>" for w in prompt.split(" ")]  # a token per word
    report = json.loads((folder / "toy_pretrain.json").read_text())
    assert report["seconds"] <= 3600 and report["base_prompt_fidelity"]["3"]["prompt_fidelity"] >= 0.8


def test_model_vae_replaces_the_vae_and_its_fingerprint(tmp_path, cache_dir):
    """``model.vae``: another VAE (a VAE folder, or a pipeline folder's ``vae/``) in place of the model's own; the
    latent cache keys on its content."""
    base = load_model(compose_train(tmp_path, cache_dir, "model=tiny").model, cache_dir)
    other = AutoencoderKL.from_config(base.vae.config)  # same shape, other weights
    other.save_pretrained(tmp_path / "my_vae")
    for source in (tmp_path / "my_vae", tmp_path):  # the folder itself; a folder holding vae/
        if source == tmp_path:
            (tmp_path / "my_vae").rename(tmp_path / "vae")
        parts = load_model(compose_train(tmp_path, cache_dir, "model=tiny", f"model.vae={source}").model, cache_dir)
        assert all(torch.equal(a, b) for a, b in zip(parts.vae.parameters(), other.parameters(), strict=True))
        assert parts.identity["vae"] != base.identity["vae"] and parts.identity["unet"] == base.identity["unet"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="model.vae=.*empty: no config.json"):
        load_model(compose_train(tmp_path, cache_dir, "model=tiny", f"model.vae={tmp_path / 'empty'}").model, cache_dir)
