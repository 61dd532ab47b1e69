"""Config schemas of the sweeper, registered under ``hydra/sweeper`` (``dbexp_optuna``) and its samplers
under ``hydra/sweeper/sampler`` with the names hydra-optuna-sweeper uses, so a sweep config written for
that plugin runs after changing only ``override hydra/sweeper: optuna`` to ``dbexp_optuna``."""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Direction(Enum):
    """hydra-optuna-sweeper's enum for ``direction`` (``direction: minimize`` in YAML is the same)."""

    minimize = 1
    maximize = 2


@dataclass
class TPESamplerConfig:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    # hydra-optuna-sweeper's keys, all accepted. Those Optuna deprecated (consider_prior in 4.3, the next
    # four in 4.9) default to null: passed on only when set, so a sweep prints no FutureWarning of ours.
    consider_prior: bool | None = None
    prior_weight: float | None = None
    consider_magic_clip: bool | None = None
    consider_endpoints: bool | None = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    warn_independent_sampling: bool | None = None


@dataclass
class RandomSamplerConfig:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class CmaEsSamplerConfig:
    _target_: str = "optuna.samplers.CmaEsSampler"
    x0: dict[str, Any] | None = None
    sigma0: float | None = None
    seed: int | None = None
    independent_sampler: Any | None = None
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: Any | None = None  # deprecated in Optuna 4.4, as is inc_popsize: passed on only when set
    inc_popsize: int | None = None
    use_separable_cma: bool = False
    source_trials: Any | None = None  # warm start from earlier trials (Optuna's WS-CMA-ES)


@dataclass
class NSGAIISamplerConfig:
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    seed: int | None = None
    constraints_func: Any | None = None  # a function (trial → constraint values), as a ``_target_`` node


@dataclass
class MOTPESamplerConfig:
    """hydra-optuna-sweeper's ``motpe``: Optuna 4 removed MOTPESampler, its TPE sampler takes several
    objectives. The sweeper passes ``n_ehvi_candidates`` on as TPE's ``n_ei_candidates``."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    consider_prior: bool | None = None  # deprecated by Optuna, as are the next three: passed only when set
    prior_weight: float | None = None
    consider_magic_clip: bool | None = None
    consider_endpoints: bool | None = None
    n_startup_trials: int = 10
    n_ehvi_candidates: int = 24


@dataclass
class GridSamplerConfig:
    """The grid is built from the sweep's ``params`` (choice/range values)."""

    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True  # hydra-optuna-sweeper's key (it filled the grid in later); the sweeper builds it
    search_space: dict[str, Any] | None = None
    seed: int | None = None


@dataclass
class QMCSamplerConfig:
    _target_: str = "optuna.samplers.QMCSampler"
    qmc_type: str = "sobol"
    scramble: bool = False
    seed: int | None = None
    independent_sampler: Any | None = None
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


@dataclass
class GPSamplerConfig:
    """Gaussian-process Bayesian optimization (Optuna's GPSampler; Hydra's next plugin release has it)."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    independent_sampler: Any | None = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    constraints_func: Any | None = None
    warn_independent_sampling: bool = True


@dataclass
class NopPrunerConfig:
    """No pruning: every trial trains to the end."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig:
    """Stop a trial whose reported objective is worse than the median of earlier trials at that step."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # trials that always finish before any is pruned
    n_warmup_steps: int = 0  # training steps before a trial may be pruned
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConfig:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"  # training steps of the first rung ("auto": from the first finished trial)
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # training steps
    max_resource: Any = "auto"  # "auto": the steps of the first finished trial
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class DbexpOptunaSweeperConfig:
    _target_: str = "hydra_plugins.dbexp_optuna_sweeper.sweeper.DbexpOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler itself (the grid needs the search space)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = MISSING  # filled by the hydra/sweeper/sampler group (MISSING does not overwrite it)
    direction: Any = "minimize"  # minimize | maximize | a list of them (multi-objective)
    storage: Any = None  # sqlite:///…, journal:<file>, a database URL, or null (in memory)
    study_name: str | None = None
    n_trials: int = 20
    # true: the study ends at n_trials in total, however often the command runs (a resume finishes it);
    # false: every run of the command adds n_trials more (hydra-optuna-sweeper's behaviour).
    n_trials_in_total: bool = True
    n_jobs: int = 2
    max_failure_rate: float = 0.0
    search_space: dict[str, Any] | None = None  # deprecated: Hydra 1.1's {name: {type, low, high, step, log}}
    params: dict[str, str] | None = None
    custom_search_space: str | None = None  # "module.function(cfg, trial)" for conditional parameters
    pruner: Any = MISSING  # filled by the hydra/sweeper/pruner group: none | median | successive_halving | hyperband
    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats in the storage
    grace_period: int | None = None  # a RUNNING trial without a heartbeat for this long belongs to a dead
    #   worker: it is failed and its slot retried (null: 3 × heartbeat_interval)
    # which finished trials keep their export and trained-weights cache entry: all | best (keep_best of them) |
    # front (the Pareto front); the others keep metrics, samples and logs (dbexp.trial_retention)
    keep: str = "all"
    keep_best: int = 3


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="dbexp_optuna", node=DbexpOptunaSweeperConfig, provider="dbexp")
#: hydra/sweeper/sampler options, by hydra-optuna-sweeper's names.
SAMPLERS = {
    "tpe": TPESamplerConfig,
    "random": RandomSamplerConfig,
    "cmaes": CmaEsSamplerConfig,
    "nsgaii": NSGAIISamplerConfig,
    "motpe": MOTPESamplerConfig,
    "grid": GridSamplerConfig,
    "qmc": QMCSamplerConfig,
    "gp": GPSamplerConfig,
}
for name, node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="dbexp")
for name, node in {
    "none": NopPrunerConfig,
    "median": MedianPrunerConfig,
    "successive_halving": SuccessiveHalvingPrunerConfig,
    "hyperband": HyperbandPrunerConfig,
}.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="dbexp")
