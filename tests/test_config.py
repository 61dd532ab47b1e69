"""Every config-group option composes; the schemas reject wrong keys and types at compose time."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from dbexp.config import (
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    MemoryConfig,
    ModelConfig,
    OptimizerConfig,
    PriorConfig,
    check_moved_keys,
)
from tests.conftest import CONF, compose_train

GROUPS = [
    "model",
    "finetune",
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
    ["optimizer.lr=fast", "data.resolution=big", "finetune.train_text_encoder=maybe", "prior.weight=[1]"],
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


def test_every_config_file_opens_with_a_comment():
    """Each config file starts by saying what it is for (comments on lines say why, where it is not obvious)."""
    bare = []
    for file in CONF.rglob("*.yaml"):
        lines = [
            line for line in file.read_text().splitlines() if line.strip() and line.strip() != "# @package _global_"
        ]
        if not lines or not lines[0].startswith("#"):
            bare.append(str(file.relative_to(CONF)))
    assert not bare


def _restated(values: dict, defaults: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in values.items():
        if key not in defaults:
            continue
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            found += _restated(value, defaults[key], f"{prefix}{key}.")
        elif value == defaults[key]:
            found.append(f"{prefix}{key}")
    return found


SCHEMAS = {
    "model": ModelConfig,
    "finetune": FinetuneConfig,
    "data": DataConfig,
    "prior": PriorConfig,
    "optimizer": OptimizerConfig,
    "memory": MemoryConfig,
    "eval": EvalConfig,
}


@pytest.mark.parametrize("group", sorted(SCHEMAS))
def test_group_files_state_only_what_differs_from_the_schema(group):
    """Defaults live once, in dbexp/config.py; a group file sets only what it changes."""
    defaults = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[group]))
    restated = []
    for file in sorted((CONF / group).glob("*.yaml")):
        values = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
        values.pop("defaults", None)
        if group == "memory":  # the tiers are global: they also set trainer and data keys
            values = values.get("memory") or {}
        restated += [f"{group}/{file.name}: {key}" for key in _restated(values, defaults)]
    assert not restated


@pytest.mark.parametrize(
    "override, line",
    [
        ("model.finetune=lora", "model.finetune: this key is now finetune.method"),
        ("model/lora=toy", "model/lora: this key is now finetune (finetune=toy holds the toy model's LoRA targets)"),
        ("+model.lora.rank=8", "model.lora.rank: this key is now finetune.lora.rank"),
        ("model.train_text_encoder=true", "model.train_text_encoder: this key is now finetune.train_text_encoder"),
        ("optimizer.scheduler=cosine", "optimizer.scheduler: this key is now optimizer.lr_schedule"),
        ("eval.seed=3", "eval.seed: this key is now eval.metric_seed"),
    ],
)
def test_a_moved_key_stops_with_one_line_naming_the_new_one(override, line, capsys):
    with pytest.raises(SystemExit) as stopped:
        check_moved_keys([override])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == f"dbexp: error: {line}"


def test_keys_that_did_not_move_pass(capsys):
    check_moved_keys(["eval.seeds=[0,1]", "finetune=lora", "model=sd15", "--multirun", "finetune.lora.rank=8"])
    assert capsys.readouterr().err == ""
