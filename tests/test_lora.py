"""LoRA (finetune.method=lora): adapters only are trained, checkpointed, cached and exported; the export
loads with diffusers' load_lora_weights on the base model and draws what the trained module draws."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from dbexp.errors import UserInputError
from dbexp.generate import load_pipeline
from dbexp.model_loading import load_model
from dbexp.run import make_module, plan_run
from dbexp.train import run

LORA = ["finetune.method=lora", "finetune.train_text_encoder=true", "finetune.lora.rank=2", "optimizer.lr=1e-2"]
PROMPT = "a photo of sks dog"


def _draw(pipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipeline(PROMPT, num_inference_steps=3, generator=generator, output_type="np").images


CONVS = "finetune.lora.unet_target_modules=[to_q,to_k,to_v,to_out.0,conv1,conv2]"


def test_lora_on_convolutions_too_round_trips_through_load_lora_weights(make_cfg):
    cfg = make_cfg(*LORA, CONVS, "eval.final=false")
    run(cfg)
    export = Path(cfg.paths.output_dir) / "pipeline"
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(".conv1.lora_A." in k for k in ckpt["state_dict"]) and any(
        ".to_q.lora_A." in k for k in ckpt["state_dict"]
    )
    module = make_module(cfg, plan_run(cfg), load_model(cfg.model, cfg.paths.cache_dir), None)
    module.load_state_dict(ckpt["state_dict"], strict=False)
    with module.sampling() as live:
        trained = _draw(live)
    np.testing.assert_allclose(_draw(load_pipeline(str(export), "cpu", "float32")), trained, atol=1e-5)


def test_lora_trains_checkpoints_and_exports_adapters_only(make_cfg):
    cfg = make_cfg(*LORA, "reuse_trained=true")
    metrics = run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert metrics["step"] == 4

    # Checkpoint: the adapters of UNet and text encoder, and an optimizer over exactly those.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder"}
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == len(ckpt["optimizer_states"][0]["state"]) == len(keys)

    # Export: diffusers' LoRA file + the pointer to the base model, a small fraction of a full pipeline.
    export = run_dir / "pipeline"
    assert sorted(p.name for p in export.iterdir()) == ["dbexp.json", "pytorch_lora_weights.safetensors"]
    meta = json.loads((export / "dbexp.json").read_text())
    base = Path(meta["base"]["pretrained"])
    assert meta["finetune"] == "lora" and (base / "model_index.json").is_file()
    lora_size = (export / "pytorch_lora_weights.safetensors").stat().st_size
    base_size = sum(f.stat().st_size for f in base.rglob("*.safetensors"))
    assert lora_size < 0.05 * base_size

    # load_lora_weights on the base model draws what the trained weights draw, and not what the base draws.
    pipeline = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    before = _draw(pipeline)
    pipeline.load_lora_weights(export)
    after = _draw(pipeline)
    module = make_module(cfg, plan_run(cfg), load_model(cfg.model, cfg.paths.cache_dir), None)
    assert module.trained_keys() == set(keys)
    module.load_state_dict(ckpt["state_dict"], strict=False)
    with module.sampling() as live:
        trained = _draw(live)
    np.testing.assert_allclose(after, trained, atol=1e-5)
    assert np.abs(after - before).max() > 1e-2
    np.testing.assert_allclose(_draw(load_pipeline(str(export), "cpu", "float32")), after, atol=1e-6)  # dbexp.generate

    # A sweep trial that differs in guidance only reuses the cached adapters.
    again = run(make_cfg(*LORA, "reuse_trained=true", "eval.guidance_scale=3", name="again"))
    assert again["train/steps_run"] == 0 and again["reused_weights"]

    # A resumed LoRA run continues from the adapters in the checkpoint.
    longer = run(make_cfg(*LORA, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=6", name="r"))
    assert (longer["step"], longer["train/steps_run"]) == (6, 2)


def test_a_lora_export_trained_with_another_vae_draws_with_it(make_cfg, tmp_path):
    """``model.vae``: the LoRA export names the VAE it was trained with, and ``dbexp.generate`` puts it back."""
    from diffusers import AutoencoderKL

    cfg = make_cfg(*LORA)
    base = load_model(cfg.model, cfg.paths.cache_dir)
    AutoencoderKL.from_config(base.vae.config).save_pretrained(tmp_path / "my_vae")  # other weights
    cfg = make_cfg(*LORA, f"model.vae={tmp_path / 'my_vae'}", "eval.final=false", name="vae")
    run(cfg)
    export = Path(cfg.paths.output_dir) / "pipeline"
    assert json.loads((export / "dbexp.json").read_text())["base"]["vae"] == str(tmp_path / "my_vae")
    loaded = load_pipeline(str(export), "cpu", "float32")
    mine = AutoencoderKL.from_pretrained(tmp_path / "my_vae")
    assert all(torch.equal(a, b) for a, b in zip(loaded.vae.parameters(), mine.parameters(), strict=True))


def test_lora_without_text_encoder_leaves_it_untouched(make_cfg):
    cfg = make_cfg("finetune.method=lora", "finetune.lora.unet_target_modules=[to_q,to_v]")
    module = make_module(cfg, plan_run(cfg), load_model(cfg.model, cfg.paths.cache_dir), None)
    trained = module.trained_keys()
    assert trained and all(k.startswith("unet.") and (".to_q." in k or ".to_v." in k) for k in trained)
    assert not any(p.requires_grad for p in module.text_encoder.parameters())
    rank = module.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.lora_A["default"].weight.shape[0]
    assert rank == cfg.finetune.lora.rank == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("finetune.method=qlora", "finetune.method=qlora: use one of full, lora"),
        ("finetune.lora.rank=0", "finetune.lora.rank=0: must be >= 1"),
        ("finetune.lora.dropout=1.0", "finetune.lora.dropout=1.0: must be in [0, 1)"),
    ],
)
def test_bad_lora_settings_are_one_line_errors(make_cfg, override, message):
    with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        plan_run(make_cfg("finetune.method=lora", override))


def test_unknown_lora_target_modules_name_the_key_before_class_images(make_cfg):
    cfg = make_cfg("finetune.method=lora", "finetune.lora.unet_target_modules=[to_q,to_qq]")
    with pytest.raises(
        UserInputError, match=r"finetune.lora.unet_target_modules=\['to_q', 'to_qq'\]: no layer named to_qq"
    ):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    with pytest.raises(UserInputError, match=r"finetune.lora.unet_target_modules=\['to_q', 'to_qq'\]"):
        make_module(cfg, plan_run(cfg), load_model(cfg.model, cfg.paths.cache_dir), None)
