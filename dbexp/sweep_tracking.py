"""A sweep in the trackers: one MLflow parent run per study (shared by resumes and workers) that every
trial's run becomes a child of, one W&B group name, and where MLflow's runs and artifacts go.

Hydra instantiates :class:`SweepTracking` (``conf/hydra``) in every command before anything else runs, so
this module stays light: no torch, no Lightning (:mod:`dbexp.tracking`, the loggers, imports from here).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from dbexp import __version__
from dbexp.console import announce
from dbexp.errors import UserInputError, stop
from dbexp.extras import require_for_url
from dbexp.redaction import redact

#: Set by :class:`SweepTracking` in the sweep process, inherited by every trial it launches.
PARENT_RUN_ENV = "DBEXP_MLFLOW_PARENT_RUN_ID"
SWEEP_NAME_ENV = "DBEXP_SWEEP_NAME"


def default_mlflow_uri(log_dir: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else the embedded store ``sqlite:///<outputs>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(log_dir).resolve() / 'mlflow.db'}"


def mlflow_uri(mlflow_cfg: DictConfig) -> str:
    """The tracking URI an MLflow logger entry of the ``logger`` group resolves to."""
    return mlflow_cfg.get("tracking_uri") or default_mlflow_uri(mlflow_cfg.log_dir)


def local_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of an embedded sqlite store go beside it (``<outputs>/mlartifacts``); a file store keeps them
    in itself and a tracking server decides (None)."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts")
    return None


def check_logger_config(cfg: dict[str, Any] | None) -> None:
    """An MLflow tracking URI that names a database (``postgresql://``) needs its driver: one line, before
    anything loads."""
    for name, entry in (cfg or {}).items():
        if entry is not None and str(entry.get("_target_", "")).endswith("MLFlowLogger"):
            require_for_url(mlflow_uri(entry), f"logger.{name}.tracking_uri")


class SweepTracking(HydraCallback):
    """Registered in ``conf/hydra``: in a multirun that logs to MLflow, one parent run per sweep (per Optuna
    study, shared by resumes and workers) that every trial's run becomes a child of; W&B groups the trials
    by the same name. At the end the parent gets the sweep's results file and best value."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        name = self.sweep_name(config)
        os.environ[SWEEP_NAME_ENV] = name
        mlflow_cfg = self.mlflow_config(config)
        if mlflow_cfg is None:
            return
        try:
            check_logger_config(config.logger)
        except UserInputError as err:  # before the sweeper starts: no trial has run
            stop(err)
        client, experiment_id = self.client(config, mlflow_cfg)
        self.parent_id = self.find_or_create_parent(client, experiment_id, name, config)
        os.environ[PARENT_RUN_ENV] = self.parent_id
        announce(f"MLflow parent run {self.parent_id} for sweep {name} ({client.tracking_uri})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        mlflow_cfg = self.mlflow_config(config)
        if mlflow_cfg is None or not getattr(self, "parent_id", None):
            return
        client, _ = self.client(config, mlflow_cfg)
        results = Path(str(config.hydra.sweep.dir)) / "optimization_results.yaml"
        if results.is_file():
            client.log_artifact(self.parent_id, str(results))
            summary = OmegaConf.to_container(OmegaConf.load(results))
            if "best_value" in summary:
                client.log_metric(self.parent_id, "best_value", float(summary["best_value"]))
                for key, value in summary.get("best_params", {}).items():
                    client.set_tag(self.parent_id, f"best.{key}", str(value))
        client.set_terminated(self.parent_id, "FINISHED")
        os.environ.pop(PARENT_RUN_ENV, None)

    @staticmethod
    def sweep_name(config: DictConfig) -> str:
        study = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
        return str(study) if study else Path(str(config.hydra.sweep.dir)).name

    @staticmethod
    def mlflow_config(config: DictConfig) -> DictConfig | None:
        for entry in (config.get("logger") or {}).values():
            if entry is not None and str(entry.get("_target_", "")).endswith("MLFlowLogger"):
                return entry
        return None

    @staticmethod
    def client(config: DictConfig, mlflow_cfg: DictConfig):
        from mlflow.tracking import MlflowClient

        uri = mlflow_uri(mlflow_cfg)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(uri)
        name = str(mlflow_cfg.experiment_name)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            with contextlib.suppress(Exception):  # another worker may create it first
                client.create_experiment(name, artifact_location=local_artifact_root(uri))
            experiment = client.get_experiment_by_name(name)
        return client, experiment.experiment_id

    @staticmethod
    def find_or_create_parent(client, experiment_id: str, name: str, config: DictConfig) -> str:
        """The sweep's parent run, created by exactly one of the workers that start together: they hold the
        study's own lock while they look for it (:func:`dbexp.sweep_trial.storage_lock` — a PostgreSQL
        advisory lock for workers on several machines, a file lock beside a sqlite or journal file). A study
        in memory has one process; it still locks its log folder against a second command started there."""
        from dbexp.sweep_trial import storage_lock

        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        if storage:
            lock = storage_lock(storage, "mlflow-parent")
        else:
            from filelock import FileLock

            lock_dir = Path(str(config.paths.log_dir))
            lock_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(lock_dir / ".mlflow_parent.lock"))
        with lock:
            found = client.search_runs(
                [experiment_id], filter_string=f"tags.`dbexp.sweep` = '{name}' and tags.`dbexp.sweep_parent` = 'true'"
            )
            if found:
                client.update_run(found[0].info.run_id, status="RUNNING")
                return found[0].info.run_id
            run = client.create_run(
                experiment_id,
                run_name=f"sweep {name}",
                tags={"dbexp.sweep": name, "dbexp.sweep_parent": "true", "dbexp.version": __version__},
            )
            sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
            if sweeper is not None:
                params = OmegaConf.to_container(sweeper, resolve=True)
                flat = {"sweeper.params." + k: str(v) for k, v in (params.get("params") or {}).items()}
                flat |= {f"sweeper.{k}": str(params[k]) for k in ("direction", "n_trials") if k in params}
                flat["sweeper.storage"] = redact("storage", str(params.get("storage")))
                for key, value in flat.items():
                    client.log_param(run.info.run_id, key, value)
            return run.info.run_id
