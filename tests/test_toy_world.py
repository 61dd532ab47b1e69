"""The toy world: deterministic scenes, the caption grammar, and pictures that show what captions say."""

import random

import numpy as np

from dbexp.toy.world import (
    BACKGROUNDS,
    COLORS,
    PATTERNS,
    WORDS,
    caption,
    random_caption,
    render,
    sample_scene,
    scenes,
)


def test_scenes_are_deterministic_by_seed_and_index():
    assert scenes(3, 5) == scenes(3, 5)
    assert scenes(3, 5)[:2] == scenes(3, 2)  # scene i depends on (seed, i) only
    assert scenes(3, 5) != scenes(4, 5)
    a, b = render(scenes(3, 1)[0]), render(scenes(3, 1)[0])
    assert np.array_equal(np.asarray(a), np.asarray(b)) and a.size == (32, 32)


def test_fixed_attributes_and_no_object_on_its_own_colour():
    for scene in scenes(0, 200, shape="circle"):
        assert scene.shape == "circle" and scene.color != scene.background
    pinned = sample_scene(random.Random(0), pattern="checkered", color="red", background="blue")
    assert (pinned.color, pinned.background, pinned.pattern) == ("red", "blue", "checkered")


def test_captions_follow_the_grammar_and_use_the_world_words():
    scene = sample_scene(
        random.Random(0), shape="square", color="red", size="large", position="left", background="gray"
    )
    assert caption(scene) == "a photo of a large red square on the left on a gray background"
    assert caption(scene, {"color"}) == "a photo of a red square"
    rng = random.Random(1)
    for _ in range(100):
        text, named = random_caption(scene, rng)
        assert "shape" in named and set(text.split()) <= set(WORDS)
        assert ("red" in text.split()) == ("color" in named)


def test_pictures_show_colour_background_position_and_pattern():
    rng = random.Random(0)
    scene = sample_scene(rng, shape="square", color="red", size="large", position="left", background="white")
    pixels = np.asarray(render(scene, 32)).astype(int)
    assert np.abs(pixels[0, 31] - BACKGROUNDS["white"]).sum() < 10  # a corner far from the object
    left, right = pixels[:, :10], pixels[:, 22:]
    red = np.array(COLORS["red"])
    assert (np.abs(left - red).sum(-1) < 30).sum() > 40 and (np.abs(right - red).sum(-1) < 30).sum() == 0
    plain = np.asarray(render(scene, 32)).astype(int)
    for pattern in PATTERNS[1:]:
        patterned = np.asarray(render(scene.__class__(**{**scene.__dict__, "pattern": pattern}), 32)).astype(int)
        assert np.abs(patterned - plain).sum(-1).max() > 200  # light cells on the object


def test_the_shipped_oracle_reads_every_attribute_of_fresh_scenes():
    from pathlib import Path

    import dbexp
    from dbexp.toy.oracle import accuracy, load

    folder = Path(dbexp.__file__).parent / "assets" / "toy"
    oracle = load(folder)
    for degraded in (False, True):  # clean pictures, and blurred + noised ones like a small model's samples
        assert min(accuracy(oracle, count=600, seed=777, degraded=degraded).values()) >= 0.99
    scene = sample_scene(random.Random(5), pattern="striped", shape="triangle", color="blue", background="white")
    assert oracle.read([render(scene)])[0] == scene.labels()


def test_oracle_training_runs_and_saves(tmp_path):
    from dbexp.toy.oracle import load, save, train

    model, info = train(steps=3, batch_size=8, log_every=100)
    save(model, tmp_path, info)
    assert set(load(tmp_path).state_dict()) == set(model.state_dict()) and info["steps"] == 3
