"""Every config-group option composes; the schemas reject wrong keys and types at compose time."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.conftest import CONF, compose_train

GROUPS = [
    "model",
    "data",
    "prior",
    "optimizer",
    "eval",
    "trainer",
    "memory",
    "callbacks",
    "logger",
    "paths",
    "experiment",
    "debug",
]


def _options():
    for group in GROUPS:
        for file in sorted((CONF / group).glob("*.yaml")):
            yield group, file.stem


@pytest.mark.parametrize(("group", "option"), list(_options()), ids=lambda x: x)
def test_every_group_option_composes(tmp_path, group, option):
    cfg = compose_train(tmp_path, tmp_path / "cache", f"{group}={option}")
    assert cfg.model.name
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_groups_named_in_the_issue_exist():
    expected = {
        "model": {"tiny", "sd15", "sd21"},
        "prior": {"default", "none"},
        "optimizer": {"adamw", "sgd"},
        "logger": {"csv", "tensorboard", "many", "none"},
        "trainer": {"cpu", "gpu", "ddp", "fsdp"},
        "memory": {"default", "24gb", "16gb", "12gb"},
    }
    for group, options in expected.items():
        assert options <= {f.stem for f in (CONF / group).glob("*.yaml")}, group


def test_defaults(tmp_path):
    cfg = compose_train(tmp_path, tmp_path / "cache")
    assert cfg.model.name == "toy" and cfg.prior.weight == 1.0 and cfg.data.token == "sks"
    # the toy model brings the toy world's data, prior, optimizer and evaluation
    assert (cfg.data.subject, cfg.prior.class_prompt, cfg.eval.metrics) == (
        "checkered_circle",
        "a photo of a {class_noun}",
        "toy",
    )
    assert cfg.data.prompt_template == "a photo of a {token} {class_noun}"
    assert cfg.data.resolution == 32  # follows model.resolution
    tiny = compose_train(tmp_path, tmp_path / "c", "model=tiny")  # any other model: the DreamBench defaults
    assert (tiny.data.subject, tiny.data.prompt_template) == ("dog", "a photo of {token} {class_noun}")
    assert compose_train(tmp_path, tmp_path / "c", "data=default").data.subject == "dog"  # the command line wins
    assert compose_train(tmp_path, tmp_path / "c", "prior=none").prior.weight == 0.0
    assert compose_train(tmp_path, tmp_path / "c", "model=sd15").data.resolution == 512


@pytest.mark.parametrize(
    "override",
    ["optimizer.lr=fast", "data.resolution=big", "model.train_text_encoder=maybe", "prior.weight=[1]"],
)
def test_wrong_types_fail_at_compose_time(tmp_path, override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_train(tmp_path, tmp_path / "cache", override)


@pytest.mark.parametrize("override", ["optimizer.learning_rate=1e-5", "data.subjet=dog", "prior.wieght=1"])
def test_unknown_keys_fail_at_compose_time(tmp_path, override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_train(tmp_path, tmp_path / "cache", override)


def test_unknown_group_option_fails(tmp_path):
    with pytest.raises(ConfigCompositionException, match="sd99"):
        compose_train(tmp_path, tmp_path / "cache", "model=sd99")


def test_every_yaml_key_has_a_comment():
    """The style rule: each key line of every config file carries a short comment."""
    missing = []
    for file in CONF.rglob("*.yaml"):
        for number, line in enumerate(file.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or stripped.startswith("- "):
                continue
            if ":" in stripped and "#" not in stripped:
                missing.append(f"{file.relative_to(CONF)}:{number}: {stripped}")
    assert not missing, "\n".join(missing)
