"""Owner of ``conf/logger``: logger instantiation, images to every logger, and closing them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from PIL import Image

from dbexp.errors import instantiate_checked

log = logging.getLogger(__name__)


def instantiate_loggers(cfg: dict[str, Any] | None) -> list[Logger]:
    """Every ``_target_`` entry of the logger group (``logger=none`` gives no logger)."""
    return [
        instantiate_checked(entry, f"logger.{name}")
        for name, entry in (cfg or {}).items()
        if entry is not None and "_target_" in entry
    ]


def log_image(loggers: list[Logger], key: str, image: Image.Image, step: int) -> None:
    """Send a picture to each logger that can show one (CSV cannot: the PNG in the run folder is its copy)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, np.asarray(image), step, dataformats="HWC")
        elif hasattr(logger, "log_image"):  # W&B and other loggers with an image API
            logger.log_image(key=key, images=[image], step=step)


@contextlib.contextmanager
def open_loggers(cfg: dict[str, Any] | None) -> Iterator[list[Logger]]:
    """The configured loggers, closed on the way out — marked failed when an exception leaves the block,
    so a crashed run or trial is never left open in a tracking server."""
    loggers = instantiate_loggers(cfg)
    status = "failed"
    try:
        yield loggers
        status = "success"
    finally:
        _finalize(loggers, status)


def _finalize(loggers: list[Logger], status: str) -> None:
    for logger in loggers:
        try:
            logger.finalize(status)
        except Exception:  # one broken logger must not hide the run's real error
            log.exception("could not finalize logger %s", type(logger).__name__)
