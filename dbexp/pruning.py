"""Pruning of sweep trials: each in-training evaluation reports the objective to the trial; when the
sweep's pruner says so, training stops after that step and the run ends as a pruned trial.

optuna-integration's ``PyTorchLightningPruningCallback`` reports at validation ends; DreamBooth has
no validation loop — its in-training evaluation runs after a training step (``EvalMetricsCallback``),
so this callback reports there.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import lightning as L
import optuna
from omegaconf import DictConfig

from dbexp import metric_suites

log = logging.getLogger(__name__)


def pruning_metric(cfg: DictConfig) -> str:
    """``pruning.metric``, or the first ``optimized_metric``."""
    if cfg.pruning.metric:
        return str(cfg.pruning.metric)
    names = cfg.optimized_metric
    return str(names if isinstance(names, str) else names[0])


class Signal(NamedTuple):
    """One value a trial reports: ``metric`` × ``sign`` every ``every`` steps, before step ``until`` (None: to
    the end)."""

    metric: str
    every: int
    sign: float
    until: int | None = None


def pruning_signals(cfg: DictConfig, study_direction: str) -> list[Signal]:
    """What the trial reports, in step order: ``pruning.early_metric`` before ``pruning.early_until`` when set,
    then the pruning metric; a signal the run does not measure during training is left out."""
    metric = pruning_metric(cfg)
    stages = [(str(cfg.pruning.early_metric), int(cfg.pruning.early_until))] if cfg.pruning.early_metric else []
    stages.append((metric, None))
    signals = [Signal(m, report_every(cfg, m), report_sign(m, study_direction), until) for m, until in stages]
    return [s for s in signals if s.every]


def report_every(cfg: DictConfig, metric: str) -> int:
    """How often the run measures ``metric`` during training (0: never)."""
    if metric.startswith("val/"):
        return int(cfg.eval.val_every_n_steps)
    if metric.startswith("train/"):
        return int(cfg.trainer.get("log_every_n_steps", 50))
    return int(cfg.eval.metrics_every_n_steps)


def report_sign(metric: str, study_direction: str) -> float:
    """+1, or −1 for a metric better the other way than the study (a loss, in a study that maximizes):
    Optuna's pruners compare reported values in the study's direction."""
    better = metric_suites.direction(metric)
    return -1.0 if better is not None and better != study_direction else 1.0


class TrialPruned(optuna.TrialPruned):
    """Raised by a run its sweep pruned; the sweeper marks the trial PRUNED."""


class PruningCallback(L.Callback):
    """Reports the signal of the step (× its sign; after the in-training evaluation or validation, which must come
    first in the callback list) and stops training when the trial should be pruned — never at the last step:
    stopping there saves no training and would throw away a finished trial's evaluation."""

    def __init__(self, trial: optuna.Trial, signals: list[Signal]) -> None:
        self.trial, self.signals = trial, signals
        self.pruned_at: int | None = None
        self.metric: str | None = None  # what was last reported
        self.reported: float | None = None
        self._last_step: int | None = None

    def signal_at(self, step: int) -> Signal | None:
        """The signal the trial reports at ``step`` (None: nothing is reported there)."""
        signal = next((s for s in self.signals if s.until is None or step < s.until), None)
        return signal if signal is not None and step % signal.every == 0 else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        signal = self.signal_at(step)
        if signal is None or step == self._last_step:
            return
        self._last_step = step
        prune = False
        if trainer.is_global_zero:  # the evaluation runs on rank 0 only
            value = trainer.callback_metrics.get(signal.metric)
            if value is not None and math.isfinite(float(value)):
                self.metric, self.reported = signal.metric, float(value)
                self.trial.report(signal.sign * self.reported, step)
                prune = step < trainer.max_steps and self.trial.should_prune()
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned_at = step
            trainer.should_stop = True
            log.info("trial %d pruned at step %d (%s=%s)", self.trial.number, step, self.metric, self.reported)

    def error(self) -> TrialPruned:
        return TrialPruned(f"pruned at step {self.pruned_at}: {self.metric}={self.reported}")
