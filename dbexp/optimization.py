"""Owner of ``conf/optimizer``: optimizer with per-part learning rates, and the LR schedule.

Used by ``DreamBoothModule.configure_optimizers``. Schedules come from diffusers
(``get_scheduler``), stepped every optimizer step.
"""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from dbexp.config import OptimizerConfig
from dbexp.errors import UserInputError
from dbexp.memory import adamw_8bit_class

OPTIMIZERS = ("adamw", "sgd")
#: Our names → diffusers' schedule names (each accepts a warm-up; "constant" with 0 warm-up is flat).
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def check_optimizer_config(cfg: OptimizerConfig) -> None:
    if cfg.name not in OPTIMIZERS:
        raise UserInputError(f"optimizer.name={cfg.name}: use one of {', '.join(OPTIMIZERS)}")
    if cfg.lr <= 0:
        raise UserInputError(f"optimizer.lr={cfg.lr}: the learning rate must be > 0 (DreamBooth uses ~1e-6..5e-6)")
    if cfg.text_encoder_lr is not None and cfg.text_encoder_lr <= 0:
        raise UserInputError(f"optimizer.text_encoder_lr={cfg.text_encoder_lr}: must be > 0 (or null to use lr)")
    if cfg.lr_schedule not in SCHEDULES:
        raise UserInputError(f"optimizer.lr_schedule={cfg.lr_schedule}: use one of {', '.join(SCHEDULES)}")
    if cfg.warmup_steps < 0:
        raise UserInputError(f"optimizer.warmup_steps={cfg.warmup_steps}: must be >= 0")
    if len(cfg.betas) != 2:
        raise UserInputError(f"optimizer.betas={list(cfg.betas)}: give two values, e.g. [0.9, 0.999]")


def build_optimizer(
    cfg: OptimizerConfig,
    unet_params: list[torch.nn.Parameter],
    text_encoder_params: list[torch.nn.Parameter],
    eight_bit: bool = False,
) -> torch.optim.Optimizer:
    """One optimizer, one parameter group per trained part (each with its own learning rate);
    ``eight_bit``: AdamW with 8-bit moments (``memory.optimizer_8bit``, bitsandbytes)."""
    groups = [{"params": unet_params, "lr": cfg.lr, "name": "unet"}]
    if text_encoder_params:
        te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.lr
        groups.append({"params": text_encoder_params, "lr": te_lr, "name": "text_encoder"})
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    adamw = adamw_8bit_class() if eight_bit else torch.optim.AdamW
    return adamw(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_lr_scheduler(
    cfg: OptimizerConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return get_scheduler(
        SCHEDULES[cfg.lr_schedule],
        optimizer=optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=total_steps,
    )
