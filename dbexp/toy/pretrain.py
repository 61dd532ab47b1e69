"""``python -m dbexp.toy.pretrain``: pretrain the toy base model on the toy world, on a CPU.

The architecture is ``conf/model/toy.yaml``'s (Stable Diffusion's, tiny) with the world's words in
the tokenizer. Two stages:

1. the VAE learns to reconstruct scenes of every pattern (so it can draw a toy subject later);
2. the UNet and the text encoder learn plain scenes from captions naming a random subset of their
   attributes (10 % empty, for classifier-free guidance), on VAE latents of a fixed scene pool
   encoded once; min-SNR-5 loss weighting, EMA weights.

The result is a diffusers folder (safetensors) with ``toy_pretrain.json`` (settings, seconds, the
base model's prompt fidelity by the oracle) and ``samples.png``. Ship it with
``--out dbexp/assets/toy/model``; ``model=toy`` loads it through the same loader as SD1.5.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from dbexp import CONF_DIR
from dbexp.encoding_cache import tokenize
from dbexp.losses import min_snr_weights, snr
from dbexp.model_loading import ModelParts, build_components, save_pipeline
from dbexp.sampling import generate, make_grid
from dbexp.toy import judge
from dbexp.toy.world import PATTERNS, WORDS, caption, random_caption, render, sample_scene, scenes

TOY_CONFIG = CONF_DIR / "model" / "toy.yaml"


@dataclass
class PretrainSettings:
    vae_steps: int = 600
    unet_steps: int = 12000
    batch_size: int = 32
    pool: int = 8192  # plain scenes whose latents the UNet learns from
    lr: float = 1e-3
    text_encoder_lr: float = 5e-4
    uncond: float = 0.1  # share of empty captions
    drop: float = 0.3  # chance that a caption leaves out each optional attribute
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    check_every: int = 2000  # prompt fidelity of the EMA weights every N UNet steps (0: only at the end)
    guidance_scale: float = 7.5  # of the checks and the reported fidelity
    report_prompts: int = 192  # prompts (one picture each, per guidance scale) of the reported fidelity
    seed: int = 0


def toy_architecture() -> dict:
    """``conf/model/toy.yaml``'s architecture, with every word of the toy world in the tokenizer."""
    arch = OmegaConf.to_container(OmegaConf.load(TOY_CONFIG).architecture, resolve=True)
    arch["tokenizer_words"] = sorted(set(arch.get("tokenizer_words", [])) | set(WORDS))
    return arch


def pixels_of(images) -> torch.Tensor:
    arrays = np.stack([np.asarray(i, dtype=np.float32) for i in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1


def train_vae(vae, settings: PretrainSettings, resolution: int) -> float:
    """Reconstruction (+ a whisper of KL) on scenes of every pattern; returns the held-out MSE."""
    rng = random.Random(f"{settings.seed}:vae")
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), 2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=settings.vae_steps, pct_start=0.1)
    bar = tqdm(range(settings.vae_steps), desc="toy pretraining: VAE", unit="step")
    for _ in bar:
        batch = [sample_scene(rng, pattern=rng.choice(PATTERNS)) for _ in range(settings.batch_size)]
        x = pixels_of(render(s, resolution) for s in batch)
        posterior = vae.encode(x).latent_dist
        loss = F.mse_loss(vae.decode(posterior.sample()).sample, x) + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)
    held_out = [sample_scene(random.Random(f"vae-test:{i}"), pattern=PATTERNS[i % 4]) for i in range(256)]
    with torch.no_grad():
        x = pixels_of(render(s, resolution) for s in held_out)
        return float(F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x))


@torch.no_grad()
def encode_pool(vae, pool, resolution: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Posterior means and stds of the pool's scenes, and the latent scaling factor (1 / std)."""
    means, stds = [], []
    for begin in range(0, len(pool), 256):
        dist = vae.encode(pixels_of(render(s, resolution) for s in pool[begin : begin + 256])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    mean, std = torch.cat(means), torch.cat(stds)
    return mean, std, float(1.0 / mean.std())


def fidelity_prompts(count: int, seed: int = 777) -> list[str]:
    """Full captions of fresh scenes (not the training pool's seed)."""
    return [caption(s) for s in scenes(seed, count)]


@torch.no_grad()
def measure_prompt_fidelity(parts: ModelParts, prompts: list[str], guidance_scale: float, seed: int = 0) -> dict:
    """The oracle's reading of one picture per prompt: overall and per attribute."""
    pipeline = parts.pipeline()
    images = generate(
        pipeline,
        prompts,
        [seed + i for i in range(len(prompts))],
        guidance_scale=guidance_scale,
        num_inference_steps=25,
        batch_size=64,
    )
    readings = judge.read(images)
    return {
        "prompt_fidelity": judge.prompt_fidelity(readings, prompts),
        "per_attribute": judge.attribute_accuracy(readings, prompts),
        "images": images,
    }


def train_denoiser(parts: ModelParts, settings: PretrainSettings, resolution: int, log_file) -> None:
    pool = scenes(settings.seed, settings.pool)
    mean, std, scaling = encode_pool(parts.vae, pool, resolution)
    parts.vae.register_to_config(scaling_factor=scaling)
    rng = random.Random(f"{settings.seed}:unet")
    generator = torch.Generator().manual_seed(settings.seed)
    unet, text_encoder, scheduler = parts.unet, parts.text_encoder, parts.noise_scheduler
    unet.train().requires_grad_(True)
    text_encoder.train().requires_grad_(True)
    groups = [
        {"params": list(unet.parameters()), "lr": settings.lr},
        {"params": list(text_encoder.parameters()), "lr": settings.text_encoder_lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, [settings.lr, settings.text_encoder_lr], total_steps=settings.unet_steps, pct_start=0.05
    )
    trained = [p for g in groups for p in g["params"]]
    ema = EMAModel(trained, decay=settings.ema_decay)
    empty_ids = tokenize(parts.tokenizer, "")
    check_prompts = fidelity_prompts(48)
    uncond, drop = settings.uncond, settings.drop
    started = time.time()
    bar = tqdm(range(1, settings.unet_steps + 1), desc="toy pretraining: UNet + text encoder", unit="step")
    for step in bar:
        index = torch.randint(0, len(pool), (settings.batch_size,), generator=generator)
        latents = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)) * scaling
        texts = ["" if rng.random() < uncond else random_caption(pool[i], rng, drop)[0] for i in index.tolist()]
        ids = torch.cat([empty_ids if not text else tokenize(parts.tokenizer, text) for text in texts])
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (settings.batch_size,), generator=generator)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, text_encoder(ids)[0]).sample
        weights = min_snr_weights(snr(scheduler.alphas_cumprod, timesteps), settings.min_snr_gamma, "epsilon")
        loss = (F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(trained)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if settings.check_every and step % settings.check_every == 0 and step < settings.unet_steps:
            ema.store(trained)
            ema.copy_to(trained)
            unet.eval(), text_encoder.eval()
            check = measure_prompt_fidelity(parts, check_prompts, settings.guidance_scale)
            ema.restore(trained)
            unet.train(), text_encoder.train()
            line = {"step": step, "seconds": round(time.time() - started, 1), "loss": loss.item()}
            line |= {k: v for k, v in check.items() if k != "images"}
            print(json.dumps(line), file=log_file, flush=True)
            bar.write(f"step {step}: prompt fidelity {check['prompt_fidelity']:.3f} {check['per_attribute']}")
    ema.copy_to(trained)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)


def pretrain(out: Path, settings: PretrainSettings) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    arch = toy_architecture()
    resolution = int(arch["vae"]["sample_size"])
    parts = build_components(arch)
    report: dict = {"settings": asdict(settings), "torch_threads": torch.get_num_threads()}
    started = time.time()
    with open(out.parent / f"{out.name}.log.jsonl", "a") as log_file:
        report["vae_reconstruction_mse"] = train_vae(parts.vae, settings, resolution)
        report["vae_seconds"] = time.time() - started
        train_denoiser(parts, settings, resolution, log_file)
    report["seconds"] = time.time() - started
    prompts = fidelity_prompts(settings.report_prompts)
    report["base_prompt_fidelity"] = {}
    for scale in sorted({1.0, 3.0, 5.0, 7.5, settings.guidance_scale}):
        result = measure_prompt_fidelity(parts, prompts, scale)
        report["base_prompt_fidelity"][f"{scale:g}"] = {k: v for k, v in result.items() if k != "images"}
        if scale == settings.guidance_scale:
            grid = [i.resize((64, 64), 0) for i in result["images"][:48]]
            samples = make_grid(grid, columns=8)
    save_pipeline(parts, out, replace=True, extra_files={"toy_pretrain.json": json.dumps(report, indent=2) + "\n"})
    samples.save(out / "samples.png")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dbexp.toy.pretrain", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/toy_pretrain"), help="diffusers folder to write")
    for name, value in asdict(PretrainSettings()).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(ap.parse_args(argv))
    out = args.pop("out")
    report = pretrain(out, PretrainSettings(**args))
    fidelity = report["base_prompt_fidelity"][f"{args['guidance_scale']:g}"]
    print(f"pretrained in {report['seconds'] / 60:.1f} min; base prompt fidelity {fidelity['prompt_fidelity']:.3f}")
    print(f"toy model: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
