"""The one table of what each config key affects: resume, trained-weights reuse and the report agree with it."""

import copy

import pytest
import torch
from omegaconf import OmegaConf

from dbexp.checkpointing import resolve_ckpt_path, setting_fingerprint
from dbexp.config_roles import (
    EVALUATION,
    LENGTH,
    NOTHING,
    PLACE,
    ROLES,
    TRAINING,
    callback_role,
    role,
    shows_in_report,
    training_setting,
)
from dbexp.run import save_config


def _leaves(tree, prefix=""):
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{key}.")
        else:
            yield key


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, list):
        return [*value, value[0] if value else 1]
    if isinstance(value, str):
        return value + "_other"
    return "other"  # None, {}


def _with(tree, key, value):
    tree = copy.deepcopy(tree)
    *parents, leaf = key.split(".")
    node = tree
    for name in parents:
        node = node[name]
    node[leaf] = value
    return tree


def _expected(before, after, key):
    if key.startswith("callbacks."):  # by target: before or after the change (a changed _target_ is another callback)
        name = key.split(".")[1]
        roles = {callback_role(before["callbacks"][name]), callback_role(after["callbacks"][name])}
        return TRAINING if TRAINING in roles else NOTHING
    return role(key)


@pytest.mark.parametrize("model", ["tiny", "toy"])
def test_every_key_changes_resume_and_reuse_as_its_role_says(make_cfg, model):
    """Each key of a composed config, changed on its own: the resume match and the trained-weights key change
    exactly when its role says they should (the roles of the table's own entries included)."""
    base = OmegaConf.to_container(make_cfg(f"model={model}"), resolve=True)
    base_resume, base_reuse = setting_fingerprint(base), training_setting(base)
    keys = set(_leaves(base))
    assert {k for k in keys if any(k == e or k.startswith(f"{e}.") for e in ROLES)}, "the table names no key"
    seen_roles = set()
    for key in sorted(keys):
        node = base
        for name in key.split("."):
            node = node[name]
        changed = _with(base, key, _changed(node))
        expected = _expected(base, changed, key)
        seen_roles.add(expected)
        resume_moved = setting_fingerprint(changed) != base_resume
        reuse_moved = training_setting(changed) != base_reuse
        assert resume_moved == (expected == TRAINING), (key, expected)
        assert reuse_moved == (expected in (TRAINING, LENGTH)), (key, expected)
    assert seen_roles == {TRAINING, LENGTH, EVALUATION, PLACE, NOTHING}


def test_a_key_not_in_the_table_counts_as_training():
    assert role("optimizer.some_new_key") == TRAINING
    assert role("eval.anything") == EVALUATION
    assert role("trainer.max_steps") == LENGTH
    assert callback_role({"_target_": "lightning.pytorch.callbacks.EarlyStopping"}) == TRAINING
    assert callback_role({"_target_": "lightning.pytorch.callbacks.TQDMProgressBar"}) == NOTHING
    assert callback_role(None) == NOTHING


def test_the_report_shows_what_can_change_results():
    assert shows_in_report("optimizer.lr") and shows_in_report("eval.guidance_scale")
    assert shows_in_report("trainer.max_steps") and shows_in_report("finetune.lora.rank")
    for key in ("paths.output_dir", "logger.csv.save_dir", "task_name", "data.num_workers", "callbacks.x.y"):
        assert not shows_in_report(key), key


def test_a_run_that_differs_only_in_what_changes_nothing_resumes_with_ckpt_path_last(make_cfg, tmp_path):
    first = make_cfg(name="2026-01-01_00-00-00")
    save_config(first, tmp_path / "runs" / "2026-01-01_00-00-00")
    last = tmp_path / "runs" / "2026-01-01_00-00-00" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({}, last)
    same_setting = [
        "export.enabled=false",
        "data.num_workers=1",
        "trainer.log_every_n_steps=3",
        "trainer.max_steps=8",  # a resume may train on
        "eval.guidance_scale=3",
        "logger=none",
    ]
    for override in same_setting:
        later = make_cfg(override, "ckpt_path=last", name="2026-01-02_00-00-00")
        assert resolve_ckpt_path("last", later, tmp_path / "runs") == str(last.resolve()), override
    for override in ("optimizer.lr=1e-3", "prior.weight=0.5", "finetune=lora"):
        other = make_cfg(override, "ckpt_path=last", name="2026-01-02_00-00-00")
        assert setting_fingerprint(other) != setting_fingerprint(first), override
