"""Latent and text-embedding caches: same losses as without them, computed once, used only where valid."""

import csv
from pathlib import Path

import pytest
from PIL import Image

from dbexp.encoding_cache import latent_key
from dbexp.fingerprint import image_digest
from dbexp.train import run


def _losses(cfg):
    rows = csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open())
    return [float(r[key]) for r in rows if r["train/loss"] for key in ("train/loss_instance", "train/loss_prior")]


def _entries(cache, kind):
    return sorted(p.name for p in (Path(cache) / kind).glob("*.safetensors")) if (Path(cache) / kind).is_dir() else []


def test_cached_training_gives_the_uncached_losses(make_cfg, tmp_path):
    common = ["data.random_flip=true", "trainer.max_steps=8", f"paths.cache_dir={tmp_path / 'cache'}"]
    cached = make_cfg(*common, name="cached")
    plain = make_cfg(*common, "data.cache_latents=false", "data.cache_text_embeddings=false", name="plain")
    run(plain)
    assert _entries(tmp_path / "cache", "latents") == [] and _entries(tmp_path / "cache", "text") == []
    run(cached)
    assert _losses(cached) == pytest.approx(_losses(plain), rel=1e-5, abs=1e-6)
    assert len(_losses(cached)) == 16
    # 5 photos + 2 class images, each file holding both orientations; 2 prompts.
    assert len(_entries(tmp_path / "cache", "latents")) == 7
    assert len(_entries(tmp_path / "cache", "text")) == 2


def test_caches_are_reused_not_recomputed(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    run(make_cfg(f"paths.cache_dir={cache}", name="first"))
    # A recomputed entry is written anew and renamed into place (a new inode); reuse only marks its last use.
    inodes = {p: p.stat().st_ino for p in cache.glob("*/*.safetensors")}
    assert inodes
    run(make_cfg(f"paths.cache_dir={cache}", name="second"))
    assert {p: p.stat().st_ino for p in cache.glob("*/*.safetensors")} == inodes


def test_caches_stay_off_where_they_would_be_wrong(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    run(make_cfg(f"paths.cache_dir={cache}", "data.center_crop=false", "finetune.train_text_encoder=true"))
    assert _entries(cache, "latents") == [] and _entries(cache, "text") == []


def test_the_latent_key_follows_content_not_names():
    image = Image.new("RGB", (40, 32), (10, 20, 30))
    copy = image.copy()
    base = latent_key("vae-a", image, 32, False)
    assert latent_key("vae-a", copy, 32, False) == base and image_digest(copy) == image_digest(image)
    assert latent_key("vae-b", image, 32, False) != base
    assert latent_key("vae-a", image, 64, False) != base
    assert latent_key("vae-a", image, 32, True) != base
    assert latent_key("vae-a", Image.new("RGB", (40, 32), (10, 20, 31)), 32, False) != base
