"""Optional features: each extra is declared, and asking for a feature without it is one line naming it."""

from __future__ import annotations

import pytest
import tomllib
from omegaconf import OmegaConf

from dbexp.errors import UserInputError
from dbexp.extras import EXTRAS, require_for_url
from dbexp.run import plan_run
from tests.conftest import REPO, run_cli


def test_every_extra_is_declared_and_dev_installs_them_all():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["optional-dependencies"]
    assert set(EXTRAS) <= set(declared)
    own = next(r for r in declared["dev"] if r.startswith("dbexp["))
    assert set(own.removeprefix("dbexp[").rstrip("]").split(",")) == set(EXTRAS)


def test_database_urls_need_their_driver_and_files_do_not(monkeypatch):
    monkeypatch.setattr("dbexp.extras.installed", lambda extra: False)
    for url in ("postgresql://u@127.0.0.1/db", "postgresql+psycopg://u@h/db"):
        with pytest.raises(UserInputError, match=r"^key=postgresql.*needs psycopg.*pip install 'dbexp\[postgresql\]'"):
            require_for_url(url, "key")
        assert "u@" not in str(pytest.raises(UserInputError, require_for_url, url, "key").value)  # no credentials
    for url in (
        "sqlite:///outputs/sweep.db",
        "journal:outputs/sweep.log",
        "file:///tmp/mlruns",
        "http://127.0.0.1:5000",
    ):
        require_for_url(url, "key")


def test_a_postgresql_tracking_uri_without_the_driver_stops_the_run_before_it_starts(make_cfg, monkeypatch):
    monkeypatch.setattr("dbexp.extras.installed", lambda extra: extra != "postgresql")
    cfg = make_cfg("logger=mlflow", "logger.mlflow.tracking_uri=postgresql://dbexp@127.0.0.1:5432/mlflow")
    with pytest.raises(UserInputError, match=r"logger.mlflow.tracking_uri=postgresql://… needs psycopg"):
        plan_run(cfg)


def test_the_slurm_launcher_without_submitit_is_named_by_the_sweeper(monkeypatch):
    from hydra_plugins.dbexp_optuna_sweeper.sweeper import DbexpOptunaSweeper

    monkeypatch.setattr("dbexp.extras.installed", lambda extra: extra != "slurm")
    sweeper = DbexpOptunaSweeper(None, "maximize", None, "s", 1, 1, 0.0)
    config = OmegaConf.create(
        {"hydra": {"launcher": {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}}}
    )
    with pytest.raises(UserInputError, match=r"slurm_one_gpu .* needs hydra_submitit_launcher.*'dbexp\[slurm\]'"):
        sweeper.check_extras(config)


SWEEP = ["--multirun", "--config-name", "quick_cpu", "hydra.sweeper.n_trials=1"]


@pytest.mark.parametrize(
    ("hidden", "overrides", "message"),
    [
        (("cmaes",), ["hydra/sweeper/sampler=cmaes"], "hydra/sweeper/sampler=cmaes needs cmaes"),
        (("psycopg",), ["hydra.sweeper.storage=postgresql://dbexp@127.0.0.1:9/db"], "storage=postgresql://… needs"),
        (
            ("hydra_plugins.hydra_submitit_launcher", "submitit"),
            ["hydra/launcher=slurm_one_gpu"],
            "hydra/launcher=slurm_one_gpu (Hydra's submitit launcher) needs hydra_submitit_launcher",
        ),
    ],
    ids=["cmaes", "postgresql", "slurm"],
)
def test_a_sweep_needing_a_missing_extra_stops_with_one_line_before_any_trial(tmp_path, hidden, overrides, message):
    result = run_cli("dbexp.train", *SWEEP, *overrides, cwd=tmp_path, hide=hidden, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("dbexp: error:")]
    assert len(errors) == 1 and message in errors[0] and "pip install 'dbexp[" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("outputs/*/multiruns/*/*/")), "a trial started"
