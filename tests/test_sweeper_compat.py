"""dbexp's sweeper as a drop-in for hydra-optuna-sweeper, beyond that plugin's own tests
(``tests/hydra_optuna_sweeper/``): a config that pins the official class, the template configs people copy,
and where dbexp deliberately differs (resume, ``max_failure_rate``), on the ported example apps. Each app
runs as a script with every warning an error, as that plugin's tests run them."""

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

HERE = Path(__file__).parent
SPHERE = HERE / "hydra_optuna_sweeper" / "example" / "sphere.py"
MULTI_OBJECTIVE = HERE / "hydra_optuna_sweeper" / "example" / "multi-objective.py"
TEMPLATE = HERE / "lightning_hydra_template"


def script(path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-Werror", str(path), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_lightning_hydra_templates_hparams_search_runs_after_the_override_line_changes(tmp_path):
    """The template's file pins hydra-optuna-sweeper's class (``_target_``); only its override line changes."""
    configs = shutil.copytree(TEMPLATE / "configs", tmp_path / "configs")
    search = configs / "hparams_search" / "mnist_optuna.yaml"
    original = search.read_text()
    renamed = original.replace("override /hydra/sweeper: optuna", "override /hydra/sweeper: dbexp_optuna")
    assert [a for a, b in zip(original.splitlines(), renamed.splitlines(), strict=True) if a != b] == [
        "  - override /hydra/sweeper: optuna"
    ]
    assert "_target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper" in renamed
    search.write_text(renamed)
    result = script(
        TEMPLATE / "train.py",
        f"--config-path={configs}",
        "hparams_search=mnist_optuna",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.name == "optuna" and results.directions == ["maximize"]
    assert results.trials.COMPLETE == 20  # the template's n_trials, on dbexp's sweeper (its extra keys)
    assert set(results.best_params) == {
        "model.optimizer.lr",
        "datamodule.batch_size",
        "model.net.lin1_size",
        "model.net.lin2_size",
        "model.net.lin3_size",
    }
    assert 0.0001 <= results.best_params["model.optimizer.lr"] <= 0.1
    assert results.best_params["datamodule.batch_size"] in (32, 64, 128, 256)


def test_the_official_class_path_is_left_to_the_official_plugin_when_it_is_installed(monkeypatch):
    """Installed, hydra-optuna-sweeper owns its class path: dbexp defines nothing under it."""
    import importlib.util

    from hydra_plugins.dbexp_optuna_sweeper import official_path

    assert not official_path.official_plugin_installed()  # not in the lock
    assert official_path.OptunaSweeper.__module__ == official_path.MODULE
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == official_path.PACKAGE else real_find_spec(name, *a),
    )
    assert "OptunaSweeper" not in runpy.run_path(official_path.__file__)


def _study(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).trials


def _sphere_sweep(tmp_path, study: str) -> tuple[str, list[str]]:
    """The storage and the multirun arguments of a random-sampler sweep of the example app, one trial a batch."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["--multirun", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.job.chdir=True", "hydra.sweeper.n_jobs=1"]
    args += [f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={study}", "hydra/sweeper/sampler=random"]
    return storage, args


def test_the_same_command_again_continues_the_study_to_n_trials_in_total(tmp_path):
    """Deliberately different: hydra-optuna-sweeper runs n_trials more each time; dbexp finishes the study
    (a resume after a crash does not overshoot). ``n_trials_in_total=false`` is the official behaviour."""
    storage, args = _sphere_sweep(tmp_path, "resume")
    args.append("hydra.sweeper.sampler.seed=123")
    for n_trials, expected in ((3, 3), (4, 4), (4, 4)):
        result = script(SPHERE, *args, f"hydra.sweeper.n_trials={n_trials}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(_study(storage, "resume")) == expected
    more = script(SPHERE, *args, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_trials_in_total=false", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    trials = _study(storage, "resume")
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.trials.COMPLETE == 6 and set(results.best_params) == {"x", "y"}


def test_max_failure_rate_counts_over_the_whole_study(tmp_path):
    """Deliberately different: hydra-optuna-sweeper compares the failures of each batch of n_jobs trials,
    so its first failing batch of one ends the sweep (1 of 1 > 0.5); dbexp counts every finished trial
    of the study (a resumed study keeps its record), here 2 failures of 6 ≤ 0.5."""
    storage, args = _sphere_sweep(tmp_path, "failures")
    args.append("hydra.sweeper.max_failure_rate=0.5")
    good = script(SPHERE, *args, "hydra.sweeper.n_trials=4", cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]
    failing = script(
        SPHERE, *args, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_trials_in_total=false", "error=true", cwd=tmp_path
    )
    assert failing.returncode == 0, failing.stderr[-3000:]
    states = [t.state for t in _study(storage, "failures")]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 2
    assert all(
        t.user_attrs["fail_reason"] == "RuntimeError: cfg.error is True"
        for t in _study(storage, "failures")
        if t.state == TrialState.FAIL
    )
    # Failing on: 3 of 7 and 4 of 8 are within the rate, 5 of 9 ends the sweep (the 10th trial never runs),
    # naming the last trial's reason.
    over = script(SPHERE, *args, "hydra.sweeper.n_trials=10", "error=true", cwd=tmp_path)
    assert over.returncode != 0
    assert "5 of 9 trials failed, more than max_failure_rate=0.5" in over.stderr
    assert "the last one (trial 8): RuntimeError: cfg.error is True" in over.stderr
    assert len(_study(storage, "failures")) == 9


def test_motpe_runs_on_optunas_multi_objective_tpe(tmp_path):
    """``sampler=motpe``: Optuna 4 removed MOTPESampler; its keys go to TPE, which takes several objectives."""
    result = script(
        MULTI_OBJECTIVE,
        "--multirun",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.job.chdir=True",
        "hydra.sweeper.n_trials=12",
        "hydra/sweeper/sampler=motpe",
        "hydra.sweeper.sampler.n_ehvi_candidates=8",
        "hydra.sweeper.sampler.seed=0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.trials.COMPLETE == 12 and results.directions == ["minimize", "minimize"]
    assert results.solutions and all(len(s["values"]) == 2 for s in results.solutions)


@pytest.mark.parametrize("direction", ["minimize", ["minimize", "maximize"]])
def test_the_official_direction_enum_is_accepted(direction):
    from hydra_plugins.dbexp_optuna_sweeper.config import Direction
    from hydra_plugins.dbexp_optuna_sweeper.sweeper import DbexpOptunaSweeper

    given = Direction[direction] if isinstance(direction, str) else [Direction[d] for d in direction]
    sweeper = DbexpOptunaSweeper(None, given, None, "s", 1, 1, 0.0)
    assert sweeper.directions == ([direction] if isinstance(direction, str) else direction)
