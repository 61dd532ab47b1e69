"""Owner of ``conf/logger``: logger instantiation, images to every logger, and closing them."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from PIL import Image

log = logging.getLogger(__name__)


def instantiate_loggers(cfg: dict[str, Any] | None) -> list[Logger]:
    """Every ``_target_`` entry of the logger group (``logger=none`` gives no logger)."""
    loggers = []
    for name, entry in (cfg or {}).items():
        if entry is not None and "_target_" in entry:
            log.info("logger: %s", name)
            loggers.append(instantiate(entry))
    return loggers


def log_image(loggers: list[Logger], key: str, image: Image.Image, step: int) -> None:
    """Send a picture to each logger that can show one (CSV cannot: the PNG in the run folder is its copy)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, np.asarray(image), step, dataformats="HWC")
        elif hasattr(logger, "log_image"):  # W&B and other loggers with an image API
            logger.log_image(key=key, images=[image], step=step)


def finalize_loggers(loggers: list[Logger], status: str) -> None:
    """Close every logger, also after a failure, so no run is left open (``status``: success/failed)."""
    for logger in loggers:
        try:
            logger.finalize(status)
        except Exception:  # one broken logger must not hide the run's real error
            log.exception("could not finalize logger %s", type(logger).__name__)
