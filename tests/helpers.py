"""Test-only pieces that configs can name by ``_target_``."""

import lightning as L


class CrashAtStep(L.Callback):
    """Simulates a crash (e.g. a killed job) once training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")
