"""The sweep trial a run belongs to: what a run knows of the sweep that launched it.

The sweeper plugin (``hydra_plugins/dbexp_optuna_sweeper``) fills this interface: it gives each job its
study's name and trial number as environment variables (:func:`job_overrides`, through
``hydra.job.env_set``) and registers a study kept in memory in its own process
(:func:`register_in_process`). A run reads it: :func:`trial_number`, :func:`study_name`,
:func:`pruning_trial`. The job finds the storage and the pruner in its own Hydra config
(``hydra.sweeper``), so a job that a launcher runs in another process — or on another machine of a SLURM
cluster — reports to the same trial through the storage. dbexp's core imports this module, never the
plugin.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STUDY_ENV = "DBEXP_OPTUNA_STUDY"
TRIAL_ENV = "DBEXP_OPTUNA_TRIAL"
TRIAL_NAME_ENV = "DBEXP_OPTUNA_TRIAL_NAME"  # "trial <n>": the run name trackers show

#: Storages of studies that live in this process's memory (``storage: null``), by study name.
_IN_PROCESS: dict[str, Any] = {}


def job_overrides(study_name: str, number: int) -> list[str]:
    """Hydra overrides that give a job its study and trial (as environment variables while it runs)."""
    quoted = "'" + study_name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return [
        f"++hydra.job.env_set.{STUDY_ENV}={quoted}",
        f"++hydra.job.env_set.{TRIAL_ENV}={number}",
        f"++hydra.job.env_set.{TRIAL_NAME_ENV}='trial {number}'",
    ]


def register_in_process(study_name: str, storage: Any) -> None:
    """A study kept in memory: jobs of this process reach it by name (other processes cannot)."""
    _IN_PROCESS[study_name] = storage


def trial_number() -> int | None:
    """The Optuna trial number of the running job, or None outside an Optuna sweep."""
    number = os.environ.get(TRIAL_ENV)
    return int(number) if number not in (None, "") else None


def study_name() -> str | None:
    return os.environ.get(STUDY_ENV) or None


def open_storage(storage: Any) -> Any:
    """``None`` (in memory), ``journal:<file>`` (Optuna's journal file), or a database URL."""
    if storage is None:
        return None
    import optuna

    from dbexp.extras import require_for_url

    url = str(storage)
    require_for_url(url, "hydra.sweeper.storage")
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Workers on one machine share the file: wait for a writer's lock instead of failing at once.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.RDBStorage(url)


@contextlib.contextmanager
def storage_lock(storage: Any, purpose: str) -> Iterator[None]:
    """A lock that every worker of a study can take, wherever it runs — around what must happen once per
    study (creating its schema and the study; the sweep's MLflow parent run). ``purpose`` names the lock.

    * ``sqlite:///<file>``, ``journal:<file>``: a file lock beside the file (``<file>.<purpose>.lock``):
      the workers share the file, so they share its folder (one machine, or one shared file system).
    * ``postgresql://…``: a PostgreSQL advisory lock in the study's own database, held by one connection
      for the block (released by the server if the worker dies): workers on any machine.
    * no storage (a study in memory: one process) or another database: no lock.
    """
    url = str(storage or "")
    if url.startswith(("sqlite:///", "journal:")):
        from filelock import FileLock

        path = Path(url.removeprefix("sqlite:///").removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.{purpose}.lock"):
            yield
    elif url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres"):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        engine = sqlalchemy.create_engine(url.replace("postgres://", "postgresql://", 1), poolclass=NullPool)
        key = f"dbexp:{purpose}"
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(hashtext(:key))"), {"key": key})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": key})
        finally:
            engine.dispose()
    else:
        yield


def pruning_trial() -> Any:
    """The running job's ``optuna.Trial``, to report intermediate objectives to — or None when there is
    nothing to prune (no sweep, no pruner, or several objectives: Optuna prunes single-objective studies)."""
    name, number = study_name(), trial_number()
    if not name or number is None:
        return None
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    sweeper = HydraConfig.get().sweeper
    pruner = sweeper.get("pruner")
    if not pruner or str(pruner.get("_target_", "")).endswith("NopPruner"):
        return None
    storage = _IN_PROCESS.get(name)
    if storage is None and sweeper.get("storage") is None:
        return None  # an in-memory study of another process cannot be reached
    storage = storage if storage is not None else open_storage(sweeper.storage)
    study = optuna.load_study(study_name=name, storage=storage, pruner=instantiate(pruner))
    if len(study.directions) > 1:
        return None
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), number)
    return optuna.trial.Trial(study, trial_id)
