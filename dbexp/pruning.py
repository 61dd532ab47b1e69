"""Pruning of sweep trials: each in-training evaluation reports the objective to the trial; when the
sweep's pruner says so, training stops after that step and the run ends as a pruned trial.

optuna-integration's ``PyTorchLightningPruningCallback`` reports at validation ends; DreamBooth has
no validation loop — its in-training evaluation runs after a training step (``EvalMetricsCallback``),
so this callback reports there.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import optuna

log = logging.getLogger(__name__)


class TrialPruned(optuna.TrialPruned):
    """Raised by a run its sweep pruned; the sweeper marks the trial PRUNED."""


class PruningCallback(L.Callback):
    """Reports ``metric`` every ``every_n_steps`` (after the in-training evaluation, which must come first
    in the callback list) and stops training when the trial should be pruned."""

    def __init__(self, trial: optuna.Trial, metric: str, every_n_steps: int) -> None:
        self.trial, self.metric, self.every = trial, metric, every_n_steps
        self.pruned_at: int | None = None
        self.reported: float | None = None
        self._last_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every or step == self._last_step:
            return
        self._last_step = step
        prune = False
        if trainer.is_global_zero:  # the evaluation runs on rank 0 only
            value = trainer.callback_metrics.get(self.metric)
            if value is not None and math.isfinite(float(value)):
                self.reported = float(value)
                self.trial.report(self.reported, step)
                prune = self.trial.should_prune()
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned_at = step
            trainer.should_stop = True
            log.info("trial %d pruned at step %d (%s=%s)", self.trial.number, step, self.metric, self.reported)

    def error(self) -> TrialPruned:
        return TrialPruned(f"pruned at step {self.pruned_at}: {self.metric}={self.reported}")
