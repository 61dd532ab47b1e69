"""The stages of one training run, in the order ``dbexp.train.run`` calls them.

:func:`plan_run` checks every input before anything loads; :class:`Stages` holds what the later
stages share (the config, the plan, the loggers, the Trainer and its callbacks) and does each one:
load the base model, evaluate it, reuse or train the weights, evaluate the result, export it, write
``metrics.json``. Each stage is a call into the module that owns its config group.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf

from dbexp import metric_suites, trained_cache
from dbexp.best_step import OBJECTIVE_AT, BestStepCallback, EarlyStopping, check_early_stopping
from dbexp.checkpointing import AtomicCheckpointIO, release_finished, resolve_ckpt_path
from dbexp.console import announce, format_bytes
from dbexp.datamodule import (
    DreamBoothDataModule,
    check_data_config,
    crop_sizes,
    instance_prompt,
    load_subject_images,
    nearest_bucket,
    resolve_subject,
)
from dbexp.dreambooth_module import DreamBoothModule
from dbexp.encoding_cache import cached_latents, cached_text_embeddings
from dbexp.errors import UserInputError, instantiate_checked
from dbexp.eval_protocol import (
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
from dbexp.export import check_export_config, check_export_parts, describe_export, export_run
from dbexp.finetune import check_finetune_config, check_lora_targets
from dbexp.memory import check_memory_config, half_base_dtype
from dbexp.metric_models import load_metric_models, metric_model_folders
from dbexp.metric_models import release as release_metric_models
from dbexp.model_loading import ModelParts, check_model_config, load_model
from dbexp.optimization import check_optimizer_config
from dbexp.prior_cache import bucketed_class_images, check_prior_config, class_images, class_prompt, load_class_dir
from dbexp.pruning import PruningCallback, pruning_metric, pruning_signals, report_every
from dbexp.sampling import sampler
from dbexp.sweep_tracking import check_logger_config
from dbexp.sweep_trial import pruning_trial, trial_number
from dbexp.tracking import describe_run, log_run_files
from dbexp.validation import ValidationLossCallback, build_validation_set, check_validation_config
from dbexp.validation import metric_names as validation_metric_names

log = logging.getLogger("dbexp.train")


# --- plan: every check before anything loads ------------------------------------------------------
@dataclass
class RunPlan:
    """Everything checked and resolved before any model loads."""

    run_dir: Path
    instance_images: list
    instance_prompt: str
    class_prompt: str | None
    class_photos: list | None  # prior.class_dir's images (else class images come from the cache)
    sample_prompts: list[str]
    metric_suite: str  # a name in dbexp.metric_suites
    eval_prompts: EvalPrompts | None
    ckpt_path: str | None
    validation_class_prompt: str | None = None  # the class prompt of the validation set (val/loss_prior)
    sharded: bool = False  # FSDP: no process holds the whole model, so nothing samples during the run


def plan_run(cfg: DictConfig) -> RunPlan:
    """Check every input (configs, folders, images, checkpoint) — a clear error before anything heavy."""
    check_model_config(cfg.model)
    check_finetune_config(cfg.finetune)
    check_data_config(cfg.data)
    check_optimizer_config(cfg.optimizer)
    check_memory_config(cfg.memory, cfg.optimizer.name, cfg.trainer.get("precision"))
    check_eval_config(cfg.eval)
    check_validation_config(cfg.eval)
    check_logger_config(cfg.logger)
    check_export_config(cfg.export, cfg.model)
    if cfg.objective_at not in OBJECTIVE_AT:
        raise UserInputError(f"objective_at={cfg.objective_at}: use best or last")
    check_early_stopping(cfg.callbacks)
    if int(cfg.trainer.get("max_steps", -1)) < 1:
        raise UserInputError("trainer.max_steps must be >= 1: DreamBooth training is counted in steps")
    sharded = check_sharding(cfg)
    subject = resolve_subject(cfg.data)
    check_prior_config(cfg.prior, subject.class_noun)
    prior = cfg.prior.weight > 0
    prompt = instance_prompt(cfg.data, subject.class_noun)
    suite = metric_suite(cfg.eval, cfg.model.eval_metrics)
    check_score(cfg.eval, suite)
    evaluates = metric_suites.get(suite).evaluates
    if evaluates and not subject.class_noun:
        raise UserInputError("evaluation needs the subject's class: set data.class_noun=<noun> (or eval.metrics=none)")
    validation_class = class_prompt(cfg.prior, subject.class_noun) if subject.class_noun else None
    available = (
        DreamBoothModule.metric_names(prior)
        + eval_metric_names(cfg.eval, suite)
        + validation_metric_names(cfg.eval, validation_class is not None)
    )
    for name in metric_list(cfg.optimized_metric):
        if name not in available:
            raise UserInputError(
                f"optimized_metric={name}: this run does not log it; available: {', '.join(available)}"
            )
    during = [n for n in available if n.startswith(("train/", "val/"))]
    during += [n for n in eval_metric_names(cfg.eval, suite) if cfg.eval.metrics_every_n_steps]
    for key in ("metric", "early_metric"):
        if cfg.pruning[key] and cfg.pruning[key] not in during:
            raise UserInputError(
                f"pruning.{key}={cfg.pruning[key]}: this run does not measure it during training; "
                f"measured during training: {', '.join(during)}"
            )
    if cfg.pruning.early_metric and cfg.pruning.early_until <= 0:
        raise UserInputError(
            f"pruning.early_metric={cfg.pruning.early_metric} needs pruning.early_until=<step> (the first step "
            "that reports pruning.metric instead)"
        )
    return RunPlan(
        run_dir=Path(cfg.paths.output_dir),
        instance_images=load_subject_images(subject),
        instance_prompt=prompt,
        class_prompt=class_prompt(cfg.prior, subject.class_noun) if prior else None,
        class_photos=load_class_dir(cfg.prior) if prior else None,
        sample_prompts=sample_prompts(cfg.eval, cfg.data.token, subject.class_noun),
        metric_suite=suite,
        eval_prompts=eval_prompts(cfg.eval, cfg.data.token, subject.class_noun) if evaluates else None,
        ckpt_path=resolve_ckpt_path(cfg.ckpt_path, cfg, cfg.paths.runs_dir),
        validation_class_prompt=validation_class,
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
        "eval.val_every_n_steps=0": cfg.eval.val_every_n_steps,
        "eval.final=false": cfg.eval.final,
        "export.enabled=false": cfg.export.enabled,
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


def start(cfg: DictConfig, plan: RunPlan) -> None:
    """The run folder announced, the config saved in it, every random generator seeded."""
    announce(f"run dir: {plan.run_dir}")
    save_config(cfg, plan.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra writes ``.hydra/`` for CLI runs; runs started from Python get the same record."""
    target = run_dir / ".hydra" / "config.yaml"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, target)


# --- the stages -------------------------------------------------------------------------------------
@dataclass
class Trained:
    """The fine-tuned module and the metrics at the end of training (or of the reused run)."""

    module: DreamBoothModule
    metrics: dict[str, Any]
    reused: bool = False
    pruned: PruningCallback | None = None  # the sweep's pruner stopped this run
    entry: Path | None = None  # the trained-weights cache entry it reused


@dataclass
class Encoded:
    instance_latents: list | None = None
    class_latents: list | None = None
    text_embeddings: list | None = None


class Stages:
    def __init__(self, cfg: DictConfig, plan: RunPlan, loggers: list) -> None:
        self.cfg, self.plan, self.loggers = cfg, plan, loggers
        # Called with a device; the models load once per process.
        self.metric_models = partial(load_metric_models, plan.metric_suite, cfg.eval, cfg.paths.cache_dir)
        describe_run(loggers, cfg, plan.instance_images)
        self.callbacks = make_callbacks(cfg, plan, self.metric_models)
        self.trainer: L.Trainer = instantiate_checked(
            cfg.trainer, "trainer", callbacks=self.callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
        )
        self.reuse = trained_cache.enabled(cfg) and not plan.sharded
        self.key: str | None = None

    @property
    def is_global_zero(self) -> bool:
        return self.trainer.is_global_zero

    @property
    def device(self):
        return self.trainer.strategy.root_device

    def load_base_model(self) -> ModelParts:
        """The base model; LoRA targets that name no layer and missing metric models are one line here,
        before class images and hours of training."""
        parts = load_model(self.cfg.model, self.cfg.paths.cache_dir)
        check_lora_targets(self.cfg.finetune, parts.unet, parts.text_encoder, parts.text_encoder_2)
        check_export_parts(self.cfg.export, self.cfg.finetune, parts)
        if self.plan.eval_prompts is not None:
            metric_model_folders(self.plan.metric_suite, self.cfg.eval, self.cfg.paths.cache_dir)
        if self.reuse:  # the trained-weights key: only where trained weights are looked up and stored
            self.key = trained_cache.training_key(
                self.cfg, parts.identity, self.plan.instance_images, self.plan.class_photos
            )
        return parts

    def evaluate_base_model(self, parts: ModelParts) -> dict[str, float] | None:
        """``eval.baseline``: the base model's metrics on the same prompts and seeds, at the first guidance
        scale — where fine-tuning starts from."""
        cfg, plan = self.cfg, self.plan
        if plan.eval_prompts is None or not (cfg.eval.final and cfg.eval.baseline) or not self.is_global_zero:
            return None
        for part in (parts.unet, parts.vae, parts.text_encoder):
            part.to(self.device)
        pipeline = parts.pipeline(scheduler=sampler(parts.inference_scheduler, cfg.eval.sampler))
        scale = cfg.eval.guidance_scales[0]
        result = evaluate(
            pipeline,
            self.metric_models(self.device),
            plan.instance_images,
            plan.eval_prompts,
            cfg.eval,
            scale,
            cfg.data.resolution,
            progress=f"base model evaluation (guidance {scale:g})",
        )
        return {k: v for k, v in result.metrics.items() if k.startswith("eval/")}

    def reuse_trained(self, parts: ModelParts) -> Trained | None:
        """The weights a finished run with the same training setting left in the cache: no step runs."""
        entry = trained_cache.find(self.cfg.paths.cache_dir, self.key) if self.reuse else None
        if entry is None:
            return None
        announce(f"reusing trained weights {entry.folder} (from {entry.manifest.get('source_run')}): sampling only")
        module = make_module(self.cfg, self.plan, parts, None)
        entry.load_into(module)
        module.to(self.device)
        grids = next(c for c in self.callbacks if isinstance(c, SampleGridCallback))
        grids.render(self.trainer, module, "final")
        metrics = {**entry.metrics, "train/steps_run": 0, "reused_weights": entry.key}
        return Trained(module, metrics, reused=True, entry=entry.folder)

    def fit(self, parts: ModelParts) -> Trained:
        """Class images, cached encodings, data, module — and training; the metrics at its end."""
        cfg, plan, trainer = self.cfg, self.plan, self.trainer
        instance_sizes = crop_sizes(cfg.data, plan.instance_images)  # squares, or aspect-ratio buckets
        prior_images, class_sizes = plan.class_photos, None
        if prior_images is not None and cfg.data.buckets:  # the user's class photos: the nearest bucket in use
            class_sizes = [nearest_bucket(*image.size, sorted(set(instance_sizes))) for image in prior_images]
        elif plan.class_prompt is not None and cfg.data.buckets:
            prior_images, class_sizes = bucketed_class_images(
                cfg.prior, parts, plan.class_prompt, instance_sizes, cfg.paths.cache_dir
            )
        elif plan.class_prompt is not None and prior_images is None:
            prior_images = class_images(
                cfg.prior, parts, plan.class_prompt, cfg.data.resolution, cfg.paths.cache_dir
            ).images
        if prior_images is not None and class_sizes is None:
            class_sizes = [(cfg.data.resolution, cfg.data.resolution)] * len(prior_images)
        encoded = encode_once(cfg, parts, plan, prior_images, self.device, instance_sizes + (class_sizes or []))
        datamodule = DreamBoothDataModule(
            cfg.data,
            plan.instance_images,
            prior_images,
            cfg.seed,
            encoded.instance_latents,
            encoded.class_latents,
            instance_sizes=instance_sizes,
            class_sizes=class_sizes,
        )
        for callback in self.callbacks:  # from the base model as loaded (before the module holds any part in half)
            if isinstance(callback, ValidationLossCallback):
                callback.vset = build_validation_set(
                    cfg, parts, plan.instance_images, plan.instance_prompt, plan.validation_class_prompt, self.device
                )
        module = make_module(cfg, plan, parts, encoded.text_embeddings, offload=offloadable(cfg, encoded, parts.xl))
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.ckpt_path, weights_only=True)
        release_training_state(trainer, module)
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics |= {"step": trainer.global_step, "train/steps_run": trainer.global_step - module.start_step}
        history = in_training(self.callbacks)
        best = next((c for c in self.callbacks if isinstance(c, BestStepCallback)), None)
        if best is not None and (step := best.restore(module)) is not None:
            metrics |= history[str(step)] | {"best_step": step}  # the objective as measured at the best step
        if history:
            metrics["in_training"] = history
        pruned = next((c for c in self.callbacks if isinstance(c, PruningCallback) and c.pruned_at is not None), None)
        if pruned is not None:
            metrics["pruned_at_step"] = pruned.pruned_at
        return Trained(module, metrics, pruned=pruned)

    def store_trained(self, trained: Trained) -> None:
        """Trained weights into the shared cache, for later runs of the same training setting; ``metrics.json``
        names the entry (``trained_weights``: a sweep's retention removes the entries its dropped trials stored)."""
        if trained.reused:
            trained.metrics["trained_weights"] = {"entry": str(trained.entry), "stored_here": False}
        elif self.reuse:
            folder, new = trained_cache.store(
                self.cfg.paths.cache_dir, self.key, trained.module, trained.metrics, self.plan.run_dir
            )
            trained.metrics["trained_weights"] = {"entry": str(folder), "stored_here": new}

    def release_checkpoints(self, trained: Trained) -> None:
        """A finished sweep trial is not resumed: what only resuming needs goes (``checkpoints/``; its weights
        stay there, optimizer moments dropped, only when neither the cache nor the export holds them)."""
        if trial_number() is None:
            return
        elsewhere = trained.pruned is not None or "trained_weights" in trained.metrics or self.cfg.export.enabled
        freed = release_finished(self.plan.run_dir / "checkpoints", weights_elsewhere=elsewhere)
        if freed:
            log.info("sweep trial finished: %s of checkpoints released", format_bytes(freed))

    def evaluate_trained(self, trained: Trained, baseline: dict | None) -> dict[str, Any]:
        """The full DreamBooth evaluation of the fine-tuned model: ``eval/*`` of the first guidance scale
        (flat, for ``optimized_metric``) plus every scale under ``evaluation`` (also ``<run>/eval/``);
        with a ``baseline``, the base model's values as ``base/*`` and a before/after line."""
        cfg, plan, module = self.cfg, self.plan, trained.module
        if plan.eval_prompts is None or not cfg.eval.final:
            return {}
        step = int(trained.metrics["step"])
        with module.sampling(cfg.eval.sampler) as pipeline:
            evaluation = evaluate_at_scales(
                pipeline,
                self.metric_models(module.device),
                plan.instance_images,
                plan.eval_prompts,
                cfg.eval,
                cfg.data.resolution,
                plan.run_dir / "eval",
                self.loggers,
                step,
            )
        release_metric_models()
        if baseline is not None:
            evaluation["baseline"] = {f"{cfg.eval.guidance_scales[0]:g}": baseline}
        announce(summary_table(evaluation))
        first = next(iter(evaluation["guidance_scales"].values()))
        base = {f"base/{k.removeprefix('eval/')}": v for k, v in (baseline or {}).items()}
        for logger in self.loggers:  # the objective's scale also under the plain names (eval/score, …)
            logger.log_metrics(first | base, step=step)
        if baseline is not None:
            announce(before_after(baseline, first, step))
        return {**first, **base, "evaluation": evaluation}

    def export(self, trained: Trained) -> None:
        """The fine-tuned model in the formats people load, its final metrics in each file's header."""
        if self.cfg.export.enabled:
            folder = export_run(trained.module, self.cfg, self.plan.run_dir / "pipeline", trained.metrics)
            announce(f"pipeline: {describe_export(folder)}")

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """``metrics.json``, the run's files to the loggers, and where everything went."""
        run_dir = self.plan.run_dir
        (run_dir / "metrics.json").write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
        log_run_files(self.loggers, run_dir)
        announce(f"run dir: {run_dir} (metrics.json, checkpoints/, pipeline/, samples/)")


def release_training_state(trainer: L.Trainer, module: DreamBoothModule) -> None:
    """After training, what only training (or a resume, which reads the checkpoint) needs: the optimizer's
    moments and the gradients (an SD1.5 full fine-tune: 6.9 + 3.4 GB), freed before evaluation and export."""
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
    module.zero_grad(set_to_none=True)


def make_module(cfg: DictConfig, plan: RunPlan, parts, text_embeddings, offload=()) -> DreamBoothModule:
    return DreamBoothModule(
        parts,
        cfg.finetune,
        cfg.optimizer,
        plan.instance_prompt,
        plan.class_prompt,
        cfg.prior.weight,
        cfg.seed,
        text_embeddings=text_embeddings,
        memory_cfg=cfg.memory,
        offload=offload,
        half_base=half_base_dtype(cfg.memory, cfg.finetune.method, cfg.trainer.get("precision")),
    )


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
    if cfg.eval.val_every_n_steps and not plan.sharded:
        callbacks.append(ValidationLossCallback(cfg.eval))
    if plan.eval_prompts is not None and cfg.eval.metrics_every_n_steps:
        callbacks.append(
            EvalMetricsCallback(cfg.eval, metric_models, plan.instance_images, plan.eval_prompts, cfg.data.resolution)
        )
    if cfg.objective_at == "best" and not plan.sharded and (best := best_step_metrics(cfg, callbacks)):
        callbacks.append(BestStepCallback(best, report_every(cfg, best[0])))  # after what measures them
    trial = pruning_trial()
    if trial is not None:
        signals = pruning_signals(cfg, trial.study.direction.name.lower())
        if not signals:
            log.warning("the sweep prunes, but this run does not measure %s during training", pruning_metric(cfg))
        else:  # after the evaluation and validation: it reports what they just measured
            callbacks.append(PruningCallback(trial, signals))
    return callbacks


def best_step_metrics(cfg: DictConfig, callbacks: list[L.Callback]) -> list[str]:
    """What picks the best step: the objective when training measures it (a training loss, one batch's,
    picks none), else an early-stopping callback's signal; nothing (the last step) otherwise."""
    objectives = metric_list(cfg.optimized_metric)
    if not objectives[0].startswith("train/") and report_every(cfg, objectives[0]):
        return objectives
    stopping = next((c for c in callbacks if isinstance(c, EarlyStopping)), None)
    return [stopping.monitor] if stopping is not None else []


def in_training(callbacks: list[L.Callback]) -> dict[str, dict[str, float]]:
    """What the in-training evaluations and validations measured, by step (``metrics.json``'s ``in_training``:
    ``{"100": {"val/loss_prior": …, "eval/score": …}}``), for the report, the best step and the signal study."""
    steps: dict[int, dict[str, float]] = {}
    for callback in callbacks:
        for step, values in getattr(callback, "history", ()):
            steps.setdefault(step, {}).update(values)
    return {str(step): dict(sorted(values.items())) for step, values in sorted(steps.items())}


def offloadable(cfg: DictConfig, encoded: Encoded, xl: bool = False) -> tuple[str, ...]:
    """``memory.offload_frozen``: the frozen parts whose outputs all come from the caches."""
    if not cfg.memory.offload_frozen:
        return ()
    parts = ("vae",) if encoded.instance_latents is not None else ()
    if encoded.text_embeddings is not None:
        parts += ("text_encoder", "text_encoder_2") if xl else ("text_encoder",)
    if not parts:
        log.warning("memory.offload_frozen: nothing to offload (data.cache_latents / cache_text_embeddings are off)")
    return parts


def encode_once(cfg: DictConfig, parts, plan: RunPlan, class_images: list | None, device, sizes=None) -> Encoded:
    """VAE latents and text embeddings from the shared cache, where caching them is valid; ``sizes``: each
    image's crop (instance photos, then class images; None: the ``data.resolution`` square)."""
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
            sizes=sizes,
        )
        n = len(plan.instance_images)
        encoded.instance_latents, encoded.class_latents = latents[:n], (latents[n:] if class_images else None)
    elif cfg.data.cache_latents:
        log.info("latent cache off: random crops (data.center_crop=false) differ every step")
    if cfg.data.cache_text_embeddings and not cfg.finetune.train_text_encoder:
        prompts = [plan.instance_prompt] + ([plan.class_prompt] if plan.class_prompt is not None else [])
        encoded.text_embeddings = cached_text_embeddings(parts, prompts, cfg.paths.cache_dir, device)
    return encoded


# --- the objective ----------------------------------------------------------------------------------
def _is_list(names: Any) -> bool:
    return isinstance(names, list | ListConfig | tuple)


def metric_list(names: Any) -> list[str]:
    """``optimized_metric`` as a list of names."""
    return [str(n) for n in names] if _is_list(names) else [str(names)]


def objective(metrics: dict[str, Any], names: Any) -> float | tuple[float, ...]:
    """The value a sweeper optimizes (a tuple for a list of names); a clear error when one is missing."""
    values = []
    for name in metric_list(names):
        if name not in metrics:
            available = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, int | float)))
            raise UserInputError(f"optimized_metric={name}: not in the run's metrics; available: {available}")
        if math.isnan(metrics[name]):
            log.warning("optimized_metric %s is NaN", name)
        values.append(float(metrics[name]))
    return tuple(values) if _is_list(names) else values[0]
