"""DreamBooth's effects in the toy world, (d) of tests/test_toy_behaviour.py: a short sweep over
lr × prior weight × guidance finds a trial clearly better than the worst (a loss that learns nothing fails it).
Margins from measurement: docs/toy-world.md."""

from __future__ import annotations

import optuna

from tests.conftest import run_cli


def test_d_a_short_sweep_finds_a_trial_clearly_better_than_the_worst(tmp_path, cache_dir):
    storage = f"sqlite:///{tmp_path / 'toy.db'}"
    result = run_cli(
        "dbexp.train",
        "--multirun",
        "--config-name=toy_lr_prior_guidance",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=3",
        "hydra/sweeper/pruner=none",
        "eval.metrics_every_n_steps=0",
        "eval.val_every_n_steps=0",
        "pruning.metric=null",  # no pruner, no in-training measurement: only the final evaluation matters here
        "eval.images_per_prompt=4",  # half the preset's final evaluation: enough to tell the trials apart
        "eval.pres_images=8",
        "callbacks.progress_bar=null",
        "export.enabled=false",
        f"paths.cache_dir={cache_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = [t.value for t in optuna.load_study(study_name="toy_lr_prior_guidance", storage=storage).trials]
    assert len(values) == 3 and max(values) - min(values) >= 0.25  # measured 1.245 - 0.880
