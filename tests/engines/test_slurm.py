"""SLURM for real (``slurm_cluster``: munged, slurmdbd, slurmctld and slurmd on this machine, see
``slurm_cluster.py``): a sweep whose trials are SLURM jobs (``hydra/launcher=slurm_cpu``), a trial whose job is
cancelled, workers of one study as a job array, and Lightning's DDP across two SLURM nodes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch
from omegaconf import OmegaConf
from optuna.trial import TrialState

from dbexp.sweep_trial import open_storage
from tests.conftest import run_cli
from tests.engines.servers import free_port
from tests.test_sweeper import FAST

#: ``sbatch --array=0-1 sweep.sbatch <preset and overrides>``: workers of one study, one per array task
#: (docs/sweeps.md). Every worker runs the same sweep command on the same storage; ``hydra.sweep.dir`` puts all
#: their trials in one folder (``<n>/``: trial n, whichever worker ran it).
SWEEP_ARRAY = """\
#!/bin/bash
#SBATCH --job-name=dbexp-sweep
#SBATCH --array=0-1
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=01:00:00
python -m dbexp.train --multirun hydra.sweep.dir=outputs/sweeps/${SLURM_ARRAY_JOB_ID} "$@"
"""

#: ``sbatch ddp.sbatch <overrides>``: one training on two nodes, one process each (docs/memory-and-multi-gpu.md).
#: srun starts the processes; Lightning's SLURM environment takes ranks and world size from SLURM and checks
#: ``trainer.num_nodes`` and ``trainer.devices`` against ``--nodes`` and ``--ntasks-per-node``. Both ranks get
#: the same run folder (each would otherwise name its own after the second it started).
DDP_TWO_NODES = """\
#!/bin/bash
#SBATCH --job-name=dbexp-ddp
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=01:00:00
srun python -m dbexp.train trainer=ddp trainer.num_nodes=2 trainer.devices=1 \\
    hydra.run.dir=outputs/slurm/${SLURM_JOB_ID} "$@"
"""


def _env(cluster) -> dict[str, str]:
    """A shell on the cluster with dbexp's environment active: its python first on PATH, one torch thread
    per CPU that SLURM gives a task (task/none does not pin them)."""
    return {
        "SLURM_CONF": cluster.env["SLURM_CONF"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }


def _sweep_args(tmp_path, cache_dir, study: str, *more: str) -> list[str]:
    return [
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        f"hydra.sweeper.study_name={study}",
        "hydra/sweeper/sampler=random",
        "optimizer.lr=tag(log, interval(1e-6, 1e-3))",
        "hydra/launcher=slurm_cpu",
        *more,
    ]


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(storage)).trials


def test_a_sweep_runs_each_trial_as_a_slurm_job(slurm_cluster, tmp_path, cache_dir):
    """``hydra/launcher=slurm_cpu``: the batch of two trials is one job array; each trial runs in its SLURM job
    (its Hydra job id is the job's id), in ``outputs/<task>/multiruns/<time>/<trial>/``, with SLURM's logs in
    ``.submitit/<job id>/`` of the sweep folder; the study ends with n_trials COMPLETE trials."""
    args = _sweep_args(tmp_path, cache_dir, "launcher", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    result = run_cli("dbexp.train", "--multirun", *args, cwd=tmp_path, env=_env(slurm_cluster))
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _trials(f"sqlite:///{tmp_path / 'study.db'}", "launcher")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    (sweep,) = (tmp_path / "outputs" / "debug" / "multiruns").iterdir()
    assert (sweep / "optimization_results.yaml").is_file()
    jobs = set()
    for trial in trials:
        folder = sweep / str(trial.number)
        assert json.loads((folder / "metrics.json").read_text())["step"] == 4
        job = str(OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra.job.id)  # <array job>_<task>
        log = (sweep / ".submitit" / job / f"{job}_0_log.out").read_text()
        assert f"run dir: {folder.resolve()}" in log and "Job completed successfully" in log
        jobs.add(job)
    assert len({job.split("_")[0] for job in jobs}) == 1  # one array
    assert all(slurm_cluster.wait_for(job) == {job: "COMPLETED"} for job in jobs)


def test_a_cancelled_trial_job_is_abandoned_and_the_same_command_completes_the_study(
    slurm_cluster, tmp_path, cache_dir
):
    """``scancel`` of the job of a trial in training: the sweep stops with SLURM's state, the trial is FAIL
    and ``abandoned`` with that reason (its ``fail_reason``); the same command again runs its slot and the study
    ends with n_trials COMPLETE trials."""
    args = _sweep_args(tmp_path, cache_dir, "cancel", "hydra.sweeper.n_trials=1", "trainer.max_steps=20")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), **_env(slurm_cluster)}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "dbexp.train", "--multirun", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and sweep.poll() is None:
            if list((tmp_path / "outputs").glob("debug/multiruns/*/0/checkpoints/step_*.ckpt")):
                break  # trial 0 is in training: its step-2 checkpoint is written
            time.sleep(0.2)
        assert sweep.poll() is None, "the sweep ended before its trial was in training"
        (job,) = slurm_cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
        assert slurm_cluster.run("scancel", job).returncode == 0
        _, stderr = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode != 0 and "CANCELLED" in stderr, stderr[-3000:]
    assert slurm_cluster.wait_for(job)[job].startswith("CANCELLED")
    (left,) = _trials(storage, "cancel")
    assert left.state == TrialState.FAIL and left.user_attrs["abandoned"]
    reason = re.compile(rf"Job {job} .*has not produced any output \(state: CANCELLED", re.S)
    assert reason.search(left.user_attrs["fail_reason"])

    again = run_cli("dbexp.train", "--multirun", *args, cwd=tmp_path, env=_env(slurm_cluster))
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _trials(storage, "cancel")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # n_trials=1 COMPLETE
    assert trials[0].user_attrs["fail_reason"] == left.user_attrs["fail_reason"]


def test_a_slurm_array_of_workers_shares_one_study(slurm_cluster, tmp_path, cache_dir):
    """``SWEEP_ARRAY``: two array tasks, each the same sweep command (trials in the worker's own process) on one
    journal file; the study ends with exactly n_trials distinct COMPLETE trials, all in one sweep folder."""
    (tmp_path / "sweep.sbatch").write_text(SWEEP_ARRAY)
    storage = f"journal:{tmp_path / 'study.journal'}"
    job = slurm_cluster.sbatch(
        "sweep.sbatch",
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=array",
        "hydra.sweeper.n_trials=2",
        "hydra/sweeper/sampler=random",
        "optimizer.lr=tag(log, interval(1e-6, 1e-3))",
        cwd=tmp_path,
        env={**_env(slurm_cluster), "HF_HOME": str(tmp_path / "hf_home")},
    )
    states = slurm_cluster.wait_for(job)
    logs = {task: (tmp_path / f"slurm-{task}.out").read_text() for task in (f"{job}_0", f"{job}_1")}
    assert states == {task: "COMPLETED" for task in logs}, {t: log[-2000:] for t, log in logs.items()}
    assert all("study array: " in log for log in logs.values())  # both workers joined it
    trials = _trials(storage, "array")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and len({t.params["optimizer.lr"] for t in done}) == 2
    assert all(t.user_attrs.get("abandoned") for t in trials if t.state != TrialState.COMPLETE)
    folders = tmp_path / "outputs" / "sweeps" / job
    assert all((folders / str(t.number) / "metrics.json").is_file() for t in done)


def _state_dict(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_ddp_across_two_slurm_nodes_trains_the_weights_of_two_processes_on_one(slurm_cluster, tmp_path, cache_dir):
    """``DDP_TWO_NODES`` on partition ``twonodes`` (this machine as nodes n1 and n2, one slurmd each):
    ``trainer=ddp trainer.num_nodes=2 trainer.devices=1``, one srun task per node, ranks and world size from
    SLURM (gloo on the CPU), ends with the same weights, bit for bit, as ``trainer=ddp trainer.devices=2``
    (two processes that Lightning starts on one machine)."""
    args = ["debug=fast", "callbacks.progress_bar=null", "eval.metrics=none", "export.enabled=false"]
    args.append(f"paths.cache_dir={cache_dir}")
    (tmp_path / "ddp.sbatch").write_text(DDP_TWO_NODES)
    # The emulated nodes' names (n1, n2) resolve nowhere: Lightning gets rank 0's address in MASTER_ADDR (on a
    # real cluster it takes the first node's name), and a free port in MASTER_PORT (else derived from the job id).
    master = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env = {**_env(slurm_cluster), "HF_HOME": str(tmp_path / "hf_home"), **master}
    job = slurm_cluster.sbatch("--partition=twonodes", "ddp.sbatch", *args, cwd=tmp_path, env=env)
    local = run_cli(  # meanwhile, the reference: the same training as two processes that Lightning starts here
        "dbexp.train",
        "trainer=ddp",
        "trainer.devices=2",
        *args,
        f"hydra.run.dir={tmp_path / 'local'}",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert local.returncode == 0, local.stderr[-3000:]
    states = slurm_cluster.wait_for(job)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert states == {job: "COMPLETED"}, log[-3000:]
    step = slurm_cluster.run("sacct", "-n", "-P", "-j", f"{job}.0", "-o", "NodeList,NTasks").stdout.split()
    assert step == ["n[1-2]|2"]  # the srun step: two tasks, on both nodes
    assert "Starting with 2 processes" in log and "SLURM auto-requeueing enabled" in log  # Lightning's SLURM env
    assert {"GLOBAL_RANK: 0, MEMBER: 1/2", "GLOBAL_RANK: 1, MEMBER: 2/2"} <= set(re.findall(r"GLOBAL_RANK.*/2", log))

    on_slurm, on_one_machine = _state_dict(tmp_path / "outputs" / "slurm" / job), _state_dict(tmp_path / "local")
    assert on_slurm.keys() == on_one_machine.keys()
    assert all(torch.equal(on_slurm[k], on_one_machine[k]) for k in on_one_machine)
