"""Trained weights by content: what the key covers, and a run that reuses them trains no step."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dbexp.config_roles import training_setting
from dbexp.train import run


def test_the_key_ignores_sampling_evaluation_logging_and_places(make_cfg):
    base = training_setting(make_cfg())
    same = [
        ("eval.guidance_scale=3", "eval.num_inference_steps=9", "eval.metrics=none"),
        ("logger=none", "task_name=other", "optimized_metric=eval/score", "export.enabled=false"),
        (
            "callbacks.model_checkpoint.every_n_train_steps=7",
            "callbacks.progress_bar=null",
            "trainer.log_every_n_steps=3",
        ),
    ]
    for overrides in same:
        assert training_setting(make_cfg(*overrides, name="elsewhere")) == base, overrides
    for changed in ("optimizer.lr=1e-3", "prior.weight=0.5", "seed=1", "trainer.max_steps=5", "data.random_flip=true"):
        assert training_setting(make_cfg(changed)) != base, changed


def _unet(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


def test_a_guidance_only_run_reuses_the_trained_weights(make_cfg, cache_dir):
    first = make_cfg("reuse_trained=true", "seed=11", "eval.metrics=tiny", "eval.metrics_every_n_steps=2", name="a")
    trained = run(first)
    assert trained["train/steps_run"] == 4
    entries = list(Path(cache_dir).glob("trained/*/manifest.json"))
    assert any(json.loads(p.read_text())["source_run"] == first.paths.output_dir for p in entries)

    # Sample grids and in-training evaluations do not change the weights: the same training without them
    # ends with the same UNet (so excluding eval.* from the key is sound).
    quiet = make_cfg("reuse_trained=false", "seed=11", "eval.every_n_steps=0", "eval.at_start=false", name="b")
    assert run(quiet)["train/steps_run"] == 4
    a, b = _unet(Path(first.paths.output_dir)), _unet(Path(quiet.paths.output_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)

    other_guidance = make_cfg("reuse_trained=true", "seed=11", "eval.metrics=tiny", "eval.guidance_scale=3", name="c")
    reused = run(other_guidance)
    assert reused["train/steps_run"] == 0 and reused["reused_weights"]
    assert reused["train/loss"] == trained["train/loss"] and reused["step"] == 4
    assert list(reused["evaluation"]["guidance_scales"]) == ["3"]
    c = _unet(Path(other_guidance.paths.output_dir))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert (Path(other_guidance.paths.output_dir) / "samples" / "final.png").is_file()
    assert not (Path(other_guidance.paths.output_dir) / "checkpoints").exists()  # no training, no checkpoint

    changed = run(make_cfg("reuse_trained=true", "seed=12", "eval.metrics=tiny", name="d"))
    assert changed["train/steps_run"] == 4  # another seed: trained
