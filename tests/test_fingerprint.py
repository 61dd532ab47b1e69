"""Content fingerprints: every key is pinned, so a refactor cannot silently invalidate cache entries.

The golden values were computed with the code before :mod:`dbexp.fingerprint` existed (each cache
hashed on its own). A change here renames existing cache entries: change a golden value only on purpose.
"""

import json
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbexp.fingerprint import fields_key, folder_digest, image_digest, text_digest


@pytest.fixture
def rgb():
    return Image.fromarray(np.arange(36, dtype=np.uint8).reshape(3, 4, 3), "RGB")


@pytest.fixture
def gray():
    return Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4), "L")


@pytest.fixture
def part(tmp_path):
    folder = tmp_path / "unet"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "/somewhere", "b": 2, "a": 1}))
    (folder / "weights.bin").write_bytes(bytes(range(50)))
    (folder / "sub" / "small.txt").write_bytes(b"hi")
    return folder


# --- the functions ---------------------------------------------------------------------------------
def test_image_digest_is_pinned_and_follows_pixels_mode_and_size(rgb, gray):
    assert image_digest(rgb) == "6eb5fbf936e7492364654eb90b2d01b826c8cbe71c34ac8d1b31c63af531f7ad"
    assert image_digest(gray) == "8aa1d3b107e626d1933550adc7314d778d53f6dfc381f7e88ff5301bb9ea0c93"
    assert image_digest(rgb.copy()) == image_digest(rgb)
    changed = rgb.copy()
    changed.putpixel((0, 0), (255, 0, 0))
    assert image_digest(changed) != image_digest(rgb)
    assert image_digest(rgb.convert("RGBA")) != image_digest(rgb)
    assert image_digest(rgb.resize((3, 4))) != image_digest(rgb)


def test_text_digest_is_pinned_and_cut_to_length():
    full = "2d247433e8787d5c06a84db2fcaad5387ea48301db1f4a93c893c4627e5707dc"
    assert text_digest("random:unet:{}") == full
    assert text_digest("random:unet:{}", length=12) == full[:12]
    assert text_digest("random:vae:{}") != full


def test_fields_key_is_pinned_order_free_and_follows_content():
    assert fields_key({"a": 1, "b": "x", "c": [1, 2]}, length=24) == "fa7dc6142266ceb345caabc9"
    assert fields_key({"c": [1, 2], "b": "x", "a": 1}, length=24) == "fa7dc6142266ceb345caabc9"
    assert fields_key({"a": 1, "b": "x", "c": [2, 1]}, length=24) != "fa7dc6142266ceb345caabc9"
    assert fields_key({"dino": {"x": 1}}, length=12) == "bf002d3b078d"
    assert len(fields_key({"a": 1})) == 64


def test_fields_key_stringifies_only_when_asked():
    fields = {"model": {"lr": 0.0001}, "seed": 0, "data": {"dir": Path("/data")}}
    assert fields_key(fields, stringify=True) == "04e3361452c31af37e04518d30b45bc4dbc55ea69fa8022af79d205e022fa385"
    with pytest.raises(TypeError):
        fields_key(fields)


def test_folder_digest_is_pinned_ignores_load_paths_and_follows_content(part):
    assert folder_digest(part) == "a84c4063bd7305e19763cc29f08baed27ab2e5577921ad43c3779b8d9119ee25"
    sampled = "359b834d0c308ab1a02b8b75cbaf9f02ab49f706e9346f74b08b3b50bbb5a04f"
    assert folder_digest(part, sample=8) == sampled  # first and last 8 bytes of weights.bin
    (part / "config.json").write_text(json.dumps({"a": 1, "b": 2, "_name_or_path": "/elsewhere"}))
    assert folder_digest(part, sample=8) == sampled
    (part / "weights.bin").write_bytes(bytes(range(49)) + b"\xff")  # the last bytes differ
    assert folder_digest(part, sample=8) != sampled
    (part / "weights.bin").write_bytes(bytes(range(50)))
    (part / "config.json").write_text(json.dumps({"a": 1, "b": 3}))
    assert folder_digest(part, sample=8) != sampled


# --- the call sites: each cache's key is unchanged --------------------------------------------------
def test_encoding_cache_keys_are_pinned(rgb):
    from dbexp.encoding_cache import latent_key

    assert latent_key("vae-a", rgb, 32, False) == "9ef8b9c9201efd3ec48a91d6"
    assert latent_key("vae-a", rgb, 32, True) != "9ef8b9c9201efd3ec48a91d6"
    text = {"text_encoder": "te", "tokenizer": "tok", "prompt": "a photo of sks dog", "max_length": 77}
    assert fields_key(text, length=24) == "706c98e159a1d7a6d273de4c"  # as cached_text_embeddings names it


def test_prior_cache_key_is_pinned():
    from dbexp.prior_cache import cache_key

    assert cache_key({"model": {"unet": "u"}, "seed": 0, "guidance_scale": 7.5}) == "97c6c521eb17f866b28a"
    assert cache_key({"model": {"unet": "u"}, "seed": 1, "guidance_scale": 7.5}) != "97c6c521eb17f866b28a"


def test_setting_fingerprint_is_pinned():
    from dbexp.checkpointing import setting_fingerprint

    setting = {"model": {"lr": 0.0001}, "seed": 0, "data": {"dir": Path("/data")}}
    assert setting_fingerprint(setting) == "04e3361452c31af37e04518d30b45bc4dbc55ea69fa8022af79d205e022fa385"


def test_training_key_is_pinned(monkeypatch, rgb, gray):
    from omegaconf import OmegaConf

    from dbexp import trained_cache

    monkeypatch.setattr(trained_cache, "__version__", "0.0.0")
    cfg = OmegaConf.create({"seed": 0, "model": {"lr": 0.0001}, "callbacks": {}, "paths": {"output_dir": "/runs/a"}})
    assert trained_cache.training_key(cfg, {"unet": "u"}, [rgb], [gray]) == "5a3e4b5e9854d2622abda194"
    assert trained_cache.training_key(cfg, {"unet": "u"}, [gray], [rgb]) != "5a3e4b5e9854d2622abda194"


def test_dataset_fingerprint_is_pinned(monkeypatch, rgb, gray):
    from dbexp import tracking

    monkeypatch.setattr(tracking, "git_state", dict)
    assert tracking.run_tags([rgb, gray])["dbexp.dataset_fingerprint"] == "7c6a7baee5246c09"
    assert tracking.run_tags([gray, rgb])["dbexp.dataset_fingerprint"] != "7c6a7baee5246c09"


def test_model_identities_are_pinned(monkeypatch, tmp_path):
    from diffusers import DDPMScheduler

    from dbexp import model_loading

    parts = types.SimpleNamespace(inference_scheduler=DDPMScheduler(), identity={"scheduler": "abc"})
    model_loading.with_prediction_type(parts, "v_prediction")
    assert parts.identity["scheduler"] == "51626f816696eeab8ec44c8fbe4667bcddbf0f54bdc079c410b345b97ba7485c"

    # A built architecture's folder name: found as already built, so nothing is built here.
    monkeypatch.setattr(model_loading, "BUILD_FORMAT", 2)
    monkeypatch.setattr(model_loading, "save_pipeline", lambda *a, **k: pytest.fail("the key changed"))
    folder = tmp_path / "models" / "toy-5b78d6a06298"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    assert model_loading.materialize_architecture("toy", {"seed": 0, "unet": {"x": 1}}, tmp_path) == folder


def test_tiny_metric_models_folder_is_pinned(monkeypatch, tmp_path):
    from dbexp import metric_models

    monkeypatch.setattr(metric_models, "TINY", {"dino": {"x": 1}})
    root = tmp_path / "models" / "metrics-tiny-bf002d3b078d"
    for name in ("dino", "clip"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
    assert metric_models.build_tiny(tmp_path) == (root / "dino", root / "clip")
