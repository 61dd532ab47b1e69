"""The Optuna sweeper plugin: grammar, a sweep with storage, resume, failures, multi-objective."""

import re
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.dbexp_optuna_sweeper.sweeper import distribution, grid_values
from tests.conftest import run_cli

FAST = [
    "debug=fast",
    "callbacks.progress_bar=null",
    "eval.metrics=none",
    "export_pipeline=false",
    "hydra/sweeper=dbexp_optuna",
    "hydra.sweeper.n_jobs=1",
]


def _dist(line):
    return distribution(OverridesParser.create().parse_overrides([line])[0])


def test_hydra_optuna_sweeper_grammar():
    assert _dist("a=interval(1e-7, 1e-5)") == FloatDistribution(1e-7, 1e-5)
    assert _dist("a=tag(log, interval(1e-7, 1e-5))") == FloatDistribution(1e-7, 1e-5, log=True)
    assert _dist("a=int(interval(1, 10))") == IntDistribution(1, 10)
    assert _dist("a=range(1, 5)") == IntDistribution(1, 4)
    assert _dist("a=range(0, 2, step=0.5)") == FloatDistribution(0.0, 1.5, step=0.5)
    assert _dist("a=choice(3, 7.5, 10)") == CategoricalDistribution([3, 7.5, 10])
    assert _dist("a=5") is None
    assert grid_values(_dist("a=range(0, 2, step=0.5)")) == [0.0, 0.5, 1.0, 1.5]


def _study(tmp_path, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.slow
def test_running_the_same_sweep_again_continues_the_study(tmp_path, cache_dir):
    args = [
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=resume",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",
        "optimizer.lr=tag(log, interval(1e-6, 1e-3))",
    ]
    first = run_cli("dbexp.train", "--multirun", *args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(_study(tmp_path, "resume").trials) == 2
    again = run_cli("dbexp.train", "--multirun", *args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _study(tmp_path, "resume").trials
    assert len(trials) == 3  # one more, not three: finished trials are not rerun
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    results = OmegaConf.load(
        sorted((tmp_path / "outputs" / "debug" / "multiruns").glob("*/optimization_results.yaml"))[-1]
    )
    assert results.trials.COMPLETE == 3 and "optimizer.lr" in results.best_params


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, cache_dir):
    args = [
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=fails",
        "hydra.sweeper.n_trials=2",
        "optimizer.lr=choice(-1.0)",
    ]
    tolerant = run_cli("dbexp.train", "--multirun", *args, "hydra.sweeper.max_failure_rate=1.0", cwd=tmp_path)
    assert tolerant.returncode == 0, tolerant.stderr[-3000:]
    trials = _study(tmp_path, "fails").trials
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    assert "optimizer.lr=-1.0: the learning rate must be > 0" in trials[0].user_attrs["fail_reason"]
    strict = run_cli(
        "dbexp.train",
        "--multirun",
        *args[:-2],
        "hydra.sweeper.study_name=strict",
        "hydra.sweeper.n_trials=2",
        "optimizer.lr=choice(-1.0)",
        cwd=tmp_path,
    )
    assert strict.returncode != 0 and "more than max_failure_rate=0.0" in strict.stderr


@pytest.mark.slow
def test_multi_objective_sweep_writes_a_pareto_front(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train",
        "--multirun",
        *FAST,
        f"paths.cache_dir={cache_dir}",
        "eval.metrics=tiny",
        "eval.final=true",
        "optimized_metric=[eval/dino,eval/clip_t]",
        "hydra.sweeper.direction=[maximize,maximize]",
        "hydra/sweeper/sampler=nsgaii",
        "hydra.sweeper.n_trials=2",
        "prior.weight=interval(0, 2)",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = next((tmp_path / "outputs" / "debug" / "multiruns").glob("*/optimization_results.yaml"))
    results = OmegaConf.load(path)
    assert results.directions == ["maximize", "maximize"] and len(results.pareto_front) >= 1
    assert all(len(p["values"]) == 2 for p in results.pareto_front)
    assert re.search(r"sweep results: ", result.stderr + result.stdout)


HYDRA_OPTUNA_SWEEPER_CONFIG = """
defaults:
  - train
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: tpe
  - _self_
task_name: compat
hydra:
  sweeper:
    sampler:
      seed: 123
      n_startup_trials: 1
    direction: minimize
    storage: null
    study_name: compat
    n_trials: 2
    n_jobs: 1
    max_failure_rate: 0.0
    params:
      optimizer.lr: tag(log, interval(1e-6, 1e-3))
      prior.weight: interval(0, 2)
      data.batch_size: int(interval(1, 2))
      optimizer.warmup_steps: range(0, 4, step=2)
      eval.guidance_scale: choice(3, 7.5)
"""


@pytest.mark.slow
def test_a_hydra_optuna_sweeper_config_runs_after_renaming_the_sweeper(tmp_path, cache_dir):
    """Written for hydra-optuna-sweeper (its keys, samplers' names and params grammar); only the name changes."""
    (tmp_path / "sweeps").mkdir()
    renamed = HYDRA_OPTUNA_SWEEPER_CONFIG.replace("hydra/sweeper: optuna", "hydra/sweeper: dbexp_optuna")
    assert renamed.count("\n") == HYDRA_OPTUNA_SWEEPER_CONFIG.count("\n")
    (tmp_path / "sweeps" / "compat.yaml").write_text(renamed)
    result = run_cli(
        "dbexp.train",
        "--multirun",
        "--config-dir",
        str(tmp_path / "sweeps"),
        "--config-name",
        "compat",
        "debug=fast",
        "callbacks.progress_bar=null",
        "eval.metrics=none",
        f"paths.cache_dir={cache_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = OmegaConf.load(next((tmp_path / "outputs").glob("*/multiruns/*/optimization_results.yaml")))
    assert results.trials.COMPLETE == 2
    assert set(results.best_params) == {
        "optimizer.lr",
        "prior.weight",
        "data.batch_size",
        "optimizer.warmup_steps",
        "eval.guidance_scale",
    }


@pytest.mark.slow
def test_the_quick_cpu_preset_runs(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train",
        "--multirun",
        "--config-dir",
        str(Path(__file__).resolve().parents[1] / "sweeps"),
        "--config-name",
        "quick_cpu",
        "hydra.sweeper.n_trials=2",
        "trainer.max_steps=4",
        "callbacks.progress_bar=null",
        f"paths.cache_dir={cache_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "outputs" / "sweep_quick_cpu.db").is_file()
    results = OmegaConf.load(
        next((tmp_path / "outputs" / "sweep_quick_cpu").glob("multiruns/*/optimization_results.yaml"))
    )
    assert results.trials.COMPLETE == 2 and results.directions == ["maximize"]


@pytest.mark.slow
def test_an_absurd_learning_rate_fails_its_trial_while_the_sweep_completes(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train",
        "--multirun",
        *FAST,
        f"paths.cache_dir={cache_dir}",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=absurd",
        "hydra.sweeper.max_failure_rate=1.0",
        "hydra/sweeper/sampler=grid",
        "optimizer=sgd",
        "trainer.gradient_clip_val=null",
        "trainer.max_steps=20",
        "optimizer.lr=choice(1e12, 1e-4)",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = {t.params["optimizer.lr"]: t for t in _study(tmp_path, "absurd").trials}
    assert trials[1e-4].state == optuna.trial.TrialState.COMPLETE
    assert trials[1e12].state == optuna.trial.TrialState.FAIL
    assert trials[1e12].user_attrs["fail_reason"].startswith("FloatingPointError: training loss is nan at step")


@pytest.mark.slow
def test_two_workers_on_one_storage_share_the_study(tmp_path, cache_dir):
    import os
    import subprocess
    import sys

    args = [
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=4",
        "hydra/sweeper/sampler=random",
        "optimizer.lr=tag(log, interval(1e-6, 1e-3))",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    workers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "dbexp.train", "--multirun", *args],
                cwd=tmp_path / name,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    trials = _study(tmp_path, "shared").trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4  # exactly n_trials, none lost, none extra
    assert len({t.params["optimizer.lr"] for t in done}) == 4  # distinct trials
    assert all(t.user_attrs.get("abandoned") for t in trials if t.state != optuna.trial.TrialState.COMPLETE)
