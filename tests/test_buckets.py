"""Aspect-ratio buckets (``data.buckets``): photos train at their own shape, each batch from one bucket."""

import json
from pathlib import Path

import pytest
import torch

from dbexp.datamodule import DreamBoothStream, ImageStream, bucket_sizes, nearest_bucket
from dbexp.errors import UserInputError
from dbexp.run import plan_run
from dbexp.train import run
from tests.conftest import photo

#: A 32 px run in buckets of 8 px steps: 32×32, and 24×40 / 40×24 (about 32² pixels, aspect ≤ 2).
BUCKETS = ["data.buckets=true", "data.bucket_step=8"]


def test_buckets_are_about_the_target_area_with_sides_on_the_step():
    sizes = bucket_sizes(1024, 64, 2.0)
    assert sizes[0] == (1024, 1024)
    assert {(1152, 896), (896, 1152), (1216, 832), (1408, 704), (704, 1408)} <= set(sizes)  # SDXL's own sizes
    assert all(w % 64 == 0 and h % 64 == 0 and 0.85 * 1024**2 < w * h <= 1024**2 for w, h in sizes)
    assert all(max(w / h, h / w) <= 2 for w, h in sizes) and len(set(sizes)) == len(sizes)
    assert nearest_bucket(3000, 4000, sizes) == (896, 1152)  # a 3:4 portrait photo
    assert nearest_bucket(4000, 3000, sizes) == (1152, 896) and nearest_bucket(500, 500, sizes) == (1024, 1024)
    assert bucket_sizes(32, 8, 2.0) == [(32, 32), (24, 40), (40, 24)]


def test_each_batch_comes_from_one_bucket_and_the_stream_is_a_pure_function_of_the_sample():
    photos = [photo(*shape, (10, 20, 30)) for shape in [(300, 400), (330, 440), (400, 300), (440, 330), (300, 300)]]
    sizes = [nearest_bucket(*p.size, bucket_sizes(32, 8, 2.0)) for p in photos]
    assert sizes == [(24, 40), (24, 40), (40, 24), (40, 24), (32, 32)]
    instances = ImageStream(photos, 0, 3, 32, center_crop=False, random_flip=True, sizes=sizes)
    classes = ImageStream(
        photos[:1] * 2 + photos[2:3] + photos[4:], 1, 3, 32, True, False, sizes=[sizes[0]] * 2 + [sizes[2], sizes[4]]
    )

    def take(stream, n):
        out = []
        for item in stream:
            out.append(item)
            if len(out) == n:
                return out

    full = take(DreamBoothStream(instances, classes, batch_size=2), 24)
    for batch in (full[i : i + 2] for i in range(0, 24, 2)):
        shapes = {tuple(s[f"{kind}_pixels"].shape) for s in batch for kind in ("instance", "class")}
        assert len(shapes) == 1  # one bucket per batch, instance and class images alike
        width, height = batch[0]["instance_geometry"].tolist()[5], batch[0]["instance_geometry"].tolist()[4]
        assert shapes == {(3, height, width)}
    assert {tuple(s["instance_pixels"].shape) for s in full} == {(3, 40, 24), (3, 24, 40), (3, 32, 32)}
    tail = take(DreamBoothStream(instances, classes, batch_size=2, start=8), 8)  # resumed at step 4
    assert all(torch.equal(a["instance_pixels"], b["instance_pixels"]) for a, b in zip(full[8:16], tail, strict=True))
    assert [s["instance_index"] for s in tail] == list(range(8, 16))
    ranks = [take(DreamBoothStream(instances, None, 2, start=0, rank=r, world_size=2), 4) for r in (0, 1)]
    assert sorted(s["instance_index"] for r in ranks for s in r) == list(range(8))  # the ranks split the batches


def test_a_portrait_and_a_landscape_photo_train_at_their_own_shape_with_class_images_of_that_shape(
    make_cfg, mixed_photos, monkeypatch
):
    from dbexp.dreambooth_module import DreamBoothModule

    seen = []
    monkeypatch.setattr(
        DreamBoothModule,
        "on_train_batch_start",
        lambda self, batch, i: seen.append(
            {k: v.clone() for k, v in batch.items() if k.endswith(("latent_mean", "geometry"))}
        ),
        raising=False,
    )
    cfg = make_cfg(
        "model=tiny_xl",
        *BUCKETS,
        f"data.instance_dir={mixed_photos}",
        "data.class_noun=dog",
        "prior.num_class_images=5",
        "trainer.max_steps=6",
        "eval.val_every_n_steps=3",
        "eval.metrics=tiny",
        "eval.final=false",
    )
    metrics = run(cfg)
    assert metrics["step"] == 6 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    latent_shapes = {tuple(b["instance_latent_mean"].shape[2:]) for b in seen}  # tiny_xl's VAE halves the sides
    assert latent_shapes <= {(20, 12), (12, 20), (16, 16)} and len(latent_shapes) >= 2  # not all squares
    for batch in seen:
        assert batch["instance_latent_mean"].shape == batch["class_latent_mean"].shape  # the class image's bucket
        h, w = batch["instance_latent_mean"].shape[2:]
        assert batch["instance_geometry"][0, 4:].tolist() == [2 * h, 2 * w]  # SDXL's target size: the bucket
    portrait = [b for b in seen if tuple(b["instance_latent_mean"].shape[2:]) == (20, 12)]
    assert portrait and {tuple(b["instance_geometry"][0].tolist()) for b in portrait} <= {
        (400, 300, 0, 3, 40, 24),
        (440, 330, 0, 3, 40, 24),
    }
    # class images drawn at the buckets' sizes, shared in proportion (2, 2, 1 of 5), each size its cache entry
    folders = [json.loads(m.read_text()) for m in Path(cfg.paths.cache_dir).glob("class_images/*/manifest.json")]
    drawn = {
        tuple(f["fields"]["resolution"])
        if isinstance(f["fields"]["resolution"], list)
        else f["fields"]["resolution"]: f["count"]
        for f in folders
        if f["fields"]["class_prompt"] == "a photo of dog"
    }
    assert drawn[(24, 40)] == 2 and drawn[(40, 24)] == 2 and drawn[32] >= 1


def test_a_bucket_step_that_does_not_divide_the_resolution_is_one_line(make_cfg):
    with pytest.raises(
        UserInputError, match=r"data.bucket_step=24: must be a multiple of 8 that divides data.resolution=32"
    ):
        plan_run(make_cfg("data.buckets=true", "data.bucket_step=24"))
