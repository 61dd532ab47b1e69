"""An MLflow tracking server (PostgreSQL backend store, artifacts served over HTTP) with sweep workers that
share nothing but the servers: one parent run per sweep even when the workers start at the same moment, a
child per trial, artifacts uploaded over HTTP, and the comparison report read back from the server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.engines.test_postgresql import ENV, errors, worker
from tests.test_sweeper import FAST

ELECT = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from dbexp.sweep_tracking import SweepTracking
storage, uri, folder, ready, go = sys.argv[1:6]
config = OmegaConf.create({"hydra": {"sweeper": {"storage": storage}}, "paths": {"log_dir": folder}})
mlflow = OmegaConf.create({"tracking_uri": uri, "experiment_name": "together"})
client, experiment = SweepTracking.client(config, mlflow)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
print(SweepTracking.find_or_create_parent(client, experiment, "together", config))
"""


def parents(client: MlflowClient, experiment: str) -> list:
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in found if r.data.tags.get("dbexp.sweep_parent") == "true"]


def test_workers_that_start_at_the_same_moment_make_one_parent_run(postgres, mlflow_server, tmp_path):
    """Four processes, each its own folder (no file lock can help them), look for the sweep's parent run at the
    same instant and create it when it is missing: they hold the study's PostgreSQL advisory lock while they do,
    so one creates it and all four name the same run."""
    storage = postgres.create_database("election")
    go = tmp_path / "go"
    procs = []
    for i in range(4):
        folder = tmp_path / f"w{i}"
        folder.mkdir()
        command = [sys.executable, "-c", ELECT, storage, mlflow_server.uri, str(folder), str(folder / "ready"), str(go)]
        procs.append(subprocess.Popen(command, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline = time.time() + 300
    while len(list(tmp_path.glob("w*/ready"))) < len(procs) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [err[-1500:] for _, err in outputs]
    named = {out.strip().splitlines()[-1] for out, _ in outputs}
    found = parents(MlflowClient(mlflow_server.uri), "together")
    assert len(found) == 1 and named == {found[0].info.run_id}


def test_a_sweep_of_two_workers_logs_one_parent_and_a_child_per_trial_to_the_server(postgres, mlflow_server, tmp_path):
    storage = postgres.create_database("sweep")
    args = [
        *FAST,
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=served",
        "hydra.sweeper.n_trials=4",
        "hydra/sweeper/sampler=random",
        "optimizer.lr=tag(log, interval(1e-6, 1e-3))",
        "logger=[csv,mlflow]",
        f"logger.mlflow.tracking_uri={mlflow_server.uri}",
    ]
    folders = [tmp_path / "a", tmp_path / "b"]
    workers = [worker(folder, *args) for folder in folders]  # the same moment
    for folder, process in zip(folders, workers, strict=True):
        assert process.wait(timeout=600) == 0, errors(folder)

    client = MlflowClient(mlflow_server.uri)
    (parent,) = parents(client, "debug")
    runs = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [0, 1, 2, 3]
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)  # served: no shared folder
    downloaded = client.download_artifacts(children[0].info.run_id, "metrics.json", str(tmp_path))
    assert "train/loss" in json.loads(Path(downloaded).read_text())  # uploaded over HTTP, read back the same way
    assert "best_value" in parent.data.metrics and parent.info.status == "FINISHED"  # the workers closed it

    out = tmp_path / "report"
    report = subprocess.run(
        [sys.executable, "-m", "dbexp.compare", "debug", "--tracking-uri", mlflow_server.uri, "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    page = (out / "report.html").read_text()
    assert page.count("<tr") >= 5 and all(f"trial {n}" in page for n in range(4))
    assert (out / "curves.png").is_file()


def test_make_dashboard_shows_what_the_tracking_server_holds(postgres, mlflow_server):
    """``make dashboard MLFLOW_STORE=<the server's database>``: a UI of its own over the same runs."""
    import os
    import signal

    from tests.test_tracking import _free_port, _get, _serve

    MlflowClient(mlflow_server.uri).create_experiment("seen-by-both")
    search = "/ajax-api/2.0/mlflow/experiments/search?max_results=50"
    port = _free_port()
    dashboard = _serve("dashboard", f"MLFLOW_STORE={mlflow_server.backend_store}", f"PORT={port}")
    try:
        shown = {e["name"] for e in json.loads(_get(f"http://127.0.0.1:{port}{search}"))["experiments"]}
        served = {e["name"] for e in json.loads(_get(f"{mlflow_server.uri}{search}"))["experiments"]}
        assert "seen-by-both" in shown and shown == served
    finally:
        os.killpg(dashboard.pid, signal.SIGTERM)
        dashboard.wait(timeout=30)
