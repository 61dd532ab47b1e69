"""A Hydra sweeper on Optuna ≥ 4, taking hydra-optuna-sweeper's config keys and ``params`` grammar.

Every trial is one run of the task (``dbexp.train``): its return value is the objective (a float, or
a tuple for several directions). The study lives in ``storage``, so running the same command again
continues it up to ``n_trials`` in total, and several processes on one storage share it.
A trial that raises, or returns NaN, is marked FAIL with its reason as a user attribute; the sweep
goes on until the failure rate over the whole study exceeds ``max_failure_rate``. A trial that raises
``optuna.TrialPruned`` (the job's pruning callback: ``dbexp/sweep_trial.py``, ``dbexp/pruning.py``) is
marked PRUNED.

While a trial runs, its worker writes a heartbeat (a ``heartbeat`` user attribute, Unix time) every
``heartbeat_interval`` seconds; a RUNNING trial without one for ``grace_period`` seconds was left by a
dead worker: any worker of the study marks it FAIL (``abandoned``) and its slot is run again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import warnings
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from dbexp import metric_suites
from dbexp.config import moved_key
from dbexp.console import format_bytes
from dbexp.errors import UserInputError, stop
from dbexp.extras import require, require_for_url
from dbexp.sweep_trial import job_overrides, open_storage, register_in_process, storage_lock
from dbexp.trial_retention import RUN_DIR, check_keep
from dbexp.trial_retention import apply as apply_retention

log = logging.getLogger(__name__)
RESULTS = "optimization_results.yaml"


def distribution(override: Override) -> BaseDistribution | None:
    """The Optuna distribution of one sweep override (None for a fixed value)."""
    if not override.is_sweep_override():
        return None
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution([_plain(v) for v in value.list])
    if isinstance(value, RangeSweep):
        # As hydra-optuna-sweeper: shuffle(range(...)) is the choice of Hydra's range values (stop excluded);
        # range(a, b, step) samples a, a + step, ... up to b included (grids walk Hydra's values: grid_values).
        if value.shuffle:
            return CategoricalDistribution([_plain(v) for v in override.sweep_iterator()])
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(x, int) for x in (start, stop, step)):
            return IntDistribution(start, stop, step=step)
        return FloatDistribution(float(start), float(stop), step=float(step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: use choice, range, interval, int(interval) or tag(log, interval)")


def params_from_overrides(lines: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Sweep overrides split as hydra-optuna-sweeper splits them: distributions by key, and fixed values
    (as written: ``key2=5`` gives ``{"key2": "5"}``) by key. A key given again replaces its earlier form."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key, dist = override.get_key_element(), distribution(override)
        if dist is None:
            fixed[key] = override.get_value_element_as_str()
            space.pop(key, None)
        else:
            space[key] = dist
            fixed.pop(key, None)
    return space, fixed


#: Hydra's page on the 1.1 → 1.2 change of the sweeper's search space.
SEARCH_SPACE_URL = "https://hydra.cc/docs/upgrades/1.1_to_1.2/changes_to_sweeper_config/"


def space_from_search_space(search_space: Any, given_params: bool) -> dict[str, BaseDistribution]:
    """The deprecated ``hydra.sweeper.search_space`` (Hydra 1.1's typed form, ``{type: float, low, high,
    step, log}`` or ``{type: categorical, choices}``) as distributions, with hydra-optuna-sweeper's warning;
    ignored (with its other warning) when ``params`` is set too. A string value is read as ``params`` grammar."""
    if search_space is None:
        return {}
    if given_params:
        warnings.warn(
            "Both hydra.sweeper.params and hydra.sweeper.search_space are configured."
            f"\nHydra will use hydra.sweeper.params for defining search space.\n{SEARCH_SPACE_URL}",
            UserWarning,
            stacklevel=2,
        )
        return {}
    warnings.warn(
        "`hydra.sweeper.search_space` is deprecated and will be removed in the next major release.\n"
        f"Please configure with `hydra.sweeper.params`.\n{SEARCH_SPACE_URL}",
        UserWarning,
        stacklevel=2,
    )
    parser = OverridesParser.create()
    space = {}
    for key, spec in search_space.items():
        if isinstance(spec, str):
            space[str(key)] = distribution(parser.parse_overrides([f"{key}={spec}"])[0])
        else:
            space[str(key)] = typed_distribution(spec)
    return space


def typed_distribution(spec: Any) -> BaseDistribution:
    """One entry of the typed search space: ``type`` int | float | categorical."""
    spec = _plain(spec) if not isinstance(spec, dict) else spec
    kind, low, high, step, log_scale = (spec.get(k) for k in ("type", "low", "high", "step", "log"))
    if kind == "categorical":
        return CategoricalDistribution(list(spec["choices"]))
    if kind == "int":
        if log_scale:
            return IntDistribution(int(low), int(high), log=True)
        return IntDistribution(int(low), int(high), step=int(step) if step is not None else 1)
    if kind == "float":
        if log_scale:
            return FloatDistribution(float(low), float(high), log=True)
        return FloatDistribution(float(low), float(high), step=float(step) if step is not None else None)
    raise ValueError(f"search_space type {kind!r}: use int, float or categorical")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def grid_values(dist: BaseDistribution) -> list[Any]:
    """The values a grid sampler walks for one parameter: a choice's, or a range's as Hydra counts them
    (``range(0, 2, step=0.5)``: 0, 0.5, 1, 1.5 — high excluded, as hydra-optuna-sweeper's grid does)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if getattr(dist, "step", None):
        count = math.ceil((dist.high - dist.low) / dist.step - 1e-9)
        return [dist.low + i * dist.step for i in range(count)]
    raise ValueError("the grid sampler needs choice(...) or range(...) parameters, not intervals")


def create_or_load_study(storage: str | None, **study_args: Any) -> tuple[optuna.Study, Any]:
    """The sweep's study and its opened storage (``storage``: a URL, ``journal:<file>``, or None: in memory),
    created by the first worker and loaded by the others — also when they start at the same moment on several
    machines: the set-up runs under the study's lock (``storage_lock``), as Optuna's RDB set-up (schema,
    version row, study) is not safe against two processes doing it at once."""
    with storage_lock(storage, "setup"):
        opened = optuna.storages.InMemoryStorage() if storage is None else open_storage(storage)
        return optuna.create_study(storage=opened, load_if_exists=True, **study_args), opened


def check_directions(optimized_metric: Any, directions: Sequence[str]) -> None:
    """``hydra.sweeper.direction`` must agree with the metric suites on the objective (``optimized_metric``,
    one name or a list): a sweep that maximizes PRES or minimizes eval/score stops before any trial.
    Names no suite declares (another app's metrics), a missing objective, or a count that differs
    from the directions' are left as they are."""
    if optimized_metric is None:
        return
    several = isinstance(optimized_metric, Sequence | ListConfig) and not isinstance(optimized_metric, str)
    names = [str(m) for m in optimized_metric] if several else [str(optimized_metric)]
    given = [str(d).lower().removeprefix("studydirection.") for d in directions]
    if len(names) != len(given):
        return
    right = [metric_suites.direction(n) or d for n, d in zip(names, given, strict=True)]
    if right == given:
        return
    wrong = [
        f"{n}: {'higher' if r == 'maximize' else 'lower'} is better"
        for n, d, r in zip(names, given, right, strict=True)
        if r != d
    ]

    def shown(values: list[str]) -> str:
        return values[0] if len(values) == 1 else f"[{','.join(values)}]"

    raise UserInputError(
        f"hydra.sweeper.direction={shown(given)} contradicts optimized_metric={shown(names)} "
        f"({'; '.join(wrong)}): set hydra.sweeper.direction={shown(right)}"
    )


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Trials that use up one of ``n_trials`` (a trial abandoned by a dead worker does not)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("abandoned", False)


class DbexpOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        search_space: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        custom_search_space: str | None = None,
        pruner: Any = None,
        heartbeat_interval: int = 10,
        grace_period: int | None = None,
        n_trials_in_total: bool = True,
        keep: str = "all",
        keep_best: int = 3,
    ) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        several = isinstance(direction, Sequence | ListConfig) and not isinstance(direction, str)
        # "minimize", or hydra-optuna-sweeper's Direction.minimize (config.Direction)
        self.directions = [d.name if isinstance(d, Enum) else str(d) for d in (direction if several else [direction])]
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, max(1, n_jobs), max_failure_rate
        self.n_trials_in_total = n_trials_in_total
        self.params = dict(params or {})
        self.typed_search_space, self.given_params = search_space, params is not None
        self.custom_search_space = custom_search_space
        self.heartbeat_interval = max(1, heartbeat_interval)
        self.grace_period = grace_period if grace_period is not None else 3 * self.heartbeat_interval
        self.keep, self.keep_best = keep, keep_best
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        try:
            self.check_extras(config)
            objective = OmegaConf.select(config, "optimized_metric", default=None, throw_on_resolution_failure=False)
            check_directions(objective, self.directions)
            check_keep(self.keep, self.keep_best)
            self.check_moved_keys()
        except UserInputError as err:  # before the launcher, the study and any trial
            stop(err)
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        # Trial folders named by trial number (workers sharing a sweep folder cannot collide), unless
        # the user chose another naming.
        subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
        self.subdir_by_trial = subdir == "${hydra.job.num}"

    def check_extras(self, config: DictConfig) -> None:
        """Samplers, storages and launchers that need an optional package: one line naming its extra."""
        if str(OmegaConf.select(config, "hydra.sweeper.sampler._target_", default="")).endswith("CmaEsSampler"):
            require("cmaes", "hydra/sweeper/sampler=cmaes", instead="use another sampler (tpe, random, qmc, ...)")
        if self.storage is not None:
            require_for_url(str(self.storage), "hydra.sweeper.storage")
        if "hydra_submitit_launcher" in str(OmegaConf.select(config, "hydra.launcher._target_", default="")):
            require("slurm", "hydra/launcher=slurm_one_gpu (Hydra's submitit launcher)")

    def check_moved_keys(self) -> None:
        """A search space written for an older dbexp (``model.lora.rank``): one line naming the new key."""
        for key in self.params:
            moved = moved_key(f"{key}=")
            if moved is not None:
                raise UserInputError(f"hydra.sweeper.params: {moved}")

    # --- the search space ---------------------------------------------------------------------------
    def search_space(self, arguments: list[str]) -> tuple[list[str], dict[str, BaseDistribution]]:
        """Fixed overrides and distributions: the deprecated typed ``search_space``, then ``params`` from the
        config, then the command line (a later form of a key replaces an earlier one)."""
        typed = space_from_search_space(self.typed_search_space, self.given_params)
        space, fixed = params_from_overrides([f"{key}={value}" for key, value in self.params.items()] + arguments)
        space = {key: dist for key, dist in typed.items() if key not in fixed} | space
        return [f"{key}={value}" for key, value in fixed.items()], space

    def make_sampler(self, space: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
        if self.sampler_cfg is None:
            return optuna.samplers.TPESampler()
        # Unset (null) keys keep Optuna's own defaults (and do not trip its deprecation warnings).
        given = {k: v for k, v in OmegaConf.to_container(self.sampler_cfg).items() if v is not None}
        given.pop("_partial_", None)  # hydra-optuna-sweeper's grid key: the grid is built here, not later
        if given["_target_"].endswith("MOTPESampler"):  # removed in Optuna 4: TPE takes several objectives
            given["_target_"] = "optuna.samplers.TPESampler"
        if "n_ehvi_candidates" in given:  # MOTPE's name for TPE's n_ei_candidates
            given["n_ei_candidates"] = given.pop("n_ehvi_candidates")
        if given["_target_"].endswith("GridSampler"):
            given["search_space"] = {name: grid_values(dist) for name, dist in space.items()}
            given["_target_"] = f"{__name__}.SweepGridSampler"
        return instantiate(given)

    # --- the loop -----------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        fixed, space = self.search_space(arguments)
        sampler = self.make_sampler(space)
        if isinstance(sampler, SweepGridSampler):  # as hydra-optuna-sweeper: a grid runs each point once
            size = math.prod(len(grid_values(dist)) for dist in space.values())
            if size < self.n_trials:
                log.info("n_trials %d -> %d: the grid has %d points", self.n_trials, size, size)
                self.n_trials = size
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")  # as Hydra's basic sweeper does
        self.in_memory = self.storage is None  # a study in memory: in-process jobs reach it by name
        study, self.opened_storage = create_or_load_study(
            None if self.in_memory else str(self.storage),
            study_name=self.study_name,
            sampler=sampler,
            pruner=instantiate(self.pruner_cfg) if self.pruner_cfg else optuna.pruners.NopPruner(),
            directions=self.directions,
        )
        if self.in_memory:
            register_in_process(study.study_name, self.opened_storage)
        self.fail_stale_trials(study)
        if not self.n_trials_in_total:  # this command adds n_trials to what the study has done
            self.n_trials += sum(counted(t) for t in study.get_trials(deepcopy=False))
        log.info(
            "study %s: %d of %d trials done, storage %s",
            study.study_name,
            sum(counted(t) for t in study.trials),
            self.n_trials,
            self.storage or "in memory",
        )
        custom = get_method(self.custom_search_space) if self.custom_search_space else None
        waited_since: float | None = None
        while True:
            trials = study.get_trials(deepcopy=False)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            remaining = self.n_trials - sum(counted(t) for t in trials) - running
            if remaining <= 0 and running and not self.in_memory:
                # Running elsewhere: alive workers finish them; a dead worker's trials go stale within
                # grace_period and their slots come back here.
                waited_since = waited_since or time.monotonic()
                if time.monotonic() - waited_since <= self.grace_period + self.heartbeat_interval:
                    time.sleep(min(self.heartbeat_interval, 5))
                    self.fail_stale_trials(study)
                    continue
                log.info("%d trial(s) still running in other workers; they finish them", running)
            if remaining <= 0:
                break
            waited_since = None
            batch = []
            for _ in range(min(self.n_jobs, remaining)):
                trial = study.ask(fixed_distributions=space)
                if self.over_budget(study, trial):
                    continue
                self.beat([trial])
                if custom is not None:
                    custom(self.config, trial)
                overrides = [*fixed, *(f"{name}={_override_value(v)}" for name, v in trial.params.items())]
                overrides += job_overrides(study.study_name, trial.number)
                if self.subdir_by_trial:
                    overrides.append(f"hydra.sweep.subdir={trial.number}")
                batch.append((trial, tuple(overrides)))
            if not batch:
                continue  # other workers took the remaining slots; they finish them
            try:
                with self.heartbeat([t for t, _ in batch]):
                    returns = self.launcher.launch([o for _, o in batch], initial_job_idx=self.job_idx)
            except Exception as err:
                self.abandon(study, [t for t, _ in batch], err)
                raise
            self.job_idx += len(batch)
            for (trial, _), result in zip(batch, returns, strict=True):
                if result.hydra_cfg is not None:  # where the trial's folder is, for retention (any worker)
                    trial.set_user_attr(RUN_DIR, str(result.hydra_cfg.hydra.runtime.output_dir))
                self.tell(study, trial, result)
            self.release(study)
            self.check_failure_rate(study)
        self.release(study)
        self.write_results(study)

    def release(self, study: optuna.Study) -> None:
        """``keep``: trials that are not (or no longer) among the kept lose their export and trained weights."""
        freed = apply_retention(study, self.keep, self.keep_best)
        if freed:
            log.info("keep=%s: %s released", self.keep, format_bytes(freed))

    # --- workers that die ---------------------------------------------------------------------------
    def beat(self, trials: list[optuna.Trial]) -> None:
        if self.in_memory:
            return
        now = time.time()
        for trial in trials:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                trial.set_user_attr("heartbeat", now)

    @contextlib.contextmanager
    def heartbeat(self, trials: list[optuna.Trial]):
        """A heartbeat for ``trials`` every ``heartbeat_interval`` seconds while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.heartbeat_interval):
                try:
                    self.beat(trials)
                except Exception as err:  # a storage hiccup must not end the sweep; the next beat retries
                    log.warning("heartbeat failed: %s", err)

        thread = threading.Thread(target=loop, name="dbexp-optuna-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def abandon(self, study: optuna.Study, trials: list[optuna.Trial], err: Exception) -> None:
        """The launcher raised instead of returning the batch's results — a job that ended without one (a SLURM
        job cancelled or its node lost: submitit's ``UncompletedJobError``, naming the job and its state): the
        batch's trials are failed as ``abandoned`` with that reason, so they do not count and the same command
        runs their slots again. The sweep then stops with the error (it could be the same for every retry)."""
        reason = f"the launcher lost its batch: {type(err).__name__}: {err}"[:2000]
        for trial in trials:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                trial.set_user_attr("abandoned", True)
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        log.warning("trials %s abandoned (run again by the same command): %s", [t.number for t in trials], reason)

    def fail_stale_trials(self, study: optuna.Study) -> None:
        """RUNNING trials whose heartbeat is older than ``grace_period``: FAIL, abandoned (their slots are retried)."""
        if self.in_memory:
            return
        storage, now = self.opened_storage, time.time()
        study_id = storage.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
            if now - beat <= self.grace_period:
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                storage.set_trial_user_attr(trial_id, "abandoned", True)
                reason = f"its worker stopped: no heartbeat for {now - beat:.0f} s (grace_period={self.grace_period})"
                storage.set_trial_user_attr(trial_id, "fail_reason", reason)
                if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    log.warning("trial %d: %s; its slot is run again", t.number, reason)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished, or another worker failed it first

    def over_budget(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """Workers sharing a storage may ask at the same moment: a trial numbered past ``n_trials`` among
        the trials that count (or run) gives its slot back — FAIL, marked ``abandoned``, not counted."""
        live = sorted(t.number for t in study.get_trials(deepcopy=False) if counted(t) or t.state == TrialState.RUNNING)
        if trial.number not in live[: self.n_trials]:
            trial.set_user_attr("abandoned", True)
            trial.set_user_attr("fail_reason", "another worker took the last slot of n_trials")
            study.tell(trial, state=TrialState.FAIL)
            return True
        return False

    def tell(self, study: optuna.Study, trial: optuna.Trial, result) -> None:
        try:
            value = result.return_value  # raises the trial's exception
            values = [float(v) for v in value] if isinstance(value, Sequence) else [float(value)]
            if len(values) != len(self.directions):
                raise ValueError(f"the task returned {len(values)} value(s) for {len(self.directions)} direction(s)")
            if any(math.isnan(v) for v in values):
                raise ValueError("the objective is NaN")
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            return
        except Exception as err:  # a failed trial is recorded; the sweep goes on
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}"[:2000])
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
            return
        study.tell(trial, values if len(values) > 1 else values[0])

    def check_failure_rate(self, study: optuna.Study) -> None:
        finished = [t for t in study.get_trials(deepcopy=False) if counted(t)]
        failed = [t for t in finished if t.state == TrialState.FAIL]
        if finished and len(failed) / len(finished) > self.max_failure_rate:
            self.write_results(study)
            last = failed[-1].user_attrs.get("fail_reason", "no reason recorded")
            raise RuntimeError(
                f"{len(failed)} of {len(finished)} trials failed, more than max_failure_rate={self.max_failure_rate}; "
                f"the last one (trial {failed[-1].number}): {last} (each trial's reason: its fail_reason attribute)"
            )

    def write_results(self, study: optuna.Study) -> None:
        """Best parameters (one objective) or the Pareto front (several) into the sweep folder."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {
            "name": "optuna",  # the keys hydra-optuna-sweeper writes, and ours beside them
            "study_name": study.study_name,
            "directions": self.directions,
            "trials": {s.name: sum(t.state == s for t in study.trials) for s in TrialState},
        }
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if complete and len(self.directions) == 1:
            summary |= {
                "best_params": study.best_trial.params,
                "best_value": study.best_value,
                "best_trial": study.best_trial.number,
            }
        elif complete:
            summary["solutions"] = [
                {"trial": t.number, "params": t.params, "values": t.values} for t in study.best_trials
            ]
        OmegaConf.save(OmegaConf.create(summary), self.sweep_dir / RESULTS)
        log.info("sweep results: %s", self.sweep_dir / RESULTS)


class SweepGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, minus its ``study.stop()`` once the grid is used up: Optuna allows that call
    only inside ``study.optimize``, and this sweeper's own loop (``n_trials``) decides when to stop."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def _override_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value.replace(".", "").replace("_", "").replace("-", "").isalnum() else f"'{value}'"
    return repr(value) if isinstance(value, float) else str(value)
