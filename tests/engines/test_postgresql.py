"""Optuna studies on a real PostgreSQL server: workers that share nothing but the database (each its own
working folder and cache root, so no file lock can help them) run one sweep to exactly ``n_trials``; a worker
killed mid-trial leaves a trial another worker marks abandoned and runs again; pruning reaches across them;
workers that create the study at the same moment never fail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from dbexp.sweep_trial import open_storage
from tests.test_sweeper import FAST

COMPLETE, PRUNED, FAIL, RUNNING = (optuna.trial.TrialState[s] for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def worker(folder: Path, *args: str) -> subprocess.Popen:
    """``python -m dbexp.train --multirun`` in its own folder with its own cache root (nothing shared but
    what ``args`` name)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "dbexp.train", "--multirun", *args, f"paths.cache_dir={folder / 'cache'}"],
        cwd=folder,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "stderr.txt", "w"),  # noqa: SIM115 - the child owns it
        start_new_session=True,
    )


def errors(folder: Path) -> str:
    return (folder / "stderr.txt").read_text()[-3000:]


CREATE = """
import sys, time
from pathlib import Path
from hydra_plugins.dbexp_optuna_sweeper.sweeper import create_or_load_study
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
study, _ = create_or_load_study(url, study_name="together", direction="minimize")
"""


def test_workers_that_create_the_study_at_the_same_moment_never_fail(postgres, tmp_path):
    """Six processes open a new database's storage and create one study at the same instant, the way the
    sweeper does (``create_or_load_study``: the schema and the study under the study's PostgreSQL advisory
    lock). Without the lock Optuna's set-up is not safe against this (concurrent ``CREATE TABLE``)."""
    url = postgres.create_database("together")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, url, str(tmp_path / f"ready{i}"), str(go)],
            env=ENV,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(6)
    ]
    deadline = time.time() + 300
    while len(list(tmp_path.glob("ready*"))) < len(procs) and time.time() < deadline:
        time.sleep(0.05)  # every process imported and waiting
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [err[-1500:] for _, err in outputs if err]
    assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))] == ["together"]


def test_three_workers_sharing_only_the_database_run_each_trial_once_and_redo_a_killed_one(postgres, tmp_path):
    url = postgres.create_database("three_workers")
    args = [
        *FAST,
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.grace_period=4",
        "hydra/sweeper/sampler=random",
        "trainer.max_steps=40",  # a few seconds a trial: long enough to be killed in the middle
        "optimizer.lr=tag(log, interval(1e-6, 1e-3))",
    ]
    folders = {name: tmp_path / name for name in ("a", "b", "c")}
    workers = {name: worker(folder, *args) for name, folder in folders.items()}  # the same second

    def trials():
        try:
            return optuna.load_study(study_name="shared", storage=open_storage(url)).trials
        except KeyError:
            return []

    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and workers["c"].poll() is None:
        # c's trial is the one whose heartbeat c writes: the trial running in c's folder once it has begun
        running = [t for t in trials() if t.state == RUNNING]
        ours = [p for p in (folders["c"] / "outputs").glob("debug/multiruns/*/[0-9]*") if p.is_dir()]
        numbers = {int(p.name) for p in ours}
        victim = next((t for t in running if t.number in numbers), None)
        time.sleep(0.2)
    assert victim is not None, f"worker c never ran a trial: {errors(folders['c'])}"
    time.sleep(1.0)  # inside its training
    os.killpg(workers["c"].pid, signal.SIGKILL)  # the worker and the trial it runs: a lost machine
    workers["c"].wait()

    for name in ("a", "b"):
        assert workers[name].wait(timeout=600) == 0, errors(folders[name])
    done = trials()
    finished = [t for t in done if t.state == COMPLETE]
    assert len(finished) == 6  # exactly n_trials, none lost, none extra
    assert len({t.params["optimizer.lr"] for t in finished}) == 6  # distinct trials
    killed = next(t for t in done if t.number == victim.number)
    assert killed.state == FAIL and killed.user_attrs["abandoned"]
    assert "no heartbeat" in killed.user_attrs["fail_reason"]
    assert all(t.user_attrs.get("abandoned") for t in done if t.state != COMPLETE)
    assert len(done) == 7  # the killed trial's slot ran again


def test_a_trial_is_pruned_against_another_workers_trials_through_postgresql(postgres, tmp_path):
    """A good trial finishes in one worker; an absurd learning rate in a worker of another folder is pruned at
    its first report: the intermediate values travel through the database."""
    url = postgres.create_database("pruning")
    args = [
        *FAST,
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.study_name=prune",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "optimized_metric=train/loss",  # reported to the pruner each time it is logged:
        "trainer.log_every_n_steps=2",  # every 2 steps
        "trainer.max_steps=8",
    ]
    good = worker(tmp_path / "good", *args, "hydra.sweeper.n_trials=1", "optimizer.lr=1e-6")
    assert good.wait(timeout=300) == 0, errors(tmp_path / "good")
    bad = worker(tmp_path / "bad", *args, "hydra.sweeper.n_trials=2", "optimizer.lr=1.0")
    assert bad.wait(timeout=300) == 0, errors(tmp_path / "bad")
    trials = optuna.load_study(study_name="prune", storage=open_storage(url)).trials
    assert [t.state for t in trials] == [COMPLETE, PRUNED]
    assert sorted(trials[0].intermediate_values) == [2, 4, 6, 8] and list(trials[1].intermediate_values) == [2]


def test_the_study_storage_lock_excludes_a_second_holder(postgres):
    """``storage_lock`` on PostgreSQL: an advisory lock a second connection cannot take while it is held."""
    import sqlalchemy

    from dbexp.sweep_trial import storage_lock

    url = postgres.create_database("locks")
    other = sqlalchemy.create_engine(url)
    probe = sqlalchemy.text("SELECT pg_try_advisory_lock(hashtext('dbexp:setup'))")
    with storage_lock(url, "setup"), other.connect() as connection:
        assert connection.execute(probe).scalar() is False
    with other.connect() as connection:
        assert connection.execute(probe).scalar() is True
    other.dispose()
