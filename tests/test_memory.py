"""Memory presets (conf/memory): what each tier turns on, and that each setting reaches the model."""

import sys
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from dbexp.errors import UserInputError
from dbexp.model_loading import load_model
from dbexp.run import make_module, plan_run
from dbexp.train import run
from tests.conftest import compose_train


def test_the_tiers_build_on_each_other(tmp_path):
    def tier(name):
        cfg = compose_train(tmp_path, tmp_path / "cache", f"memory={name}")
        m = cfg.memory
        return (
            cfg.trainer.precision,
            cfg.data.cache_latents,
            m.gradient_checkpointing,
            m.optimizer_8bit,
            m.offload_frozen,
            m.lora_base_dtype,
        )

    assert tier("default") == ("32-true", True, False, False, False, None)
    assert tier("24gb") == ("bf16-mixed", True, False, False, False, "auto")
    assert tier("16gb") == ("bf16-mixed", True, True, True, False, "auto")
    assert tier("12gb") == ("bf16-mixed", True, True, True, True, "auto")
    # the command line still wins over a tier (a T4 has no bf16)
    t4 = compose_train(tmp_path, tmp_path / "cache", "memory=16gb", "trainer.precision=16-mixed")
    assert t4.trainer.precision == "16-mixed" and t4.memory.optimizer_8bit


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_the_16gb_tier_trains_with_8bit_adamw_and_checkpointing(make_cfg, finetune):
    """bf16 autocast + activation checkpointing + bitsandbytes' 8-bit AdamW, end to end (on CPU here)."""
    cfg = make_cfg("memory=16gb", f"finetune.method={finetune}", "finetune.train_text_encoder=true", "eval.final=false")
    metrics = run(cfg)
    assert metrics["step"] == 4 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    states = list(ckpt["optimizer_states"][0]["state"].values())
    assert states and all("exp_avg" not in s for s in states)  # bitsandbytes' state, not torch AdamW's
    if finetune == "full":  # bitsandbytes quantizes tensors of >= 4096 elements (the tiny adapters are smaller)
        assert any("__bnb_optimizer_quant_state__" in s for s in states)
    else:  # checkpointed text-encoder layers still pass gradients to their adapters
        te_b = [v for k, v in ckpt["state_dict"].items() if k.startswith("text_encoder.") and ".lora_B." in k]
        assert te_b and all(float(v.abs().sum()) > 0 for v in te_b)


def test_8bit_adamw_keeps_its_moments_in_8_bits(make_cfg):
    from dbexp.optimization import build_optimizer

    cfg = make_cfg()
    unet = load_model(cfg.model, cfg.paths.cache_dir).unet
    optimizer = build_optimizer(cfg.optimizer, list(unet.parameters()), [], eight_bit=True)
    big = max(unet.parameters(), key=lambda p: p.numel())
    big.grad = torch.randn_like(big)
    optimizer.step()
    assert type(optimizer).__name__ == "AdamW8bit"
    assert optimizer.state[big]["state1"].dtype == optimizer.state[big]["state2"].dtype == torch.uint8


def test_memory_settings_reach_the_model(make_cfg):
    def module(*overrides):
        cfg = make_cfg(*overrides)
        return make_module(cfg, plan_run(cfg), load_model(cfg.model, cfg.paths.cache_dir), None)

    plain = module("finetune.train_text_encoder=true")
    assert not plain.unet.is_gradient_checkpointing
    assert all(isinstance(p, AttnProcessor2_0) for p in plain.unet.attn_processors.values())

    saving = module("finetune.train_text_encoder=true", "memory.gradient_checkpointing=true", "memory.attention=eager")
    assert saving.unet.is_gradient_checkpointing and saving.text_encoder.is_gradient_checkpointing
    assert all(isinstance(p, AttnProcessor) for p in saving.unet.attn_processors.values())
    assert saving.text_encoder.config._attn_implementation == "eager"

    for set_to_none, expected in ((True, None), (False, 0.0)):
        m = module(f"memory.set_to_none={str(set_to_none).lower()}")
        optimizer = torch.optim.SGD(m.unet.parameters(), lr=0.1)
        weight = next(m.unet.parameters())
        weight.grad = torch.ones_like(weight)
        m.optimizer_zero_grad(0, 0, optimizer)
        assert weight.grad is None if expected is None else float(weight.grad.abs().sum()) == expected


def test_offloaded_frozen_parts_train_and_sample(make_cfg):
    cfg = make_cfg("memory.offload_frozen=true", "eval.final=false")
    metrics = run(cfg)
    assert metrics["step"] == 4
    assert (Path(cfg.paths.output_dir) / "samples" / "step_4.png").is_file()


def test_8bit_adamw_without_bitsandbytes_is_one_line_before_any_work(make_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes → ImportError
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", None)
    with pytest.raises(
        UserInputError, match=r"memory.optimizer_8bit=true needs bitsandbytes.*pip install 'dbexp\[memory\]'"
    ):
        plan_run(make_cfg("memory=16gb"))


def test_8bit_adamw_with_another_optimizer_is_refused(make_cfg):
    with pytest.raises(UserInputError, match=r"memory.optimizer_8bit=true is 8-bit AdamW, but optimizer.name=sgd"):
        plan_run(make_cfg("memory.optimizer_8bit=true", "optimizer=sgd"))
    with pytest.raises(UserInputError, match=r"memory.attention=flash: use one of sdpa, eager"):
        plan_run(make_cfg("memory.attention=flash"))


def test_a_lora_base_held_in_bf16_trains_float32_adapters_on_every_part_and_samples(make_cfg):
    """``memory.lora_base_dtype=auto`` under bf16 autocast, on a tiny SDXL (UNet + both text encoders): the frozen
    base weights are bf16 (half the bytes), the adapters float32; training, validation and sampling run."""
    from dbexp.memory import half_base_dtype

    lora = ["finetune.method=lora", "finetune.train_text_encoder=true", "finetune.lora.rank=2"]
    short = ["trainer.max_steps=2", "eval.val_every_n_steps=2", "eval.val_class_images=1", "eval.val_timesteps=1"]
    short += ["eval.final=false"]
    cfg = make_cfg("model=tiny_xl", "eval.metrics=tiny", *short, *lora)
    cfg.trainer.precision, cfg.memory.lora_base_dtype = "bf16-mixed", "auto"
    assert half_base_dtype(cfg.memory, "lora", "bf16-mixed") == torch.bfloat16
    assert half_base_dtype(cfg.memory, "lora", "32-true") is None
    assert half_base_dtype(cfg.memory, "full", "bf16-mixed") is None
    metrics = run(cfg)
    assert metrics["step"] == 2 and torch.isfinite(torch.tensor([metrics["train/loss"], metrics["val/loss"]])).all()
    assert (Path(cfg.paths.output_dir) / "samples" / "step_2.png").is_file()
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"unet", "text_encoder", "text_encoder_2"}
    assert {v.dtype for v in ckpt["state_dict"].values()} == {torch.float32}  # the adapters

    parts = load_model(cfg.model, cfg.paths.cache_dir)
    full = sum(p.nbytes for m in (parts.unet, parts.text_encoder, parts.text_encoder_2) for p in m.parameters())
    module = make_module(cfg, plan_run(cfg), parts, None)
    for model in (module.unet, module.text_encoder, module.text_encoder_2):
        dtypes = {p.requires_grad: p.dtype for p in model.parameters()}
        assert dtypes == {True: torch.float32, False: torch.bfloat16}
    assert module.vae.dtype == torch.float32  # its latents are cached; SDXL's overflows in half precision
    held = sum(p.nbytes for m in (module.unet, module.text_encoder, module.text_encoder_2) for p in m.parameters())
    assert held < 0.6 * full


def test_a_half_lora_base_that_autocast_would_not_match_is_refused(make_cfg):
    with pytest.raises(UserInputError, match=r"memory.lora_base_dtype=float16 needs autocast in that type, but "):
        plan_run(make_cfg("memory=24gb", "memory.lora_base_dtype=float16"))
    with pytest.raises(UserInputError, match=r"memory.lora_base_dtype=half: use null, auto, bfloat16, float16"):
        plan_run(make_cfg("memory.lora_base_dtype=half"))
