"""``python -m dbexp.train``: one DreamBooth run, as a table of contents.

compose (Hydra, schemas in ``dbexp.config``) → plan (every check, before anything loads) → load the base
model → fit, or reuse weights trained the same way → evaluate → export → return the objective.
Each line below is one stage in ``dbexp.run``, which calls the module that owns its config group
(``docs/architecture.md`` has the map). The stages (torch, diffusers, Lightning: ~10 s to import) load when a
run starts, so ``--help``, ``--cfg job`` and a wrong key answer in a second.
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from dbexp.config import prepare_command_line
from dbexp.console import quiet_known_noise
from dbexp.errors import exit_on_user_error


def run(cfg: DictConfig) -> dict[str, Any]:
    """One DreamBooth run; returns the final metrics (also written to ``<run dir>/metrics.json``)."""
    from dbexp.run import Stages, plan_run, start
    from dbexp.tracking import open_loggers

    quiet_known_noise()
    plan = plan_run(cfg)  # configs, folders, photos, checkpoint: one clear line before anything heavy
    start(cfg, plan)  # the run folder announced, the config saved, the seeds set
    with open_loggers(cfg.logger, plan.run_dir) as loggers:
        stages = Stages(cfg, plan, loggers)  # the Trainer and its callbacks
        parts = stages.load_base_model()
        baseline = stages.evaluate_base_model(parts)  # eval.baseline: where fine-tuning starts from
        trained = stages.reuse_trained(parts) or stages.fit(parts)
        if stages.is_global_zero:  # other DDP processes only train
            if trained.pruned is None:
                stages.store_trained(trained)
                trained.metrics |= stages.evaluate_trained(trained, baseline)
                stages.export(trained)
            stages.write_metrics(trained.metrics)
            stages.release_checkpoints(trained)  # a sweep trial: what only resuming needs goes
        if trained.pruned is not None:
            raise trained.pruned.error()  # the sweeper records the trial as pruned
    return trained.metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    from dbexp.run import objective

    with exit_on_user_error():
        return objective(run(cfg), cfg.optimized_metric)


def cli() -> None:
    """``dbexp-train``, also ``python -m dbexp.train``."""
    sys.argv = prepare_command_line(sys.argv)
    main()


if __name__ == "__main__":
    cli()
