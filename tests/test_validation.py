"""The validation loss: fixed inputs, logged at step 0 and every N steps, and invisible to training."""

import csv
from pathlib import Path

import pytest
import torch

from dbexp.errors import UserInputError
from dbexp.model_loading import load_model
from dbexp.run import make_module, plan_run
from dbexp.train import run
from dbexp.validation import VALIDATION_SEED_OFFSET, build_validation_set, timesteps, validation_loss
from tests.conftest import comparable


def test_validation_is_logged_and_changes_nothing_training_does(make_cfg):
    plain = run(make_cfg("eval.metrics=none", name="plain"))
    cfg = make_cfg("eval.metrics=none", "eval.val_every_n_steps=2", "eval.val_class_images=2", name="validated")
    validated = run(cfg)
    val_keys = {"val/loss_instance", "val/loss_prior", "val/loss", "val/seconds"}
    assert val_keys <= set(validated) and list(validated["in_training"]) == ["0", "2", "4"]
    assert set(validated["in_training"]["2"]) == val_keys
    at_2 = validated["in_training"]["2"]
    assert at_2["val/loss"] == pytest.approx(at_2["val/loss_instance"] + at_2["val/loss_prior"])
    unchanged = {k: v for k, v in validated.items() if k not in {*val_keys, "in_training"}}
    assert comparable(unchanged) == comparable(plain)
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))
    logged = [int(r["step"]) for r in rows if r.get("val/loss_instance")]
    assert logged == [0, 1, 3]  # before training, after steps 2 and 4 (each in the row of the step just taken)
    assert all(0 < float(r["val/loss_prior"]) < 10 for r in rows if r.get("val/loss_prior"))


def test_validation_inputs_are_fixed_by_the_eval_seed_only(make_cfg):
    cfg = make_cfg("eval.val_every_n_steps=2", "eval.val_class_images=2")
    plan = plan_run(cfg)
    parts = load_model(cfg.model, cfg.paths.cache_dir)
    vset = build_validation_set(cfg, parts, plan.instance_images, plan.instance_prompt, "a photo of dog", "cpu")
    assert set(vset.latents) == {"instance", "class"} and len(vset.latents["class"]) == 2
    assert vset.timesteps == timesteps(parts.noise_scheduler.config.num_train_timesteps, 4)
    module = make_module(cfg, plan, parts, None)
    first = validation_loss(module, vset, seed=0, batch_size=3)
    assert first == validation_loss(module, vset, seed=0, batch_size=3)
    # batching changes only the order of float sums
    assert validation_loss(module, vset, seed=0, batch_size=8) == pytest.approx(first, rel=1e-6)
    other_noise = validation_loss(module, vset, seed=1, batch_size=3)
    assert all(abs(other_noise[k] - first[k]) > 1e-4 for k in first)
    again = build_validation_set(cfg, parts, plan.instance_images, plan.instance_prompt, "a photo of dog", "cpu")
    assert all(torch.equal(torch.stack(vset.latents[k]), torch.stack(again.latents[k])) for k in vset.latents)
    # The validation class images are not the training ones: another seed range of the prior cache.
    manifests = [p.read_text() for p in Path(cfg.paths.cache_dir).glob("class_images/*/manifest.json")]
    assert any(f'"seed": {cfg.prior.seed + VALIDATION_SEED_OFFSET}' in m for m in manifests)


def test_timesteps_spread_over_the_schedule():
    assert timesteps(1000, 4) == [125, 375, 625, 875]
    assert timesteps(1000, 1) == [500]


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.val_every_n_steps=-1", "eval.val_every_n_steps=-1: must be >= 0"),
        ("eval.val_timesteps=0", "eval.val_timesteps=0: must be >= 1"),
        ("eval.val_class_images=-2", "eval.val_class_images=-2: must be >= 0"),
    ],
)
def test_bad_validation_settings_are_one_line(make_cfg, override, message):
    with pytest.raises(UserInputError, match=message):
        plan_run(make_cfg("eval.val_every_n_steps=2", override))


def test_the_validation_loss_can_be_the_objective_only_when_it_is_on(make_cfg):
    plan_run(make_cfg("eval.val_every_n_steps=2", "optimized_metric=val/loss_prior"))
    with pytest.raises(UserInputError, match=r"optimized_metric=val/loss_prior: this run does not log it"):
        plan_run(make_cfg("optimized_metric=val/loss_prior"))


def test_objective_at_best_evaluates_exports_and_caches_the_best_steps_weights(make_cfg):
    """A large learning rate: the validation loss is best before the last step; the export, and the weights
    a later run reuses from the cache, are that step's."""
    from safetensors.torch import load_file

    overrides = [
        "prior=none",
        "eval.metrics=none",
        "trainer.max_steps=6",
        "optimizer.lr=3e-2",  # measured: val/loss_instance 1.11 at step 0, best 1.24 at step 3, 1.49 at 6
        "eval.val_every_n_steps=1",
        "optimized_metric=val/loss_instance",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint.save_top_k=-1",
        "reuse_trained=true",
    ]
    cfg = make_cfg(*overrides, name="best")
    metrics = run(cfg)
    losses = {int(s): v["val/loss_instance"] for s, v in metrics["in_training"].items() if s != "0"}
    assert metrics["best_step"] == min(losses, key=losses.get) < 6, losses  # it peaks before the end
    assert metrics["val/loss_instance"] == losses[metrics["best_step"]]  # the run's objective: the best step's
    run_dir = Path(cfg.paths.output_dir)

    def unet(state):
        return {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}

    best = unet(
        torch.load(run_dir / "checkpoints" / f"step_{metrics['best_step']:06d}.ckpt", weights_only=False)["state_dict"]
    )
    last = unet(torch.load(run_dir / "checkpoints" / "step_000006.ckpt", weights_only=False)["state_dict"])
    assert best and any(not torch.equal(last[k], v) for k, v in best.items())
    for run_name in ("best", "again"):  # the run's export, then a run that reuses the cached weights
        if run_name == "again":
            again = run(make_cfg(*overrides, name="again"))
            assert again["train/steps_run"] == 0 and again["best_step"] == metrics["best_step"]
        exported = load_file(
            Path(cfg.paths.runs_dir) / run_name / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
        )
        assert all(torch.equal(exported[k], v) for k, v in best.items())
    assert "best_step" not in run(make_cfg(*overrides, "objective_at=last", "reuse_trained=false", name="last"))


def test_early_stopping_stops_when_the_signal_stalls_and_keeps_the_best_step(make_cfg):
    metrics = run(
        make_cfg(
            "prior=none",
            "eval.metrics=none",
            "trainer.max_steps=6",
            "optimizer.lr=3e-2",  # val/loss_instance: 1.37 at step 1, then 1.93 (measured, as above)
            "eval.val_every_n_steps=1",
            "callbacks=early_stopping",
            "callbacks.early_stopping.monitor=val/loss_instance",
            "callbacks.early_stopping.patience=1",
            "export.enabled=false",
            name="stopped",
        )
    )
    assert metrics["step"] == 2 and metrics["best_step"] == 1  # the objective (train/loss) picks no step
    assert metrics["val/loss_instance"] == metrics["in_training"]["1"]["val/loss_instance"]
    with pytest.raises(UserInputError, match=r"callbacks.early_stopping: val/loss_prior is never measured"):
        plan_run(make_cfg("callbacks=early_stopping", name="unmeasured"))
