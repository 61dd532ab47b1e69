"""Several processes on one machine: sweep workers sharing a sqlite or journal storage (the PostgreSQL ones are
in test_postgresql.py), and DDP training on two CPU processes (gloo; across two SLURM nodes: test_slurm.py).
Each starts its own Python processes for tens of seconds, so they run with the other engines
(``make test-engines``), not in ``make test``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import torch

from tests.conftest import run_cli
from tests.test_cli import FAST as RUN_FAST
from tests.test_sweeper import FAST


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_on_one_storage_share_the_study(tmp_path, cache_dir, kind):
    import os
    import subprocess
    import sys

    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    args = [
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=4",
        "hydra/sweeper/sampler=random",
        "optimizer.lr=tag(log, interval(1e-6, 1e-3))",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # two workers, two cores
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
    from dbexp.sweep_trial import open_storage

    trials = optuna.load_study(study_name="shared", storage=open_storage(storage)).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4  # exactly n_trials, none lost, none extra
    assert len({t.params["optimizer.lr"] for t in done}) == 4  # distinct trials
    assert all(t.user_attrs.get("abandoned") for t in trials if t.state != optuna.trial.TrialState.COMPLETE)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_ddp_on_two_cpu_processes(tmp_path, cache_dir, finetune):
    result = run_cli(
        "dbexp.train",
        "trainer=ddp",
        "trainer.devices=2",
        f"finetune.method={finetune}",
        f"paths.cache_dir={cache_dir}",
        *RUN_FAST,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr and "Starting with 2 processes" in result.stderr
    run_dir = Path(re.findall(r"^run dir: (\S+)", result.stdout, flags=re.M)[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["train/loss"] > 0
    exported = "model_index.json" if finetune == "full" else "pytorch_lora_weights.safetensors"
    assert (run_dir / "pipeline" / exported).is_file()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all((".lora_" in k) == (finetune == "lora") for k in ckpt["state_dict"])
