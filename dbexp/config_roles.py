"""What each config key affects: the one table that resume, trained-weights reuse and the comparison
report read.

* ``training`` — what training computes: two runs that differ here end with different weights.
* ``length`` — how long training goes (``trainer.max_steps``): different weights, yet a run may resume a
  shorter one and train on (``ckpt_path=last``).
* ``evaluation`` — sampling and evaluation only: the same weights, other pictures and metrics.
* ``place`` — where things go (folders, names, loggers).
* ``nothing`` — neither the weights nor the results (speed, memory, console output, how to start).

A key takes the role of its longest dotted prefix in :data:`ROLES`; a key that is not there is
``training`` (a new key is assumed to matter until it is listed). Callbacks are judged by their
``_target_``: those that only watch are ``nothing``; others (early stopping) are ``training``.

Derived here: :func:`resume_setting` (what ``ckpt_path=last`` matches), :func:`training_setting`
(what the trained-weights key hashes) and :func:`shows_in_report` (the report's varied parameters).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

TRAINING, LENGTH, EVALUATION, PLACE, NOTHING = "training", "length", "evaluation", "place", "nothing"

ROLES: dict[str, str] = {
    "task_name": PLACE,
    "paths": PLACE,
    "logger": PLACE,
    "hydra": PLACE,
    "export": PLACE,  # whether and how <run>/pipeline/ is written: the same weights
    "model.export_dtype": PLACE,
    "trainer.default_root_dir": PLACE,
    "eval": EVALUATION,
    "model.eval_metrics": EVALUATION,  # which metric suite scores the model (eval.metrics=auto)
    "optimized_metric": EVALUATION,  # which metric the run returns
    "pruning": EVALUATION,  # which value a sweep trial reports to the pruner
    "trainer.max_steps": LENGTH,
    "ckpt_path": NOTHING,  # a resumed run ends bit-identical to an uninterrupted one (test_checkpointing)
    "reuse_trained": NOTHING,
    "data.num_workers": NOTHING,
    "memory.gradient_checkpointing": NOTHING,  # recomputes the same activations
    "memory.set_to_none": NOTHING,
    "memory.offload_frozen": NOTHING,  # where frozen parts wait, not what they compute
    "trainer.enable_progress_bar": NOTHING,
    "trainer.enable_model_summary": NOTHING,
    "trainer.log_every_n_steps": NOTHING,
    "trainer.profiler": NOTHING,
}
#: Callbacks that only watch (checkpoint files, progress bars, summaries); any other callback is ``training``.
WATCHING_CALLBACKS = (
    "dbexp.checkpointing.StepCheckpoint",
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.TQDMProgressBar",
    "lightning.pytorch.callbacks.RichProgressBar",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    "lightning.pytorch.callbacks.ModelSummary",
    "lightning.pytorch.callbacks.RichModelSummary",
    "lightning.pytorch.callbacks.DeviceStatsMonitor",
    "dbexp.bench_harness.StepTimer",
)


def role(key: str) -> str:
    """The role of a dotted config key (``callbacks.*`` by the callback's target: see :func:`callback_role`)."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        found = ROLES.get(".".join(parts[:n]))
        if found is not None:
            return found
    return TRAINING


def callback_role(node: Any) -> str:
    if not isinstance(node, dict) or not node.get("_target_"):
        return NOTHING  # a disabled callback (null)
    return NOTHING if node["_target_"] in WATCHING_CALLBACKS else TRAINING


def _keep(tree: dict[str, Any], roles: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    """The part of ``tree`` whose keys have one of ``roles``."""
    kept: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if key == "callbacks":
            kept[name] = {n: c for n, c in (value or {}).items() if callback_role(c) in roles}
        elif isinstance(value, dict) and any(k.startswith(f"{key}.") for k in ROLES):
            kept[name] = _keep(value, roles, f"{key}.")  # finer rules inside: decide key by key
        elif role(key) in roles:
            kept[name] = value
    return kept


def _container(cfg: DictConfig | dict, resolve: bool) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=resolve)
    return dict(cfg)


def training_setting(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved config reduced to what changes the trained weights (``training`` and ``length``):
    two runs with the same value (and the same base model and photos) train the same weights."""
    return _keep(_container(cfg, resolve=True), (TRAINING, LENGTH))


def resume_setting(cfg: DictConfig | dict) -> dict[str, Any]:
    """The config as written (unresolved: a saved run's ``.hydra/config.yaml`` compares without Hydra,
    and run folders differ anyway) reduced to the ``training`` keys: ``ckpt_path=last`` resumes a run
    whose value is the same."""
    return _keep(_container(cfg, resolve=False), (TRAINING,))


def shows_in_report(key: str) -> bool:
    """A parameter the comparison report shows when it varies: not where things went, not what changes nothing.
    Callbacks are judged by their target, which a flat parameter name does not carry: the report leaves them out."""
    if key == "callbacks" or key.startswith("callbacks."):
        return False
    return role(key) not in (PLACE, NOTHING)
