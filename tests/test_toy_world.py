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


def test_prompts_parse_back_to_the_attributes_they_name():
    from dbexp.toy.world import parse_caption

    rng = random.Random(0)
    for _ in range(500):
        scene = sample_scene(rng)
        text, named = random_caption(scene, rng)
        assert parse_caption(text) == {a: getattr(scene, a) for a in named}
    # an identifier is ignored; a colour before "background" is the background's
    assert parse_caption("a photo of a small sks circle on a blue background") == {
        "size": "small",
        "shape": "circle",
        "background": "blue",
    }


def test_toy_subjects_are_dreambench_style_folders_the_oracle_recognises(tmp_path):
    from PIL import Image

    from dbexp.dreambench import read_classes
    from dbexp.toy import judge
    from dbexp.toy.subjects import SUBJECTS, main

    assert main(["--out", str(tmp_path / "subjects")]) == 0
    assert main(["--out", str(tmp_path / "subjects")]) == 2  # never overwrites
    shipped = judge.ASSETS / "subjects"
    assert read_classes(shipped) == {name: spec["shape"] for name, spec in SUBJECTS.items()}
    for name, spec in SUBJECTS.items():
        files = sorted((shipped / name).glob("*.png"))
        rebuilt = sorted((tmp_path / "subjects" / name).glob("*.png"))
        pixels = [np.asarray(Image.open(f)).tolist() for f in files]
        assert pixels == [np.asarray(Image.open(f)).tolist() for f in rebuilt]  # the shipped copy is the generator's
        readings = judge.read([Image.open(f) for f in files])
        assert 3 <= len(files) <= 5 and judge.identity(readings) == spec
        assert len({(r["background"], r["position"], r["size"]) for r in readings}) == len(files)  # varied contexts


def test_judge_scores_rendered_scenes_exactly():
    from dbexp.eval_protocol import EvalPrompts
    from dbexp.toy.judge import ToyJudge
    from dbexp.toy.world import Scene

    subject = dict(shape="circle", color="red", pattern="checkered")
    photos = [render(Scene(**subject, size="large", position=p, background="white")) for p in ("left", "right")]
    prompts = ["a photo of a sks circle on a blue background", "a photo of a sks circle on the left"]
    on_blue = [render(Scene(**subject, size="small", position="middle", background="blue")) for _ in range(2)]
    plain_left = [render(Scene("circle", "red", "large", "left", "gray")) for _ in range(2)]
    class_images = [render(Scene("circle", "green", "large", "left", "gray")), photos[0]]
    values, rows, reference = ToyJudge().score(
        on_blue + plain_left, class_images, photos, EvalPrompts(prompts, prompts, "a photo of a circle"), 2, 2
    )
    assert values["subject_fidelity"] == 0.5  # the plain circles are not the subject
    assert values["prompt_fidelity"] == 1.0  # every asked attribute is there
    assert values["pres"] == 0.5  # one class picture carries the subject's pattern
    assert values["div"] < 1e-6  # identical pictures per prompt
    assert [r["subject_fidelity"] for r in rows] == [1.0, 0.0] and reference["real/subject_fidelity"] == 1.0
    from dbexp import metric_suites

    assert tuple(values) == metric_suites.get("toy").metric_names  # it scores what the registry declares
    assert isinstance(metric_suites.get("toy").load(None, "."), ToyJudge)


def test_pretraining_writes_a_model_the_sd_loader_reads(tmp_path):
    import json

    from dbexp.model_loading import load_components
    from dbexp.toy.pretrain import main

    out = tmp_path / "toy"
    args = ["--out", str(out), "--vae-steps", "2", "--unet-steps", "3", "--pool", "64", "--check-every", "0"]
    assert main([*args, "--batch-size", "4", "--report-prompts", "4"]) == 0
    parts = load_components(str(out))  # the loader of SD1.5 (hub id or folder)
    report = json.loads((out / "toy_pretrain.json").read_text())
    fidelity = report["base_prompt_fidelity"]["7.5"]["prompt_fidelity"]
    assert report["settings"]["unet_steps"] == 3 and 0.0 <= fidelity <= 1
    assert parts.tokenizer.tokenize("a photo of a checkered circle on a gray background")[4] == "checkered</w>"
    assert (out / "samples.png").is_file()
