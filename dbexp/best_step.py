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
not a candidate. A resumed run keeps the best of the steps it ran itself.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from dbexp import metric_suites

log = logging.getLogger(__name__)
OBJECTIVE_AT = ("best", "last")


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
