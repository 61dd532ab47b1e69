"""Sweeps that fit a disk: a finished trial drops what only resuming needs, and hydra.sweeper.keep keeps
exports and trained weights for the best trials (or the front) only (dbexp.trial_retention,
dbexp.checkpointing.release_finished)."""

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution

from dbexp.checkpointing import release_finished
from dbexp.trial_retention import kept
from tests.conftest import run_cli


def _study(values: list, directions: list[str]) -> optuna.Study:
    study = optuna.create_study(directions=directions)
    for v in values:
        study.add_trial(
            optuna.trial.create_trial(params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)}, values=v)
        )
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    return study


def test_kept_trials_are_the_best_k_or_the_front():
    study = _study([[0.3], [0.9], [0.5], [0.7]], ["maximize"])
    assert kept(study, "best", 2) == {1, 3}
    assert kept(study, "front", 2) == {1}
    assert kept(study, "all", 2) == {0, 1, 2, 3}  # complete trials only: the pruned one has nothing to keep
    assert kept(_study([[0.3], [0.9]], ["minimize"]), "best", 1) == {0}
    pareto = _study([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4]], ["maximize", "maximize"])
    assert kept(pareto, "front", 1) == {0, 1, 2}
    assert kept(pareto, "best", 1) == {0}  # several objectives: the first decides


def _checkpoint(path: Path, step: int) -> None:
    torch.save(
        {
            "state_dict": {"w": torch.full((4,), float(step))},
            "global_step": step,
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(1000)}}}],
        },
        path,
    )


def test_a_finished_trial_keeps_weights_only_where_nothing_else_holds_them(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    _checkpoint(folder / "step_000002.ckpt", 2)
    _checkpoint(folder / "step_000004.ckpt", 4)
    (folder / "last.ckpt").symlink_to("step_000004.ckpt")
    assert release_finished(folder, weights_elsewhere=False) > 0
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step_000004.ckpt"]
    state = torch.load(folder / "last.ckpt", weights_only=True)
    assert "optimizer_states" not in state and state["global_step"] == 4
    torch.testing.assert_close(state["state_dict"]["w"], torch.full((4,), 4.0))
    assert release_finished(folder, weights_elsewhere=True) > 0 and not folder.exists()
    assert release_finished(folder, weights_elsewhere=True) == 0


@pytest.mark.slow
def test_a_sweep_keeps_exports_and_trained_weights_of_its_best_trial_only(tmp_path, cache_dir):
    trained_cache = tmp_path / "cache"  # its own: the trials' entries are counted
    result = run_cli(
        "dbexp.train",
        "--multirun",
        "debug=fast",
        "model=tiny",
        "callbacks.progress_bar=null",
        "eval.metrics=none",
        "reuse_trained=true",
        f"paths.cache_dir={trained_cache}",
        "hydra/sweeper=dbexp_optuna",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=keep",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.keep=best",
        "hydra.sweeper.keep_best=1",
        "optimizer.lr=tag(log, interval(1e-6, 1e-3))",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="keep", storage=f"sqlite:///{tmp_path / 'study.db'}")
    best = study.best_trial.number
    entries = set()
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())  # every trial keeps its metrics and samples
        assert (run_dir / "samples").is_dir() and not (run_dir / "checkpoints").exists()
        entry = Path(metrics["trained_weights"]["entry"])
        entries.add(entry)
        assert metrics["trained_weights"]["stored_here"]
        kept_here = trial.number == best
        assert (run_dir / "pipeline" / "model_index.json").is_file() == kept_here, trial.number
        assert entry.is_dir() == kept_here, trial.number
    assert len(entries) == 3
    assert [p.name for p in (trained_cache / "trained").iterdir()] == [e.name for e in entries if e.is_dir()]
