"""``python -m dbexp.generate pipeline=<dir> prompt="a sks dog on the beach"``: images from an exported model.

Image i uses seed ``seed + i``; the images and a grid go into this command's own run folder. torch and
diffusers load when the command runs, so ``--help``, ``--cfg job`` and a wrong key answer in a second.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dbexp.config import MOVED_GENERATE_KEYS, prepare_command_line
from dbexp.console import announce, quiet_known_noise
from dbexp.errors import UserInputError, exit_on_user_error
from dbexp.finetune import is_lora_export

log = logging.getLogger("dbexp.generate")
DTYPES = ("float32", "float16", "bfloat16")  # torch's names


def load_pipeline(folder: str, device: str, dtype: str):
    """An exported (or any diffusers) Stable Diffusion folder — or a LoRA export, put on the base model
    it names — on ``device`` in ``dtype``."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(folder).expanduser()
    lora = is_lora_export(path)
    if not lora and not (path / "model_index.json").is_file():
        raise UserInputError(
            f"pipeline={folder}: not a diffusers pipeline folder (no model_index.json) nor a dbexp LoRA export; "
            "give <run dir>/pipeline of a finished dbexp.train run"
        )
    source = lora_base_folder(path) if lora else path
    vae = lora_base_vae(path) if lora else None
    extra = {"vae": vae} if vae is not None else {}
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise UserInputError(f"dtype={dtype}: use auto, {', '.join(DTYPES)}")
    if (Path(source) / "text_encoder_2").is_dir():  # SDXL
        pipeline = StableDiffusionXLPipeline.from_pretrained(
            source, dtype=getattr(torch, dtype), use_safetensors=True, add_watermarker=False, **extra
        )
    else:
        pipeline = StableDiffusionPipeline.from_pretrained(
            source,
            dtype=getattr(torch, dtype),
            safety_checker=None,
            requires_safety_checker=False,
            use_safetensors=True,
            **extra,
        )
    if lora:
        pipeline.load_lora_weights(path)
    return pipeline.to(device)


def lora_base_folder(export: Path) -> Path:
    """The base model a LoRA export was trained on (its ``dbexp.json``): a folder, or a hub snapshot."""
    from dbexp.export import METADATA
    from dbexp.model_loading import hub_or_folder

    metadata = export / METADATA
    base = json.loads(metadata.read_text()).get("base", {}) if metadata.is_file() else {}
    source = base.get("pretrained")
    if not source or source == "random":
        why = "was built with random weights (model.init=random), which were not saved" if source else "is not named"
        raise UserInputError(f"pipeline={export}: the base model of this LoRA export {why} in {metadata}")
    return hub_or_folder(source, f"the base model of {metadata}", base.get("revision"))


def lora_base_vae(export: Path):
    """The VAE a LoRA export was trained with in place of its base's own (``model.vae``), or None."""
    from dbexp.export import METADATA
    from dbexp.model_loading import load_vae

    metadata = export / METADATA
    source = json.loads(metadata.read_text()).get("base", {}).get("vae") if metadata.is_file() else None
    return load_vae(source)[0] if source else None


def run(cfg: DictConfig) -> list[Path]:
    from dbexp.sampling import check_sampler, generate, make_grid, sampler

    if cfg.num_images < 1 or cfg.batch_size < 1 or cfg.num_inference_steps < 1:
        raise UserInputError("num_images, batch_size and num_inference_steps must each be >= 1")
    if cfg.resolution is not None and cfg.resolution % 8:
        raise UserInputError(f"resolution={cfg.resolution}: must be a multiple of 8")
    check_sampler(cfg.sampler, "sampler")
    out = Path(cfg.paths.output_dir)
    pipeline = load_pipeline(cfg.pipeline, cfg.device, cfg.dtype)
    pipeline.scheduler = sampler(pipeline.scheduler, cfg.sampler)
    seeds = [cfg.seed + i for i in range(cfg.num_images)]
    images = generate(
        pipeline,
        [cfg.prompt] * len(seeds),
        seeds,
        guidance_scale=cfg.guidance_scale,
        num_inference_steps=cfg.num_inference_steps,
        negative_prompt=cfg.negative_prompt,
        resolution=cfg.resolution,
        batch_size=cfg.batch_size,
        progress="images",
    )
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, image in zip(seeds, images, strict=True):
        paths.append(out / f"seed_{seed:04d}.png")
        image.save(paths[-1])
    make_grid(images, columns=min(4, len(images))).save(out / "grid.png")
    announce(f"{len(paths)} images and grid.png written to {out}")
    return paths


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    quiet_known_noise()
    with exit_on_user_error():
        run(cfg)


def cli() -> None:
    """``dbexp-generate``, also ``python -m dbexp.generate``."""
    sys.argv = prepare_command_line(sys.argv, MOVED_GENERATE_KEYS)
    main()


if __name__ == "__main__":
    cli()
