"""The runs a comparison report shows (``python -m dbexp.compare``), read from a sweep folder — with its
Optuna study (states, values, durations, from the storage the sweep used) and its trial folders — or from
an MLflow experiment.

Each run becomes a :class:`RunRecord`: its state, the parameters that can change its results
(:func:`dbexp.config_roles.shows_in_report`), its metrics, objective values, duration, metric curves and
final sample images by (prompt, seed). Directions come from the metric suites (``dbexp.metric_suites``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dbexp import metric_suites
from dbexp.config_roles import shows_in_report
from dbexp.errors import UserInputError
from dbexp.sweep_trial import STUDY_ENV

#: What the report plots over training steps: the training loss, the in-training evaluation's score and the
#: validation losses (the signals a sweep prunes on and picks the best step by).
CURVES = ("train/loss", "eval/score", "val/loss", "val/loss_instance", "val/loss_prior")


@dataclass
class RunRecord:
    name: str
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING
    params: dict[str, Any]
    metrics: dict[str, float]
    values: list[float] | None = None  # the objective(s)
    seconds: float | None = None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    samples: dict[tuple[str, int], Path] = field(default_factory=dict)  # (prompt, seed) → image

    @property
    def best_step(self) -> int | None:
        """The step whose weights are the run's (``objective_at=best``), when it recorded one."""
        step = self.metrics.get("best_step")
        return int(step) if step is not None else None

    @property
    def label(self) -> str:
        """``trial 7``, or ``trial 7, step 300`` with a best step."""
        return self.name if self.best_step is None else f"{self.name}, step {self.best_step}"


@dataclass
class Collection:
    title: str
    source: str
    directions: list[str]
    objectives: list[str]
    runs: list[RunRecord]


# --- reading a sweep folder -------------------------------------------------------------------------
def from_sweep_folder(folder: Path) -> Collection:
    multirun = folder / "multirun.yaml"
    if not multirun.is_file():
        raise UserInputError(f"{folder}: not a sweep folder (no multirun.yaml); give outputs/<task>/multiruns/<time>")
    cfg = OmegaConf.load(multirun)
    sweeper = cfg.hydra.sweeper
    directions = [str(d) for d in (sweeper.direction if OmegaConf.is_list(sweeper.direction) else [sweeper.direction])]
    objectives = [
        str(m) for m in (cfg.optimized_metric if OmegaConf.is_list(cfg.optimized_metric) else [cfg.optimized_metric])
    ]
    trials = _study_trials(sweeper)
    runs = []
    for trial_dir in _trial_folders(folder, trials):
        number = int(trial_dir.name)
        trial = trials.get(number)
        metrics_path = trial_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        if trial is not None:
            state, params = trial.state.name, dict(trial.params)
            values = list(trial.values) if trial.values else None
            seconds = trial.duration.total_seconds() if trial.duration else None
        else:
            state = "PRUNED" if "pruned_at_step" in metrics else ("COMPLETE" if metrics else "FAIL")
            params = {k: v for k, v in _overrides(trial_dir).items() if shows_in_report(k)}
            values, seconds = None, _log_seconds(trial_dir)
        if state == "COMPLETE" and values is None and all(m in metrics for m in objectives):
            values = [float(metrics[m]) for m in objectives]
        runs.append(
            RunRecord(
                name=f"trial {number}",
                state=state,
                params=params,
                metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                values=values,
                seconds=seconds,
                history=_csv_history(trial_dir / "csv" / "metrics.csv") | _measured_history(metrics),
                samples=_sample_files(trial_dir / "samples" / "final"),
            )
        )
    if not runs:
        raise UserInputError(f"{folder}: no trial folders (<n>/) found")
    return Collection(f"sweep {folder.name}", str(folder), directions, objectives, runs)


def _study_trials(sweeper) -> dict[int, Any]:
    """The study's trials by number, from the storage the sweep used (none for an in-memory study)."""
    storage, name = sweeper.get("storage"), sweeper.get("study_name")
    if not storage or not name:
        return {}
    import optuna

    from dbexp.sweep_trial import open_storage

    try:
        study = optuna.load_study(study_name=str(name), storage=open_storage(storage))
    except (KeyError, Exception):  # the storage moved or is gone: fall back to the folders
        return {}
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def _trial_folders(folder: Path, trials: dict[int, Any]) -> list[Path]:
    """Trial folders of this sweep folder, plus — for a resumed study — its other trials' folders in sibling
    sweep folders of the same task."""
    found = {int(p.name): p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()}
    mine = next((_study_of(p) for p in found.values()), None)
    if trials and mine is not None:
        for sibling in sorted(folder.parent.iterdir()):
            for number in set(trials) - set(found):
                candidate = sibling / str(number)
                if candidate.is_dir() and _study_of(candidate) == mine:
                    found[number] = candidate
    return [found[n] for n in sorted(found)]


def _study_of(trial_dir: Path) -> str | None:
    """The study override a trial folder was launched with (``…env_set.DBEXP_OPTUNA_STUDY=…``)."""
    overrides = trial_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    return next((o for o in OmegaConf.load(overrides) if STUDY_ENV in o), None)


def _overrides(trial_dir: Path) -> dict[str, Any]:
    path = trial_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    pairs = (o.split("=", 1) for o in OmegaConf.load(path) if "=" in o and not o.startswith(("hydra", "++hydra")))
    return {k.lstrip("+~"): _number(v) for k, v in pairs}


def _log_seconds(trial_dir: Path) -> float | None:
    logs = sorted(trial_dir.glob("*.log"))
    if not logs:
        return None
    lines = [line for line in logs[0].read_text().splitlines() if line.startswith("[20")]
    if len(lines) < 2:
        return None
    stamp = lambda line: datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
    return (stamp(lines[-1]) - stamp(lines[0])).total_seconds()


def _csv_history(path: Path) -> dict[str, list[tuple[int, float]]]:
    history: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return history
    with path.open() as f:
        for row in csv.DictReader(f):
            for name in CURVES:
                if row.get(name) not in (None, ""):
                    history.setdefault(name, []).append((int(float(row["step"])), float(row[name])))
    return history


def _measured_history(metrics: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """The in-training measurements of ``metrics.json`` (``in_training``), at the steps they were taken."""
    history: dict[str, list[tuple[int, float]]] = {}
    for step, values in metrics.get("in_training", {}).items():
        for name in CURVES:
            if name in values:
                history.setdefault(name, []).append((int(step), float(values[name])))
    return history


def _sample_files(folder: Path) -> dict[tuple[str, int], Path]:
    index = folder / "index.json"
    if not index.is_file():
        return {}
    return {(i["prompt"], int(i["seed"])): folder / i["file"] for i in json.loads(index.read_text())}


# --- reading an MLflow experiment -----------------------------------------------------------------
def from_mlflow(name: str, tracking_uri: str, download_to: Path) -> Collection:
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise UserInputError(f"{name}: neither a sweep folder nor an MLflow experiment in {tracking_uri}")
    runs = [
        r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("dbexp.sweep_parent") != "true"
    ]
    if not runs:
        raise UserInputError(f"MLflow experiment {name} has no runs ({tracking_uri})")
    params_seen: dict[str, set] = {}
    for r in runs:
        for k, v in r.data.params.items():
            params_seen.setdefault(k, set()).add(v)
    # Parameters that differ between the runs and can change their results (dbexp.config_roles: not where
    # things went — every run has its own folder — nor what changes nothing).
    varied = sorted(k for k, values in params_seen.items() if len(values) > 1 and shows_in_report(k))
    objective = _objective_of(runs)
    directions = objective_directions(objective)
    records = []
    for r in runs:
        tags = r.data.tags
        state = tags.get("optuna.state") or {"FINISHED": "COMPLETE", "FAILED": "FAIL"}.get(r.info.status, r.info.status)
        seconds = (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else None
        history = {
            m: [(h.step, h.value) for h in client.get_metric_history(r.info.run_id, m)]
            for m in CURVES
            if m in r.data.metrics
        }
        samples: dict[tuple[str, int], Path] = {}
        if any(a.path == "samples/final" for a in client.list_artifacts(r.info.run_id, "samples")):
            local = Path(
                client.download_artifacts(r.info.run_id, "samples/final", str(_fresh(download_to / r.info.run_id)))
            )
            samples = _sample_files(local)
        records.append(
            RunRecord(
                name=tags.get("mlflow.runName") or r.info.run_id[:8],
                state=state,
                params={k: _number(r.data.params[k]) for k in varied if k in r.data.params},
                metrics=dict(r.data.metrics),
                values=[r.data.metrics[m] for m in objective] if all(m in r.data.metrics for m in objective) else None,
                seconds=seconds,
                history=history,
                samples=samples,
            )
        )
    return Collection(f"MLflow experiment {name}", tracking_uri, directions, objective, records)


def objective_directions(objective: list[str]) -> list[str]:
    """Which way each objective is better, from the metric suites (an MLflow run does not record the
    sweep's ``hydra.sweeper.direction``); a metric no suite declares is taken as minimized (a loss)."""
    return [metric_suites.direction(m) or "minimize" for m in objective]


def _objective_of(runs) -> list[str]:
    names = {r.data.params.get("optimized_metric") for r in runs} - {None}
    if len(names) == 1:
        value = names.pop()
        return json.loads(value) if value.startswith("[") else [value]
    return ["eval/score"]


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _number(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) and "e" not in str(value) else number
