"""Owner of ``conf/eval``: what the model is asked to draw while and after it trains.

For now that is the sample grid (rows = prompts, columns = seeds); the DreamBooth metrics
(DINO, CLIP-I, CLIP-T, PRES, DIV) extend this module in the evaluation issue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch

from dbexp.errors import UserInputError
from dbexp.sampling import build_pipeline, check_sampler, generate, make_grid, sampler
from dbexp.tracking import log_image

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Schema of ``conf/eval/*.yaml``."""

    prompts: list[str] = field(default_factory=lambda: ["a photo of {token} {class_noun}"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    guidance_scale: float = 7.5
    num_inference_steps: int = 25
    negative_prompt: str = ""
    scheduler: str | None = None
    every_n_steps: int = 100
    at_start: bool = True
    batch_size: int = 8


def check_eval_config(cfg: EvalConfig) -> None:
    if not cfg.prompts or not cfg.seeds:
        raise UserInputError("eval.prompts and eval.seeds must each hold at least one entry")
    if cfg.num_inference_steps < 1:
        raise UserInputError(f"eval.num_inference_steps={cfg.num_inference_steps}: must be >= 1")
    if cfg.every_n_steps < 0:
        raise UserInputError(f"eval.every_n_steps={cfg.every_n_steps}: must be >= 0 (0: only at the end)")
    if cfg.batch_size < 1:
        raise UserInputError(f"eval.batch_size={cfg.batch_size}: must be >= 1")
    check_sampler(cfg.scheduler, "eval.scheduler")


def sample_prompts(cfg: EvalConfig, token: str, class_noun: str | None) -> list[str]:
    """``eval.prompts`` with ``{token}``/``{class_noun}`` filled in (the bare class prompt shows drift)."""
    try:
        return [p.format(token=token, class_noun=class_noun or "") for p in cfg.prompts]
    except (KeyError, IndexError) as err:
        raise UserInputError(f"eval.prompts: unknown placeholder {err}; use {{token}} and {{class_noun}}") from None


class SampleGridCallback(L.Callback):
    """Renders ``samples/step_<N>.png`` every N steps and ``samples/final.png`` at the end, with fixed seeds."""

    def __init__(self, cfg: EvalConfig, prompts: list[str], resolution: int, folder: str | Path) -> None:
        self.cfg, self.prompts, self.resolution = cfg, prompts, resolution
        self.folder = Path(folder)
        self._last_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.cfg.at_start and trainer.global_step == 0:
            self.render(trainer, pl_module, "step_0")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.cfg.every_n_steps and step % self.cfg.every_n_steps == 0 and step != self._last_step:
            self.render(trainer, pl_module, f"step_{step}")

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.render(trainer, pl_module, "final")

    def render(self, trainer: L.Trainer, pl_module, name: str) -> Path | None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return None
        was_training = pl_module.training
        pl_module.eval()
        try:
            pipeline = build_pipeline(
                pl_module.vae,
                pl_module.text_encoder,
                pl_module.tokenizer,
                pl_module.unet,
                sampler(pl_module.inference_scheduler, self.cfg.scheduler),
            )
            prompts = [p for p in self.prompts for _ in self.cfg.seeds]
            seeds = [s for _ in self.prompts for s in self.cfg.seeds]
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                images = generate(
                    pipeline,
                    prompts,
                    seeds,
                    guidance_scale=self.cfg.guidance_scale,
                    num_inference_steps=self.cfg.num_inference_steps,
                    negative_prompt=self.cfg.negative_prompt,
                    resolution=self.resolution,
                    batch_size=self.cfg.batch_size,
                )
        finally:
            pl_module.train(was_training)
        grid = make_grid(images, columns=len(self.cfg.seeds), row_labels=self.prompts)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        grid.save(path)
        log_image(trainer.loggers, "samples", grid, trainer.global_step)
        log.info("samples: %s", path)
        return path
