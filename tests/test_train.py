"""End-to-end training on the tiny model: the run folder, what is trained, the loss targets, export."""

import csv
import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from dbexp.datamodule import DreamBoothDataModule, load_subject_images, resolve_subject
from dbexp.dreambooth_module import DreamBoothModule
from dbexp.errors import UserInputError
from dbexp.model_loading import load_model
from dbexp.run import plan_run
from dbexp.train import run
from tests.conftest import comparable


def _weights(folder, part):
    name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
    return load_file(folder / part / name)


def _base(cfg):
    return load_model(cfg.model, cfg.paths.cache_dir)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_with_prior_leaves_the_documented_folder(make_cfg):
    cfg = make_cfg()
    metrics = run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    for path in [".hydra/config.yaml", "checkpoints/last.ckpt", "pipeline/model_index.json", "metrics.json"]:
        assert (run_dir / path).is_file(), path
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "final",
        "final.png",
        "step_0.png",
        "step_2.png",
        "step_4.png",
    ]
    index = json.loads((run_dir / "samples" / "final" / "index.json").read_text())
    assert [(i["prompt"], i["seed"]) for i in index] == [("a photo of sks dog", 0), ("a photo of dog", 0)]
    assert all((run_dir / "samples" / "final" / i["file"]).is_file() for i in index)
    manifests = [json.loads(p.read_text()) for p in Path(cfg.paths.cache_dir).glob("class_images/*/manifest.json")]
    assert any(m["fields"]["class_prompt"] == "a photo of dog" and m["count"] >= 2 for m in manifests)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert comparable(saved) == pytest.approx(comparable(metrics))
    assert saved["step"] == 4
    assert saved["train/loss"] == pytest.approx(saved["train/loss_instance"] + 1.0 * saved["train/loss_prior"])
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    assert {"train/loss", "train/loss_instance", "train/loss_prior", "train/lr"} <= set(rows[0])
    assert len([r for r in rows if r["train/loss"]]) == 4

    # The VAE and (untrained) text encoder are exported unchanged; the UNet has moved.
    base = _base(cfg)
    exported = run_dir / "pipeline"
    assert _same(_weights(exported, "vae"), base.vae.state_dict())
    assert _same(_weights(exported, "text_encoder"), base.text_encoder.state_dict())
    assert not _same(_weights(exported, "unet"), base.unet.state_dict())


def test_run_without_prior(make_cfg):
    cfg = make_cfg("prior=none")
    metrics = run(cfg)
    assert "train/loss_prior" not in metrics
    assert metrics["train/loss"] == pytest.approx(metrics["train/loss_instance"])


def test_text_encoder_training_has_its_own_learning_rate(make_cfg):
    cfg = make_cfg("finetune.train_text_encoder=true", "optimizer.lr=1e-4", "optimizer.text_encoder_lr=3e-4")
    metrics = run(cfg)
    assert metrics["train/lr"] == pytest.approx(1e-4)
    assert metrics["train/lr_text_encoder"] == pytest.approx(3e-4)
    run_dir = Path(cfg.paths.output_dir)
    assert not _same(_weights(run_dir / "pipeline", "text_encoder"), _base(cfg).text_encoder.state_dict())
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("text_encoder.") for k in checkpoint["state_dict"])
    assert not any(k.startswith("vae.") for k in checkpoint["state_dict"])


def test_only_trained_parts_reach_the_optimizer(make_cfg):
    cfg = make_cfg()
    plan = plan_run(cfg)
    for train_te in (False, True):
        cfg.finetune.train_text_encoder = train_te
        parts = _base(cfg)
        module = DreamBoothModule(parts, cfg.finetune, cfg.optimizer, plan.instance_prompt, plan.class_prompt, 1.0, 0)
        module.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False)
        optimizer = module.configure_optimizers()["optimizer"]
        optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert optimized.isdisjoint(id(p) for p in module.vae.parameters())
        assert {id(p) for p in module.unet.parameters()} <= optimized
        te = {id(p) for p in module.text_encoder.parameters()}
        assert (te <= optimized) if train_te else te.isdisjoint(optimized)
        assert not any(p.requires_grad for p in module.vae.parameters())
        module.train()
        assert not module.vae.training and module.unet.training
        assert module.text_encoder.training == train_te


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_step_targets_follow_the_prediction_type(make_cfg, prediction_type):
    """The loss of one step, recomputed by hand: ε for epsilon, √ᾱ·ε − √(1−ᾱ)·x₀ for v-prediction."""
    cfg = make_cfg(f"model.prediction_type={prediction_type}", "prior=none")
    plan = plan_run(cfg)
    parts = _base(cfg)
    module = DreamBoothModule(parts, cfg.finetune, cfg.optimizer, plan.instance_prompt, None, 0.0, cfg.seed)
    module.train()
    images = load_subject_images(resolve_subject(cfg.data))
    data = DreamBoothDataModule(cfg.data, images, None, seed=cfg.seed)
    batch = {"instance_pixels": data.instances[0]["pixels"][None], "instance_index": torch.tensor([0])}
    with torch.no_grad():
        loss = module.training_step(batch, 0)
        latents, noise, t = module._diffusion_inputs(batch, ["instance"])
        alpha_bar = parts.noise_scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        prediction = module.unet(noisy, t, module.text_encoder(module.instance_ids)[0]).sample
        target = noise if prediction_type == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
        other = (alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents) if prediction_type == "epsilon" else noise
    assert loss.item() == pytest.approx(torch.mean((prediction - target) ** 2).item(), rel=1e-5)
    assert loss.item() != pytest.approx(torch.mean((prediction - other) ** 2).item(), rel=1e-3)


def test_v_prediction_run_exports_its_prediction_type(make_cfg):
    cfg = make_cfg("model.prediction_type=v_prediction")
    run(cfg)
    config = json.loads((Path(cfg.paths.output_dir) / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"


def test_min_snr_noise_offset_checkpointing_accumulation_and_sgd(make_cfg):
    metrics = run(
        make_cfg(
            "finetune.min_snr_gamma=5.0",
            "finetune.noise_offset=0.05",
            "memory.gradient_checkpointing=true",
            "trainer.accumulate_grad_batches=2",
            "optimizer=sgd",
            "optimizer.lr_schedule=cosine",
            "optimizer.warmup_steps=2",
            "data.random_flip=true",
            "data.center_crop=false",
        )
    )
    assert metrics["step"] == 4
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_runs_are_deterministic(make_cfg):
    first = run(make_cfg(name="a"))
    second = run(make_cfg(name="b"))
    assert comparable(first) == comparable(second)


def test_exported_pipeline_loads_and_generates(make_cfg):
    cfg = make_cfg("prior=none")
    run(cfg)
    pipeline = StableDiffusionPipeline.from_pretrained(Path(cfg.paths.output_dir) / "pipeline", use_safetensors=True)
    image = pipeline(
        "a photo of sks dog", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pil"
    ).images[0]
    assert image.size == (32, 32)


def test_unknown_optimized_metric_names_the_available_ones(make_cfg):
    with pytest.raises(UserInputError, match=r"optimized_metric=val/dino.*available: train/loss.*eval/dino"):
        plan_run(make_cfg("optimized_metric=val/dino"))
    with pytest.raises(UserInputError, match=r"optimized_metric=eval/dino: this run does not log it"):
        plan_run(make_cfg("optimized_metric=eval/dino", "eval.metrics=none"))


def test_samples_go_to_every_logger_that_shows_images(make_cfg):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("logger=many")
    run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    grid = Image.open(run_dir / "samples" / "final.png")
    assert grid.height == 2 * 128  # rows: the two FAST prompts, one seed column, 32 px upscaled to 128
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [e.step for e in events.Images("samples")] == [0, 2, 4, 4]
    assert "train/loss" in events.Tags()["scalars"]
    assert (run_dir / "csv" / "metrics.csv").is_file()


def test_the_objective_is_the_optimized_metric_or_a_clear_error():
    from dbexp.run import objective

    assert objective({"train/loss": 0.5, "step": 4}, "train/loss") == 0.5
    with pytest.raises(UserInputError, match=r"optimized_metric=eval/dino: not in the run's metrics; available: step"):
        objective({"train/loss": 0.5, "step": 4}, "eval/dino")


def test_loggers_are_closed_as_failed_when_the_run_crashes(make_cfg):
    cfg = make_cfg("logger=csv", "+callbacks.crash={_target_: tests.helpers.CrashAtStep, step: 2}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    # CSVLogger buffers rows until it is saved (every 100 steps, or when finalized): rows here mean it was closed.
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))
    assert [r["step"] for r in rows] == ["0"]  # step 1 crashed before its row was logged


@pytest.mark.parametrize("every", [1, 4])
def test_a_nan_loss_stops_training_at_the_next_logged_step_naming_the_step_it_appeared(make_cfg, every):
    cfg = make_cfg(
        "optimizer=sgd",
        "optimizer.lr=1e12",
        "trainer.gradient_clip_val=null",
        "trainer.max_steps=50",
        f"trainer.log_every_n_steps={every}",
    )
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step \d+ .*lower optimizer.lr") as stop:
        run(cfg)
    first_bad = int(re.search(r"at step (\d+)", str(stop.value)).group(1))
    table = Path(cfg.paths.output_dir) / "csv" / "metrics.csv"
    rows = list(csv.DictReader(table.open())) if table.exists() else []  # no rows: the file is never written
    logged = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert all(math.isfinite(float(r["train/loss"])) for r in rows if r.get("train/loss"))  # stopped before logging it
    assert 0 < first_bad < every * (len(logged) + 1) < 50  # caught at the first logged step after it, not after 50


def test_fsdp_preset_builds_its_strategy_and_refuses_what_needs_the_whole_model(make_cfg):
    """Lightning's FSDP needs CUDA GPUs (none here): the preset is composed and its strategy built."""
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = make_cfg("trainer=fsdp")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy.kwargs["use_orig_params"]
    assert strategy._state_dict_type == "full"
    with pytest.raises(UserInputError, match=r"trainer=fsdp shards the model.*add eval.every_n_steps=0 eval.at_start"):
        plan_run(cfg)
    off = ["eval.every_n_steps=0", "eval.at_start=false", "eval.final=false", "export.enabled=false"]
    assert plan_run(make_cfg("trainer=fsdp", *off)).sharded
    assert not plan_run(make_cfg()).sharded
