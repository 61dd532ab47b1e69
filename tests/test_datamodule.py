"""The sample stream: reproducible, a permutation per pass, resumable, sharded without overlap."""

import itertools

import torch
from PIL import Image
from torch.utils.data import DataLoader

from dbexp.datamodule import DataConfig, DreamBoothStream, ImageStream, resolve_subject


def _images(n=3):
    return [Image.new("RGB", (40 + 8 * i, 32), (60 * i, 20, 200)) for i in range(n)]


def _stream(**kwargs):
    return ImageStream(_images(), stream=0, seed=7, resolution=32, **kwargs)


def _take(dataset, n):
    return list(itertools.islice(iter(dataset), n))


def test_samples_are_a_pure_function_of_the_index():
    a, b = _stream(center_crop=False, random_flip=True), _stream(center_crop=False, random_flip=True)
    assert all(torch.equal(a[i]["pixels"], b[i]["pixels"]) for i in [0, 5, 11, 1000])
    assert not torch.equal(a[0]["pixels"], ImageStream(_images(), 0, 8, 32, False, True)[0]["pixels"])  # seed


def test_each_pass_shows_every_image_once():
    stream = _stream(center_crop=True, random_flip=False)
    colours = {round(stream[i]["pixels"][0].mean().item(), 4) for i in range(3)}
    assert len(colours) == 3
    for start in (3, 6, 9):
        assert {round(stream[i]["pixels"][0].mean().item(), 4) for i in range(start, start + 3)} == colours


def test_a_stream_started_at_k_is_the_tail_of_the_full_stream():
    instances, classes = _stream(center_crop=False, random_flip=True), _stream(center_crop=True, random_flip=True)
    full = _take(DreamBoothStream(instances, classes, batch_size=2), 10)
    tail = _take(DreamBoothStream(instances, classes, batch_size=2, start=4), 6)
    for x, y in zip(full[4:], tail, strict=True):
        assert x["instance_index"] == y["instance_index"]
        assert torch.equal(x["instance_pixels"], y["instance_pixels"])
        assert torch.equal(x["class_pixels"], y["class_pixels"])


def test_ranks_split_the_stream_without_overlap():
    instances = _stream(center_crop=True, random_flip=False)
    ranks = [_take(DreamBoothStream(instances, None, 1, start=0, rank=r, world_size=2), 4) for r in (0, 1)]
    assert [x["instance_index"] for x in ranks[0]] == [0, 2, 4, 6]
    assert [x["instance_index"] for x in ranks[1]] == [1, 3, 5, 7]


def test_loader_workers_do_not_change_the_order():
    stream = DreamBoothStream(_stream(center_crop=False, random_flip=True), None, batch_size=2)
    single = list(itertools.islice(DataLoader(stream, batch_size=2, num_workers=0), 4))
    double = list(itertools.islice(DataLoader(stream, batch_size=2, num_workers=2), 4))
    for a, b in zip(single, double, strict=True):
        assert torch.equal(a["instance_index"], b["instance_index"])
        assert torch.equal(a["instance_pixels"], b["instance_pixels"])


def test_subject_resolution():
    bundled = resolve_subject(DataConfig(subject="dog"))
    assert bundled.class_noun == "dog" and len(list(bundled.instance_dir.glob("*.jpg"))) == 5
    assert resolve_subject(DataConfig(subject="dog", class_noun="puppy")).class_noun == "puppy"


def test_the_full_dreambench_layout_resolves_when_present():
    import pytest

    from tests.conftest import REPO

    root = REPO.parent / "shared" / "dreambench"
    if not root.is_dir():
        pytest.skip("no full DreamBench copy beside the repository")
    subject = resolve_subject(DataConfig(subject="bear_plushie", dreambench_root=str(root)))
    assert subject.class_noun == "stuffed animal"
