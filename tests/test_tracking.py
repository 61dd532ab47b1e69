"""MLflow (a sweep as parent + child runs), W&B offline, secrets kept out of every logged file."""

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dbexp.redaction import redact
from dbexp.tracking import flat_params
from dbexp.train import run
from tests.conftest import FAST, compose_train, run_cli
from tests.helpers import wandb_records

#: Planted in the environment of the runs below; no logged file may contain them.
SECRETS = {
    "WANDB_API_KEY": "wandb-fake-key-3f9d2c71e0a84b56",
    "MLFLOW_TRACKING_TOKEN": "mlflow-fake-token-91c0ffee5eed",
    "HF_TOKEN": "hf_fakeTokenAbCdEf0123456789",
}
SWEEP = [
    "debug=fast",
    "callbacks.progress_bar=null",
    "eval.metrics=tiny",
    "export.enabled=false",
    "hydra/sweeper=dbexp_optuna",
    "hydra.sweeper.n_jobs=1",
    "hydra.sweeper.n_trials=2",
    "hydra/sweeper/sampler=grid",
    "optimized_metric=eval/score",
    "hydra.sweeper.direction=maximize",
]


def _assert_no_secret_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for name, value in SECRETS.items():
                assert value.encode() not in content, f"{name} leaked into {path}"


def test_redaction_of_config_values(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-1234567890")
    assert redact("logger.wandb.api_key", "abc") == "***"
    assert redact("data.prompt", "uses tok-1234567890 inside") == "uses *** inside"
    assert redact("storage", "postgresql://me:hunter22@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    assert redact("optimizer.lr", "5e-06") == "5e-06"


def test_flat_params_are_leaves_with_dotted_keys(make_cfg):
    params = flat_params(make_cfg())
    assert params["optimizer.lr"] == str(make_cfg().optimizer.lr)
    assert params["model.name"] == "tiny" and params["prior.weight"] == "1.0"
    assert json.loads(params["eval.seeds"]) == [0]


@pytest.fixture(scope="module")
def mlflow_sweep(tmp_path_factory, cache_dir) -> Path:
    """A 2-trial tiny sweep logging to CSV, MLflow and W&B (offline) with secrets planted in its environment."""
    tmp_path = tmp_path_factory.mktemp("mlflow_sweep")
    result = run_cli(
        "dbexp.train",
        "--multirun",
        *SWEEP,
        "logger=[csv,mlflow,wandb]",
        f"paths.cache_dir={cache_dir}",
        "prior.weight=choice(0.5, 1.5)",
        cwd=tmp_path,
        env={**SECRETS, "WANDB_MODE": "offline", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MLflow parent run" in result.stdout + result.stderr
    return tmp_path


@pytest.mark.slow
def test_a_sweep_is_a_parent_run_with_a_child_per_trial_in_mlflow(mlflow_sweep):
    tmp_path = mlflow_sweep
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("debug")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dbexp.sweep_parent") == "true"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    assert sorted(r.data.tags["optuna.trial_number"] for r in children) == ["0", "1"]
    assert {r.data.tags["optuna.state"] for r in children} == {"COMPLETE"}
    assert sorted(r.data.params["prior.weight"] for r in children) == ["0.5", "1.5"]
    assert {r.info.run_name for r in children} == {"trial 0", "trial 1"}
    for child in children:
        tags, metrics = child.data.tags, child.data.metrics
        assert tags["dbexp.version"] and len(tags["dbexp.dataset_fingerprint"]) == 16
        assert tags["lib.torch"].startswith("2.") and tags["lib.diffusers"] and "dbexp.git_commit" in tags
        assert {"train/loss", "eval/score", "eval/dino", "eval/clip_t"} <= metrics.keys()
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [0, 1, 2, 3]  # every step
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"metrics.json", "samples", "eval"} <= artifacts
        samples = {a.path for a in client.list_artifacts(child.info.run_id, "samples")}
        assert "samples/final.png" in samples
        assert child.info.status == "FINISHED"
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "best_value" in client.get_run(parent.info.run_id).data.metrics
    # W&B: the trials share one group, the sweep's name (the parent run's tag).
    files = list((tmp_path / "outputs").glob("debug/multiruns/*/*/wandb/offline-run-*/run-*.wandb"))
    groups = [next(r.run.run_group for r in wandb_records(f) if r.HasField("run")) for f in files]
    assert groups == [parent.data.tags["dbexp.sweep"]] * 2
    _assert_no_secret_in(tmp_path / "outputs")


@pytest.mark.slow
def test_wandb_runs_offline_without_a_key_and_keeps_the_history(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train",
        "debug=fast",
        "callbacks.progress_bar=null",
        "logger=wandb",
        f"paths.cache_dir={cache_dir}",
        cwd=tmp_path,
        env={"WANDB_API_KEY": "", "WANDB_MODE": "", "HOME": str(tmp_path)},  # no key anywhere
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "outputs" / "debug" / "runs").iterdir())
    note = (run_dir / "wandb_sync.txt").read_text()
    offline = next((run_dir / "wandb").glob("offline-run-*"))
    assert f"wandb sync {offline}" in note
    records = list(wandb_records(next(offline.glob("run-*.wandb"))))
    history = [
        {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    losses = [float(h["train/loss"]) for h in history if "train/loss" in h]
    assert len(losses) == 4  # every training step
    images = {p.name.split("_")[0] for p in (offline / "files" / "media" / "images").rglob("*.png")}
    assert "samples" in images  # sample grids as images
    assert (offline / "files" / "metrics.json").is_file()


@pytest.mark.slow
def test_wandb_offline_when_forced_never_writes_the_key(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train",
        "debug=fast",
        "callbacks.progress_bar=null",
        "logger=[csv,tensorboard,wandb,mlflow]",
        f"paths.cache_dir={cache_dir}",
        cwd=tmp_path,
        env={**SECRETS, "WANDB_MODE": "offline", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "outputs" / "debug" / "runs").iterdir())
    assert (run_dir / "csv" / "metrics.csv").is_file() and next((run_dir / "tensorboard").glob("events.*"))
    _assert_no_secret_in(tmp_path / "outputs")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["sweep folder", "experiment name"])
def test_the_compare_report_renders_in_a_browser(mlflow_sweep, source, browser, tmp_path):
    from dbexp.compare import main

    sweep = next((mlflow_sweep / "outputs" / "debug" / "multiruns").iterdir())
    if source == "sweep folder":
        main([str(sweep), "--out", str(tmp_path / "report")])
    else:
        uri = f"sqlite:///{mlflow_sweep / 'outputs' / 'mlflow.db'}"
        main(["debug", "--tracking-uri", uri, "--out", str(tmp_path / "report")])
    report = tmp_path / "report" / "report.html"
    assert {"parallel_coordinates.png", "curves.png"} <= {p.name for p in report.parent.glob("*.png")}
    browser.get(report.as_uri())
    rows = browser.find_elements("css selector", "table.runs tbody tr")
    assert len(rows) == 2 and len(browser.find_elements("css selector", "table.runs tr.best")) == 1
    samples = browser.find_elements("css selector", "table.samples td img")
    assert len(samples) == 2 * 4  # 2 runs × (4 sample prompts × 1 seed of debug=fast)
    figures = browser.find_elements("css selector", "figure img")
    assert len(figures) == 2  # parallel coordinates and curves (single objective: no Pareto plot)
    loaded = browser.execute_script(
        "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
    )
    assert loaded == len(samples) + len(figures)  # every picture decodes
    assert "trial 0" in browser.page_source and "trial 1" in browser.page_source


def _serve(target: str, *variables: str):
    """``make <target> VAR=…`` in its own process group; the caller kills the group. ``-o``: the venv stamp is
    not remade, as it would be (a new venv under the running suite) where the lock is newer than the stamp."""
    import subprocess

    from tests.conftest import REPO

    return subprocess.Popen(
        ["make", "-C", str(REPO), "-o", ".venv/.installed", target, *variables],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _get(url: str, deadline_s: float = 90) -> str:
    import time
    import urllib.request

    deadline = time.time() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_dashboard_serves_the_mlflow_store(mlflow_sweep):
    import os
    import signal

    port = _free_port()
    server = _serve("dashboard", f"MLFLOW_DB={mlflow_sweep / 'outputs' / 'mlflow.db'}", f"PORT={port}")
    try:
        found = json.loads(_get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=50"))
        assert "debug" in {e["name"] for e in found["experiments"]}
        client = MlflowClient(f"sqlite:///{mlflow_sweep / 'outputs' / 'mlflow.db'}")
        child = next(
            r
            for r in client.search_runs([client.get_experiment_by_name("debug").experiment_id])
            if "optuna.trial_number" in r.data.tags
        )
        served = _get(f"http://127.0.0.1:{port}/get-artifact?path=metrics.json&run_uuid={child.info.run_id}")
        assert "train/loss" in json.loads(served)  # artifacts are served from the embedded store too
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_make_optuna_dashboard_serves_a_sweep_storage(tmp_path):
    import os
    import signal

    import optuna

    study = optuna.create_study(study_name="served", storage=f"sqlite:///{tmp_path / 'sweep_x.db'}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    port = _free_port()
    server = _serve("optuna-dashboard", f"STORAGE={tmp_path / 'sweep_x.db'}", f"OPTUNA_PORT={port}")
    try:
        studies = json.loads(_get(f"http://127.0.0.1:{port}/api/studies"))
        assert [s["study_name"] for s in studies["study_summaries"]] == ["served"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_an_mlflow_run_leaves_the_environment_as_it_found_it(tmp_path, cache_dir, monkeypatch):
    """MLflow's set_tracking_uri writes $MLFLOW_TRACKING_URI: a second run in the same process (or a
    process it starts) must still log into its own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("a", "b"):
        run(compose_train(tmp_path / name, cache_dir, *FAST, "logger=mlflow", "eval.final=false"))
        assert "MLFLOW_TRACKING_URI" not in os.environ
        experiments = MlflowClient(f"sqlite:///{tmp_path / name / 'mlflow.db'}").search_experiments()
        assert any(e.name == "train" for e in experiments)
