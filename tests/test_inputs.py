"""Bad input is caught before any model loads, with one line naming the key or file and the fix."""

from pathlib import Path

import pytest
from PIL import Image

from dbexp.errors import UserInputError
from dbexp.run import plan_run


def _photos(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (48, 40), (40 * i, 90, 160)).save(folder / f"{i}.jpg")
    return folder


CASES = {
    "missing dir": (lambda d: [f"data.instance_dir={d / 'nope'}", "data.class_noun=mug"], "does not exist"),
    "empty dir": (lambda d: [f"data.instance_dir={_photos(d / 'e', 0)}", "data.class_noun=mug"], "holds no images"),
    "corrupt file": (
        lambda d: [f"data.instance_dir={_corrupt(d)}", "data.class_noun=mug"],
        r"broken\.jpg: cannot be read as an image",
    ),
    "prior without class noun": (
        lambda d: [f"data.instance_dir={_photos(d / 'p')}"],
        r"prior.weight=1.0 needs a class: set data.class_noun",
    ),
    "template without class noun": (
        lambda d: [f"data.instance_dir={_photos(d / 'p')}", "prior=none"],
        r"data.class_noun is not set but data.prompt_template uses \{class_noun\}",
    ),
    "resolution": (lambda d: ["data.resolution=30"], r"data.resolution=30: must be a positive multiple of 8"),
    "lr zero": (lambda d: ["optimizer.lr=0"], r"optimizer.lr=0.0: the learning rate must be > 0"),
    "lr negative": (lambda d: ["optimizer.lr=-1e-5"], r"optimizer.lr=-1e-05"),
    "unknown subject": (lambda d: ["data.subject=cat"], r"data.subject=cat: no such subject.*available: dog"),
    "no subject": (lambda d: ["data.subject=null"], r"no subject: set data.subject"),
    "max steps": (lambda d: ["trainer.max_steps=-1"], r"trainer.max_steps must be >= 1"),
    "template placeholder": (lambda d: ["data.prompt_template='a {tok} {class_noun}'"], r"unknown placeholder"),
    "missing checkpoint": (lambda d: ["ckpt_path=nowhere.ckpt"], r"ckpt_path=nowhere.ckpt: no such checkpoint"),
}


def _corrupt(d: Path) -> Path:
    folder = _photos(d / "c")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return folder


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_each_bad_input_has_one_clear_line(make_cfg, tmp_path, case):
    overrides, message = CASES[case]
    cfg = make_cfg(*overrides(tmp_path))
    with pytest.raises(UserInputError, match=message) as err:
        plan_run(cfg)
    assert "\n" not in str(err.value)


def test_a_class_prompt_without_class_noun_is_enough(make_cfg, tmp_path):
    cfg = make_cfg(
        f"data.instance_dir={_photos(tmp_path / 'p')}",
        "data.prompt_template='a photo of {token}'",
        "prior.class_prompt='a photo of a mug'",
        "eval.metrics=none",  # the DreamBench metrics need a class noun
    )
    plan = plan_run(cfg)
    assert plan.instance_prompt == "a photo of sks" and plan.class_prompt == "a photo of a mug"


def test_instance_dir_wins_over_the_default_subject(make_cfg, tmp_path):
    folder = _photos(tmp_path / "mug", 4)
    plan = plan_run(make_cfg(f"data.instance_dir={folder}", "data.class_noun=mug"))
    assert plan.instance_prompt == "a photo of sks mug" and len(plan.instance_images) == 4


@pytest.mark.parametrize(
    ("override", "key"),
    [("+trainer.max_stepz=3", "trainer"), ("+callbacks.model_checkpoint.every_n_step=3", "callbacks.model_checkpoint")],
)
def test_a_misspelt_instantiated_argument_is_one_line(make_cfg, override, key):
    from dbexp.train import run

    with pytest.raises(UserInputError, match=rf"^{key}: Error in call to target") as err:
        run(make_cfg(override))
    assert "\n" not in str(err.value)
