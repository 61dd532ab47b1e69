"""``python -m dbexp.train``: compose → check → instantiate → fit → export → return the objective.

Each step below is one call into the module that owns it; read this file as the table of
contents of a DreamBooth run.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from dbexp import trained_cache
from dbexp.checkpointing import AtomicCheckpointIO, resolve_ckpt_path
from dbexp.console import announce, expand_home_in_overrides, quiet_known_noise
from dbexp.datamodule import (
    DataConfig,
    DreamBoothDataModule,
    check_data_config,
    instance_prompt,
    load_subject_images,
    resolve_subject,
)
from dbexp.dreambooth_module import DreamBoothModule
from dbexp.encoding_cache import cached_latents, cached_text_embeddings
from dbexp.errors import UserInputError, exit_on_user_error, instantiate_checked
from dbexp.evaluation import (
    EvalConfig,
    EvalMetricsCallback,
    EvalPrompts,
    SampleGridCallback,
    before_after,
    check_eval_config,
    check_score,
    eval_metric_names,
    eval_prompts,
    evaluate,
    evaluate_at_scales,
    metric_suite,
    sample_prompts,
    summary_table,
)
from dbexp.export import describe_export, export_pipeline
from dbexp.lora import check_lora_targets
from dbexp.memory import MemoryConfig, check_memory_config
from dbexp.metric_models import load_metric_models, metric_model_folders
from dbexp.metric_models import release as release_metric_models
from dbexp.model_loading import ModelConfig, check_model_config, load_model
from dbexp.optimization import OptimizerConfig, check_optimizer_config
from dbexp.prior_cache import PriorConfig, check_prior_config, class_images, class_prompt, load_class_dir
from dbexp.pruning import PruningCallback
from dbexp.sampling import build_pipeline, sampler
from dbexp.tracking import check_logger_config, describe_run, log_run_files, open_loggers
from dbexp.trained_cache import training_key
from hydra_plugins.dbexp_optuna_sweeper.trial import pruning_trial

log = logging.getLogger("dbexp.train")


@dataclass
class PathsConfig:
    """Schema of ``conf/paths``: where runs and the shared cache live."""

    root_dir: str = MISSING
    log_dir: str = MISSING
    runs_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class TrainConfig:
    """Schema of ``conf/train.yaml``: typed groups fail at compose time on a wrong key or type."""

    task_name: str = "train"
    seed: int = 0
    ckpt_path: str | None = None
    optimized_metric: Any = "train/loss"  # a metric name, or a list of names (multi-objective)
    export_pipeline: bool = True
    reuse_trained: bool | None = None  # null: in sweeps only (dbexp.trained_cache)
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    prior: PriorConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    memory: MemoryConfig = MISSING
    eval: EvalConfig = MISSING
    paths: PathsConfig = MISSING
    trainer: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] | None = field(default_factory=dict)
    logger: dict[str, Any] | None = field(default_factory=dict)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@dataclass
class RunPlan:
    """Everything checked and resolved before any model loads."""

    run_dir: Path
    instance_images: list
    instance_prompt: str
    class_prompt: str | None
    class_photos: list | None  # prior.class_dir's images (else class images come from the cache)
    sample_prompts: list[str]
    metric_suite: str  # dreambench | toy | tiny | none
    eval_prompts: EvalPrompts | None
    ckpt_path: str | None
    sharded: bool = False  # FSDP: no process holds the whole model, so nothing samples during the run


def plan_run(cfg: DictConfig) -> RunPlan:
    """Check every input (configs, folders, images, checkpoint) — a clear error before anything heavy."""
    check_model_config(cfg.model)
    check_data_config(cfg.data)
    check_optimizer_config(cfg.optimizer)
    check_memory_config(cfg.memory, cfg.optimizer.name)
    check_eval_config(cfg.eval)
    check_logger_config(cfg.logger)
    if int(cfg.trainer.get("max_steps", -1)) < 1:
        raise UserInputError("trainer.max_steps must be >= 1: DreamBooth training is counted in steps")
    sharded = check_sharding(cfg)
    subject = resolve_subject(cfg.data)
    check_prior_config(cfg.prior, subject.class_noun)
    prior = cfg.prior.weight > 0
    prompt = instance_prompt(cfg.data, subject.class_noun)
    suite = metric_suite(cfg.eval, cfg.model.eval_metrics)
    check_score(cfg.eval, suite)
    if suite != "none" and not subject.class_noun:
        raise UserInputError("evaluation needs the subject's class: set data.class_noun=<noun> (or eval.metrics=none)")
    available = DreamBoothModule.metric_names(prior) + eval_metric_names(cfg.eval, suite)
    for name in _metric_list(cfg.optimized_metric):
        if name not in available:
            raise UserInputError(
                f"optimized_metric={name}: this run does not log it; available: {', '.join(available)}"
            )
    return RunPlan(
        run_dir=Path(cfg.paths.output_dir),
        instance_images=load_subject_images(subject),
        instance_prompt=prompt,
        class_prompt=class_prompt(cfg.prior, subject.class_noun) if prior else None,
        class_photos=load_class_dir(cfg.prior) if prior else None,
        sample_prompts=sample_prompts(cfg.eval, cfg.data.token, subject.class_noun),
        metric_suite=suite,
        eval_prompts=eval_prompts(cfg.eval, cfg.data.token, subject.class_noun) if suite != "none" else None,
        ckpt_path=resolve_ckpt_path(cfg.ckpt_path, cfg, cfg.paths.runs_dir),
        sharded=sharded,
    )


def check_sharding(cfg: DictConfig) -> bool:
    """``trainer=fsdp`` shards the weights over the GPUs: sampling, evaluation and export, which need the
    whole model in one process, must be off (the checkpoint holds the gathered weights)."""
    strategy = cfg.trainer.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    if "fsdp" not in name.lower():
        return False
    needs_whole_model = {
        "eval.every_n_steps=0": cfg.eval.every_n_steps,
        "eval.at_start=false": cfg.eval.at_start,
        "eval.metrics_every_n_steps=0": cfg.eval.metrics_every_n_steps,
        "eval.final=false": cfg.eval.final,
        "export_pipeline=false": cfg.export_pipeline,
        "reuse_trained=false": cfg.reuse_trained,
    }
    wanted = [fix for fix, on in needs_whole_model.items() if on]
    if wanted:
        raise UserInputError(
            "trainer=fsdp shards the model over the GPUs, so this run cannot sample, evaluate or export it: "
            f"add {' '.join(wanted)} (checkpoints/last.ckpt holds the gathered trained weights); "
            "a model that fits one GPU trains faster with trainer=ddp"
        )
    return True


def run(cfg: DictConfig) -> dict[str, float]:
    """One DreamBooth run; returns the final metrics (also written to ``<run dir>/metrics.json``)."""
    quiet_known_noise()
    plan = plan_run(cfg)
    announce(f"run dir: {plan.run_dir}")
    save_config(cfg, plan.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # Called with a device; the models load once per process.
    metric_models = partial(load_metric_models, plan.metric_suite, cfg.eval, cfg.paths.cache_dir)
    with open_loggers(cfg.logger, plan.run_dir) as loggers:
        describe_run(loggers, cfg, plan.instance_images)
        callbacks = make_callbacks(cfg, plan, metric_models)
        trainer: L.Trainer = instantiate_checked(
            cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
        )

        parts = load_model(cfg.model, cfg.paths.cache_dir)
        model = cfg.model  # LoRA targets that name no layer: one line before class images and training
        check_lora_targets(model.finetune, model.lora, parts.unet, parts.text_encoder, model.train_text_encoder)
        if plan.eval_prompts is not None:  # the metric models' weights must be there before hours of work
            metric_model_folders(plan.metric_suite, cfg.eval, cfg.paths.cache_dir)
        baseline = None
        if plan.eval_prompts is not None and cfg.eval.final and cfg.eval.baseline and trainer.is_global_zero:
            baseline = baseline_evaluation(cfg, plan, parts, metric_models, trainer.strategy.root_device)
        key = training_key(cfg, parts.identity, plan.instance_images, plan.class_photos)
        reuse = trained_cache.enabled(cfg) and not plan.sharded
        reusable = trained_cache.find(cfg.paths.cache_dir, key) if reuse else None
        if reusable is not None:
            module, metrics = reuse_trained(cfg, plan, parts, trainer, reusable)
        else:
            module, metrics = fit(cfg, plan, parts, trainer)
        pruned = next((c for c in callbacks if isinstance(c, PruningCallback) and c.pruned_at is not None), None)
        if pruned is not None:
            metrics["pruned_at_step"] = pruned.pruned_at
        if reuse and reusable is None and pruned is None and trainer.is_global_zero:
            trained_cache.store(cfg.paths.cache_dir, key, module, metrics, plan.run_dir)
        if pruned is None and trainer.is_global_zero and plan.eval_prompts is not None and cfg.eval.final:
            metrics.update(final_evaluation(cfg, plan, module, metric_models, loggers, int(metrics["step"]), baseline))

        if trainer.is_global_zero:
            if cfg.export_pipeline and pruned is None:
                announce(f"pipeline: {describe_export(export_pipeline(module, plan.run_dir / 'pipeline'))}")
            (plan.run_dir / "metrics.json").write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
            log_run_files(loggers, plan.run_dir)
            announce(f"run dir: {plan.run_dir} (metrics.json, checkpoints/, pipeline/, samples/)")
        if pruned is not None:
            raise pruned.error()
    return metrics


def fit(cfg: DictConfig, plan: RunPlan, parts, trainer: L.Trainer) -> tuple[DreamBoothModule, dict[str, Any]]:
    """Class images, cached encodings, data, module — and training; the metrics at its end."""
    prior_images = plan.class_photos
    if plan.class_prompt is not None and prior_images is None:
        prior_images = class_images(
            cfg.prior, parts, plan.class_prompt, cfg.data.resolution, cfg.paths.cache_dir
        ).images
    encoded = encode_once(cfg, parts, plan, prior_images, trainer.strategy.root_device)
    datamodule = DreamBoothDataModule(
        cfg.data, plan.instance_images, prior_images, cfg.seed, encoded.instance_latents, encoded.class_latents
    )
    module = make_module(cfg, plan, parts, encoded.text_embeddings, offload=offloadable(cfg, encoded))
    trainer.fit(module, datamodule=datamodule, ckpt_path=plan.ckpt_path, weights_only=True)
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics |= {"step": trainer.global_step, "train/steps_run": trainer.global_step - module.start_step}
    return module, metrics


def reuse_trained(cfg: DictConfig, plan: RunPlan, parts, trainer: L.Trainer, entry) -> tuple[DreamBoothModule, dict]:
    """The weights a finished run with the same training config left in the cache: no training step runs."""
    announce(f"reusing trained weights {entry.folder} (from {entry.manifest.get('source_run')}): sampling only")
    module = make_module(cfg, plan, parts, None)
    entry.load_into(module)
    module.to(trainer.strategy.root_device)
    grids = next(c for c in trainer.callbacks if isinstance(c, SampleGridCallback))
    grids.render(trainer, module, "final")
    return module, {**entry.metrics, "train/steps_run": 0, "reused_weights": entry.key}


def make_module(cfg: DictConfig, plan: RunPlan, parts, text_embeddings, offload=()) -> DreamBoothModule:
    return DreamBoothModule(
        parts,
        cfg.model,
        cfg.optimizer,
        plan.instance_prompt,
        plan.class_prompt,
        cfg.prior.weight,
        cfg.seed,
        text_embeddings=text_embeddings,
        memory_cfg=cfg.memory,
        offload=offload,
    )


def offloadable(cfg: DictConfig, encoded: Encoded) -> tuple[str, ...]:
    """``memory.offload_frozen``: the frozen parts whose outputs all come from the caches."""
    if not cfg.memory.offload_frozen:
        return ()
    parts = ("vae",) if encoded.instance_latents is not None else ()
    parts += ("text_encoder",) if encoded.text_embeddings is not None else ()
    if not parts:
        log.warning("memory.offload_frozen: nothing to offload (data.cache_latents / cache_text_embeddings are off)")
    return parts


def make_callbacks(cfg: DictConfig, plan: RunPlan, metric_models) -> list[L.Callback]:
    """The configured callbacks, the sample grids, and the in-training evaluation when asked for."""
    callbacks = [
        instantiate_checked(c, f"callbacks.{name}")
        for name, c in (cfg.callbacks or {}).items()
        if c is not None and "_target_" in c
    ]
    if not plan.sharded:
        grids = SampleGridCallback(cfg.eval, plan.sample_prompts, cfg.data.resolution, plan.run_dir / "samples")
        callbacks.append(grids)
    if plan.eval_prompts is not None and cfg.eval.metrics_every_n_steps:
        callbacks.append(
            EvalMetricsCallback(cfg.eval, metric_models, plan.instance_images, plan.eval_prompts, cfg.data.resolution)
        )
    trial = pruning_trial()
    if trial is not None and not cfg.eval.metrics_every_n_steps:
        log.warning("the sweep prunes, but this run reports nothing to prune on: set eval.metrics_every_n_steps")
    elif trial is not None:  # after the evaluation: it reports what the evaluation just measured
        callbacks.append(PruningCallback(trial, str(cfg.optimized_metric), cfg.eval.metrics_every_n_steps))
    return callbacks


@dataclass
class Encoded:
    instance_latents: list | None = None
    class_latents: list | None = None
    text_embeddings: list | None = None


def encode_once(cfg: DictConfig, parts, plan: RunPlan, class_images: list | None, device) -> Encoded:
    """VAE latents and text embeddings from the shared cache, where caching them is valid."""
    encoded = Encoded()
    if cfg.data.cache_latents and cfg.data.center_crop:
        images = plan.instance_images + (class_images or [])  # one pass: the VAE moves to the device once
        latents = cached_latents(
            parts.vae,
            parts.identity["vae"],
            images,
            cfg.data.resolution,
            cfg.data.random_flip,
            cfg.paths.cache_dir,
            device,
        )
        n = len(plan.instance_images)
        encoded.instance_latents, encoded.class_latents = latents[:n], (latents[n:] if class_images else None)
    elif cfg.data.cache_latents:
        log.info("latent cache off: random crops (data.center_crop=false) differ every step")
    if cfg.data.cache_text_embeddings and not cfg.model.train_text_encoder:
        prompts = [plan.instance_prompt] + ([plan.class_prompt] if plan.class_prompt is not None else [])
        encoded.text_embeddings = cached_text_embeddings(
            parts.text_encoder, parts.tokenizer, parts.identity, prompts, cfg.paths.cache_dir, device
        )
    return encoded


def baseline_evaluation(cfg: DictConfig, plan: RunPlan, parts, metric_models, device) -> dict[str, float]:
    """The base model's metrics on the same prompts and seeds, at the first guidance scale: where
    fine-tuning starts from (``eval.baseline``)."""
    for part in (parts.unet, parts.vae, parts.text_encoder):
        part.to(device)
    scheduler = sampler(parts.inference_scheduler, cfg.eval.scheduler)
    pipeline = build_pipeline(parts.vae, parts.text_encoder, parts.tokenizer, parts.unet, scheduler)
    scale = cfg.eval.guidance_scales[0]
    result = evaluate(
        pipeline,
        metric_models(device),
        plan.instance_images,
        plan.eval_prompts,
        cfg.eval,
        scale,
        cfg.data.resolution,
        progress=f"base model evaluation (guidance {scale:g})",
    )
    return {k: v for k, v in result.metrics.items() if k.startswith("eval/")}


def final_evaluation(
    cfg: DictConfig, plan: RunPlan, module, metric_models, loggers, step: int, baseline: dict | None = None
) -> dict[str, Any]:
    """The full DreamBooth evaluation of the fine-tuned model: ``eval/*`` of the first guidance scale
    (flat, for ``optimized_metric``) plus every scale under ``evaluation`` (also ``<run>/eval/``);
    with a ``baseline``, the base model's values as ``base/*`` and a before/after line."""
    with module.sampling(cfg.eval.scheduler) as pipeline:
        evaluation = evaluate_at_scales(
            pipeline,
            metric_models(module.device),
            plan.instance_images,
            plan.eval_prompts,
            cfg.eval,
            cfg.data.resolution,
            plan.run_dir / "eval",
            loggers,
            step,
        )
    release_metric_models()
    if baseline is not None:
        evaluation["baseline"] = {f"{cfg.eval.guidance_scales[0]:g}": baseline}
    announce(summary_table(evaluation))
    first = next(iter(evaluation["guidance_scales"].values()))
    base = {f"base/{k.removeprefix('eval/')}": v for k, v in (baseline or {}).items()}
    for logger in loggers:  # the objective's scale also under the plain names (eval/score, …)
        logger.log_metrics(first | base, step=step)
    if baseline is not None:
        announce(before_after(baseline, first, step))
    return {**first, **base, "evaluation": evaluation}


def _is_list(names: Any) -> bool:
    return isinstance(names, list | ListConfig | tuple)


def _metric_list(names: Any) -> list[str]:
    return [str(n) for n in names] if _is_list(names) else [str(names)]


def objective(metrics: dict[str, Any], names: Any) -> float | tuple[float, ...]:
    """The value a sweeper optimizes (a tuple for a list of names); a clear error when one is missing."""
    values = []
    for name in _metric_list(names):
        if name not in metrics:
            available = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, int | float)))
            raise UserInputError(f"optimized_metric={name}: not in the run's metrics; available: {available}")
        if math.isnan(metrics[name]):
            log.warning("optimized_metric %s is NaN", name)
        values.append(float(metrics[name]))
    return tuple(values) if _is_list(names) else values[0]


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra writes ``.hydra/`` for CLI runs; runs started from Python get the same record."""
    target = run_dir / ".hydra" / "config.yaml"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, target)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    with exit_on_user_error():
        return objective(run(cfg), cfg.optimized_metric)


def cli() -> None:
    """``dbexp-train``, also ``python -m dbexp.train``."""
    sys.argv = expand_home_in_overrides(sys.argv)
    main()


if __name__ == "__main__":
    cli()
