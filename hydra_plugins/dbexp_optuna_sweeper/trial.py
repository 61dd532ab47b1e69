"""The Optuna trial a sweep job runs for, reached from inside the job (the same process or another one).

The sweeper passes the study's name and the trial's number to each job through ``hydra.job.env_set``;
the job finds the storage and the pruner in its own Hydra config (``hydra.sweeper``), so a job that a
launcher runs in another process — or on another machine of a SLURM cluster — reports to the same
trial through the storage. A study in memory (``storage: null``) is only reachable in-process.
"""

from __future__ import annotations

import os
from typing import Any

import optuna

STUDY_ENV = "DBEXP_OPTUNA_STUDY"
TRIAL_ENV = "DBEXP_OPTUNA_TRIAL"
TRIAL_NAME_ENV = "DBEXP_OPTUNA_TRIAL_NAME"  # "trial <n>": the run name trackers show

#: Studies of this process that live in memory (no storage), by name.
_in_memory: dict[str, optuna.Study] = {}


def job_overrides(study_name: str, number: int) -> list[str]:
    """Hydra overrides that give a job its study and trial (as environment variables while it runs)."""
    quoted = "'" + study_name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return [
        f"++hydra.job.env_set.{STUDY_ENV}={quoted}",
        f"++hydra.job.env_set.{TRIAL_ENV}={number}",
        f"++hydra.job.env_set.{TRIAL_NAME_ENV}='trial {number}'",
    ]


def trial_number() -> int | None:
    """The Optuna trial number of the running job, or None outside an Optuna sweep."""
    number = os.environ.get(TRIAL_ENV)
    return int(number) if number not in (None, "") else None


def pruning_trial() -> optuna.Trial | None:
    """The running job's trial, to report intermediate objectives to — or None when there is nothing to
    prune (no sweep, no pruner, or several objectives: Optuna prunes single-objective studies only)."""
    name, number = os.environ.get(STUDY_ENV), trial_number()
    if not name or number is None:
        return None
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    sweeper = HydraConfig.get().sweeper
    pruner = sweeper.get("pruner")
    if not pruner or str(pruner.get("_target_", "")).endswith("NopPruner"):
        return None
    if name in _in_memory:
        study = _in_memory[name]
    elif sweeper.get("storage") is None:
        return None  # an in-memory study of another process cannot be reached
    else:
        from hydra_plugins.dbexp_optuna_sweeper.sweeper import open_storage

        storage = open_storage(sweeper.storage)
        study = optuna.load_study(study_name=name, storage=storage, pruner=instantiate(pruner))
    if len(study.directions) > 1:
        return None
    storage: Any = study._storage  # noqa: SLF001 — Trial needs the storage's id of the trial
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)  # noqa: SLF001
    return optuna.trial.Trial(study, trial_id)
