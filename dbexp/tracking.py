"""Owner of ``conf/logger``: the loggers (CSV, TensorBoard, MLflow, W&B), what every run tells them, and
how sweeps appear in them.

Every run logs to each configured logger: the resolved config flattened as parameters (secrets
redacted), every metric with its step, sample grids as images, and at the end ``metrics.json``,
the sample grids and the evaluation as files (artifacts); tags name the git commit, dbexp's version,
the dataset's fingerprint and the library versions. In a sweep, MLflow shows one parent run per
study with a child run per trial, and W&B one group per study; each trial is tagged with its
number and final state (COMPLETE, PRUNED or FAIL): the parent and the group come from
:mod:`dbexp.sweep_tracking`.

API keys and tokens are read by MLflow and W&B from the environment only; nothing here logs them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from dbexp import __version__
from dbexp.console import announce
from dbexp.errors import instantiate_checked
from dbexp.redaction import redact
from dbexp.sweep_tracking import PARENT_RUN_ENV, SWEEP_NAME_ENV, default_mlflow_uri, local_artifact_root

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "diffusers", "transformers", "lightning", "hydra-core", "optuna", "mlflow", "wandb", "peft")


# --- the loggers ----------------------------------------------------------------------------------
class DbexpMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger with dbexp's defaults: the embedded store in ``outputs/``, and in a sweep
    a child run of the study's parent run."""

    def __init__(
        self,
        experiment_name: str,
        log_dir: str,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        log_pipeline: bool = False,
        **kwargs: Any,
    ) -> None:
        uri = tracking_uri or default_mlflow_uri(log_dir)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        tags = dict(kwargs.pop("tags", None) or {})
        if os.environ.get(PARENT_RUN_ENV):
            tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
        kwargs.setdefault("artifact_location", local_artifact_root(uri))
        super().__init__(experiment_name=experiment_name, tracking_uri=uri, run_name=run_name, tags=tags, **kwargs)
        self.log_pipeline = log_pipeline


def wandb_offline() -> bool:
    """Offline unless an API key is configured (``$WANDB_API_KEY``, or ``wandb login``'s netrc entry) or
    ``$WANDB_MODE`` says otherwise."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    if os.environ.get("WANDB_API_KEY"):
        return False
    import netrc

    with contextlib.suppress(FileNotFoundError, netrc.NetrcParseError, OSError):
        return netrc.netrc().authenticators("api.wandb.ai") is None
    return True


class DbexpWandbLogger(WandbLogger):
    """Lightning's W&B logger, offline when no API key is configured, grouped by sweep."""

    def __init__(self, offline: bool | None = None, group: str | None = None, **kwargs: Any) -> None:
        offline = wandb_offline() if offline is None else offline
        group = group or os.environ.get(SWEEP_NAME_ENV) or None
        Path(kwargs.get("save_dir", ".")).mkdir(parents=True, exist_ok=True)
        super().__init__(offline=offline, group=group, **kwargs)
        self.is_offline = offline


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
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, image, key=key.replace("/", "_"), step=step)
        elif hasattr(logger, "log_image"):  # W&B and other loggers with an image API
            logger.log_image(key=key, images=[image], step=step)


# --- what a run tells its loggers -----------------------------------------------------------------
def describe_run(loggers: list[Logger], cfg: DictConfig, instance_images: list) -> None:
    """The resolved config (flattened, secrets redacted) as parameters and the run's provenance as tags."""
    if not loggers:
        return
    params = flat_params(cfg)
    tags = run_tags(instance_images)
    for logger in loggers:
        logger.log_hyperparams(params)
        if isinstance(logger, MLFlowLogger):
            for key, value in tags.items():
                logger.experiment.set_tag(logger.run_id, key, value)
        elif isinstance(logger, WandbLogger):
            logger.experiment.config.update({"tags": tags}, allow_val_change=True)
            trial = tags.get("optuna.trial_number")
            if trial is not None:
                logger.experiment.tags = [*(logger.experiment.tags or ()), f"trial-{trial}"]


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """``{"optimizer.lr": "5e-06", …}``: every leaf of the resolved config, secrets redacted."""
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = redact(prefix, json.dumps(node) if isinstance(node, list | dict) else str(node))

    walk(tree, "")
    return flat


def run_tags(instance_images: list) -> dict[str, str]:
    """Provenance: git commit of the dbexp source, dbexp and library versions, dataset fingerprint, sweep trial."""
    from dbexp.fingerprint import image_digest, text_digest
    from dbexp.sweep_trial import STUDY_ENV, trial_number

    digest = text_digest("".join(image_digest(i) for i in instance_images), length=16)
    tags = {"dbexp.version": __version__, "dbexp.dataset_fingerprint": digest, **git_state()}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            tags[f"lib.{name}"] = importlib.metadata.version(name)
    number = trial_number()
    if number is not None:
        tags |= {"optuna.trial_number": str(number), "optuna.study_name": os.environ.get(STUDY_ENV, "")}
    return tags


def git_state() -> dict[str, str]:
    source = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=source, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"dbexp.git_commit": "unknown (not a git checkout)"}
    return {"dbexp.git_commit": commit, "dbexp.git_dirty": str(bool(dirty)).lower()}


def log_run_files(loggers: list[Logger], run_dir: Path) -> None:
    """``metrics.json``, the sample grids, the evaluation (and the exported pipeline where asked) as files."""
    files = [run_dir / "metrics.json"]
    folders = [run_dir / "samples", run_dir / "eval"]
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            client, run_id = logger.experiment, logger.run_id
            for path in files:
                if path.is_file():
                    client.log_artifact(run_id, str(path))
            for folder in folders:
                if folder.is_dir():
                    client.log_artifacts(run_id, str(folder), folder.name)
            if getattr(logger, "log_pipeline", False) and (run_dir / "pipeline").is_dir():
                client.log_artifacts(run_id, str(run_dir / "pipeline"), "pipeline")
        elif isinstance(logger, WandbLogger):
            metrics_path = run_dir / "metrics.json"
            if metrics_path.is_file():
                flat = {k: v for k, v in json.loads(metrics_path.read_text()).items() if isinstance(v, int | float)}
                logger.experiment.summary.update(flat)
                logger.experiment.save(str(metrics_path), base_path=str(run_dir), policy="now")


# --- opening and closing --------------------------------------------------------------------------
@contextlib.contextmanager
def open_loggers(cfg: dict[str, Any] | None, run_dir: Path | None = None) -> Iterator[list[Logger]]:
    """The configured loggers, closed on the way out — marked failed when an exception leaves the block,
    so a crashed run or trial is never left open in a tracking server. A sweep trial also gets its Optuna
    state as a tag: COMPLETE, PRUNED (``optuna.TrialPruned`` left the block) or FAIL."""
    import optuna

    # MLflow's set_tracking_uri (Lightning's MLFlowLogger calls it) also writes $MLFLOW_TRACKING_URI,
    # "so that subprocesses inherit it": without restoring it, every later run of this process — and
    # every process it starts — would log into this run's store instead of its own.
    uri_before = os.environ.get("MLFLOW_TRACKING_URI")
    loggers = instantiate_loggers(cfg)
    status, state = "failed", "FAIL"
    try:
        yield loggers
        status, state = "success", "COMPLETE"
    except optuna.TrialPruned:
        status, state = "success", "PRUNED"
        raise
    finally:
        _finalize(loggers, status, state, run_dir)
        if uri_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = uri_before


def _finalize(loggers: list[Logger], status: str, state: str, run_dir: Path | None) -> None:
    from dbexp.sweep_trial import trial_number

    in_sweep = trial_number() is not None
    for logger in loggers:
        try:
            if in_sweep and isinstance(logger, MLFlowLogger) and logger._initialized:  # noqa: SLF001
                logger.experiment.set_tag(logger.run_id, "optuna.state", state)
            if isinstance(logger, WandbLogger) and logger._experiment is not None:  # noqa: SLF001
                logger.experiment.summary["optuna_state" if in_sweep else "state"] = state
            logger.finalize(status)
            if isinstance(logger, WandbLogger) and getattr(logger, "is_offline", False) and run_dir is not None:
                _wandb_sync_note(logger, run_dir)
        except Exception:  # one broken logger must not hide the run's real error
            log.exception("could not finalize logger %s", type(logger).__name__)


def _wandb_sync_note(logger: WandbLogger, run_dir: Path) -> None:
    import wandb

    folder = Path(logger.experiment.dir).parent if logger._experiment is not None else None  # noqa: SLF001
    if wandb.run is not None:
        wandb.finish()
    if folder is None:
        return
    note = run_dir / "wandb_sync.txt"
    note.write_text(f"W&B ran offline (no API key). Upload this run with:\n  wandb sync {folder}\n")
    announce(f"W&B offline run: {folder} (upload: wandb sync {folder})")
