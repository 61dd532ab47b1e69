"""The class-image cache: hits, misses, top-ups, keys, manifests, two processes at once, user folders."""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbexp import __version__
from dbexp.model_loading import load_model
from dbexp.prior_cache import PriorConfig, cache_key, class_image_fields, class_images, image_path
from tests.conftest import REPO, compose_train

PROMPT = "a photo of dog"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    cache = tmp_path_factory.mktemp("model_cache")
    return load_model(compose_train(cache, cache).model, cache)


def _cfg(**kwargs):
    return PriorConfig(**{"num_inference_steps": 2, "batch_size": 2, **kwargs})


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def _close(a, b):
    """Equal up to one grey level: another batch size rounds the batched matmuls differently."""
    return all(
        np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() <= 1 for x, y in zip(a, b, strict=True)
    )


def test_miss_hit_and_partial_top_up(parts, tmp_path):
    first = class_images(_cfg(num_class_images=3), parts, PROMPT, 32, tmp_path)
    assert (first.reused, first.generated) == (0, 3)
    hit = class_images(_cfg(num_class_images=3), parts, PROMPT, 32, tmp_path)
    assert (hit.reused, hit.generated) == (3, 0) and _same(hit.images, first.images)
    topped = class_images(_cfg(num_class_images=5), parts, PROMPT, 32, tmp_path)
    assert (topped.reused, topped.generated) == (3, 2) and _same(topped.images[:3], first.images)
    fewer = class_images(_cfg(num_class_images=2), parts, PROMPT, 32, tmp_path)
    assert (fewer.reused, fewer.generated) == (2, 0) and _same(fewer.images, first.images[:2])
    assert sorted(p.name for p in first.folder.glob("*.png")) == [f"{i:06d}.png" for i in range(5)]
    # Image i depends on seed + i only: topping up 3 → 5 equals making 5 at once (in 4-image batches).
    fresh = class_images(_cfg(num_class_images=5, batch_size=4), parts, PROMPT, 32, tmp_path / "other")
    assert _close(fresh.images, topped.images)


def test_the_manifest_records_the_key_fields(parts, tmp_path):
    result = class_images(_cfg(num_class_images=2, seed=5), parts, PROMPT, 32, tmp_path)
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert manifest["key"] == result.folder.name == cache_key(manifest["fields"])
    assert manifest["count"] == 2 and manifest["dbexp_version"] == __version__
    assert manifest["fields"]["class_prompt"] == PROMPT and manifest["fields"]["seed"] == 5
    assert manifest["fields"]["model"] == dict(sorted(parts.identity.items()))
    assert {"created", "last_used"} <= manifest.keys()


CHANGES = {
    "class_prompt": lambda cfg, parts, prompt, res: (cfg, parts, "a photo of a cat", res),
    "negative_prompt": lambda cfg, parts, prompt, res: (
        dataclasses.replace(cfg, negative_prompt="blurry"),
        parts,
        prompt,
        res,
    ),
    "steps": lambda cfg, parts, prompt, res: (dataclasses.replace(cfg, num_inference_steps=3), parts, prompt, res),
    "scheduler": lambda cfg, parts, prompt, res: (dataclasses.replace(cfg, sampler="ddim"), parts, prompt, res),
    "guidance": lambda cfg, parts, prompt, res: (dataclasses.replace(cfg, guidance_scale=5.0), parts, prompt, res),
    "resolution": lambda cfg, parts, prompt, res: (cfg, parts, prompt, 64),
    "seed": lambda cfg, parts, prompt, res: (dataclasses.replace(cfg, seed=1), parts, prompt, res),
}
PARTS = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]


@pytest.mark.parametrize("change", [*CHANGES, *(f"model.{p}" for p in PARTS)])
def test_every_field_that_changes_pixels_changes_the_key(parts, change):
    base = (_cfg(), parts, PROMPT, 32)
    if change.startswith("model."):
        other = dataclasses.replace(parts, identity={**parts.identity, change[6:]: "another fingerprint"})
        changed = (base[0], other, PROMPT, 32)
    else:
        changed = CHANGES[change](*base)
    assert cache_key(class_image_fields(*base)) != cache_key(class_image_fields(*changed))


def test_batch_size_and_count_do_not_change_the_key(parts):
    key = cache_key(class_image_fields(_cfg(), parts, PROMPT, 32))
    assert key == cache_key(class_image_fields(_cfg(batch_size=7, num_class_images=3), parts, PROMPT, 32))


def test_a_fine_tuned_model_gets_other_class_images(parts, tmp_path):
    """Weights of the same architecture but different content → a different key (folder fingerprint)."""
    import torch

    from dbexp.model_loading import load_components, save_pipeline

    save_pipeline(parts, tmp_path / "base")
    tuned = load_components(str(tmp_path / "base"))
    with torch.no_grad():
        tuned.unet.conv_in.weight.add_(0.01)
    save_pipeline(tuned, tmp_path / "tuned")
    reloaded = load_components(str(tmp_path / "tuned"))
    assert reloaded.identity["unet"] != load_components(str(tmp_path / "base")).identity["unet"]
    assert reloaded.identity["vae"] == load_components(str(tmp_path / "base")).identity["vae"]


WORKER = """
import json, sys, time
from pathlib import Path
from dbexp.model_loading import load_model
from dbexp.prior_cache import PriorConfig, class_images
from tests.conftest import compose_train
model_cache, cache, barrier, me = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
parts = load_model(compose_train(model_cache, model_cache).model, model_cache)
(barrier / me).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.01)
cfg = PriorConfig(num_class_images=8, num_inference_steps=4, batch_size=2)
result = class_images(cfg, parts, "a photo of dog", 32, cache)
print(json.dumps({"reused": result.reused, "generated": result.generated}))
"""


def test_two_processes_asking_for_the_same_key_end_with_one_correct_set(tmp_path, cache_dir):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(cache_dir), str(tmp_path / "cache"), str(barrier), name],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    results = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outputs), key=lambda r: r["generated"])
    assert results == [{"reused": 8, "generated": 0}, {"reused": 0, "generated": 8}]
    (folder,) = (tmp_path / "cache" / "class_images").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [".lock", *(f"{i:06d}.png" for i in range(8)), "manifest.json"]
    assert all(Image.open(image_path(folder, i)).size == (32, 32) for i in range(8))


def test_a_user_class_folder_is_read_and_never_written(make_cfg, tmp_path):
    from dbexp.train import run

    photos = tmp_path / "class photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 36), (30 * i, 120, 60)).save(photos / f"{i}.png")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in photos.iterdir()}
    cfg = make_cfg(f"prior.class_dir={photos}")
    started = time.time()
    metrics = run(cfg)
    assert "train/loss_prior" in metrics
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in photos.iterdir()} == before
    manifests = Path(cfg.paths.cache_dir).glob("class_images/*/manifest.json")
    assert all(m.stat().st_mtime < started for m in manifests)  # nothing generated or touched


def test_a_bad_file_in_the_class_folder_is_named(make_cfg, tmp_path):
    from dbexp.errors import UserInputError
    from dbexp.run import plan_run

    photos = tmp_path / "classes"
    photos.mkdir()
    (photos / "x.png").write_text("nope")
    with pytest.raises(UserInputError, match=r"x\.png: cannot be read as an image"):
        plan_run(make_cfg(f"prior.class_dir={photos}"))
