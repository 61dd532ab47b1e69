"""The best step instead of the last (``objective_at=best``): the trained weights of the step whose in-training
measurement of the objective was best are what the run evaluates, exports and caches.

The objective's first metric (``optimized_metric``, or its first name) is measured during training by the
in-training evaluation (``eval/*``, every ``eval.metrics_every_n_steps``) or the validation loss (``val/*``,
every ``eval.val_every_n_steps``); a training loss (``train/*``, one batch's) picks no step, nor does a run
that does not measure the objective during training: their weights are the last step's. After each
measurement, a better value (in the metric's direction, from ``dbexp.metric_suites``) makes that step the
best: a CPU copy of the trained weights is kept (a full SD1.5 UNet: 3.4 GB of host memory; LoRA:
megabytes). Several objectives: the step the first one prefers — it is always on the trial's own Pareto
front over its steps; ties go to the next objective, then to the earlier step. Step 0 (the base model) is
not a candidate. A resumed run keeps the best of the steps it ran itself. When training does not measure the
objective, an early-stopping callback's signal picks the step (``callbacks=early_stopping``).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

from dbexp import metric_suites
from dbexp.errors import UserInputError

log = logging.getLogger(__name__)
OBJECTIVE_AT = ("best", "last")


def check_early_stopping(callbacks_cfg) -> None:
    """An early-stopping callback whose signal is never measured: one line, before anything loads."""
    for name, node in (callbacks_cfg or {}).items():
        if node and node.get("_target_") == f"{__name__}.EarlyStopping" and int(node.get("every_n_steps", 0)) < 1:
            raise UserInputError(
                f"callbacks.{name}: {node.get('monitor')} is never measured during training "
                f"(every_n_steps={node.get('every_n_steps')}); set eval.val_every_n_steps=N for val/*, or "
                f"eval.metrics_every_n_steps=N and callbacks.{name}.every_n_steps=N for eval/*"
            )


class BestStepCallback(L.Callback):
    """Keeps the trained weights of the best step by ``metrics`` (measured every ``every_n_steps``; must come
    after the callbacks that measure them)."""

    def __init__(self, metrics: list[str], every_n_steps: int) -> None:
        self.metrics, self.every = metrics, every_n_steps
        self.signs = [-1.0 if metric_suites.direction(m) == metric_suites.MINIMIZE else 1.0 for m in metrics]
        self.best_step: int | None = None
        self.best_key: tuple[float, ...] | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._last_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every or step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        values = [trainer.callback_metrics.get(m) for m in self.metrics]
        if values[0] is None:
            return
        key = tuple(s * float(v) if v is not None else float("-inf") for s, v in zip(self.signs, values, strict=True))
        if self.best_key is None or key > self.best_key:
            self.best_step, self.best_key = step, key
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.trained_state_dict().items()}
            log.info("step %d is the best so far (%s=%.4g)", step, self.metrics[0], float(values[0]))

    def restore(self, module) -> int | None:
        """Load the best step's weights into ``module``; the best step (None: nothing was measured)."""
        if self.best_weights is not None:
            missing, unexpected = module.load_state_dict(self.best_weights, strict=False)
            assert not unexpected, unexpected
        return self.best_step


class EarlyStopping(LightningEarlyStopping):
    """Lightning's early stopping, checked after each in-training measurement of ``monitor`` (every
    ``every_n_steps``: DreamBooth has no validation loop, whose end Lightning's checks at), its mode from the
    metric registry. Training stops when ``monitor`` has not improved by ``min_delta`` for ``patience``
    measurements; with ``objective_at=best`` the run's weights are then its best step's."""

    def __init__(self, monitor: str, every_n_steps: int, patience: int = 3, min_delta: float = 0.0, **kwargs) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: the steps between measurements of {monitor}")
        direction = metric_suites.direction(monitor)
        mode = "min" if direction == metric_suites.MINIMIZE else "max"
        super().__init__(
            monitor=monitor, patience=patience, min_delta=min_delta, mode=mode, check_on_train_epoch_end=False, **kwargs
        )
        self.every = every_n_steps
        self._last_step: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        return None  # no validation loop: checked after the measurements instead

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every or step == self._last_step:
            return
        self._last_step = step
        stop, reason = False, None
        if trainer.is_global_zero:  # the measurements run on rank 0 only; its decision goes to every rank
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                stop, reason = self._evaluate_stopping_criteria(value.squeeze())  # Lightning's own criteria
        if trainer.world_size > 1:
            stop = trainer.strategy.broadcast(stop, src=0)
        if stop:
            trainer.should_stop = True
            log.info("early stopping at step %d: %s", step, reason or "no improvement")
