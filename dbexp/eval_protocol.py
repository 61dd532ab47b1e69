"""Owner of ``conf/eval``: what the model is asked to draw while and after it trains, and how it scores.
The library behind both the run's evaluation and ``python -m dbexp.evaluate`` (the command).

* Sample grids (rows = prompts, columns = seeds) every N steps and at the end.
* The DreamBooth protocol (DINO, CLIP-I, CLIP-T, PRES, DIV; ``dbexp.metrics``): a fast subset every
  ``eval.metrics_every_n_steps`` (logged as ``eval/*``), the full prompt set after training
  (``metrics.json``), and ``python -m dbexp.evaluate`` for any exported pipeline.
  Image i of prompt k always uses the same seed, so two checkpoints are compared on the same noise.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from PIL import Image

from dbexp import metric_suites
from dbexp.config import EvalConfig
from dbexp.datamodule import sample_seed
from dbexp.dreambench import prompt_set_for, read_prompt_templates
from dbexp.errors import UserInputError
from dbexp.metric_models import MetricModels
from dbexp.sampling import check_sampler, generate, make_grid
from dbexp.tracking import log_image

log = logging.getLogger(__name__)


PROMPT_SETS = ("auto", "object", "live", "custom")
# The metric suites (what each measures, its default eval/score, its models): dbexp.metric_suites.


def check_eval_config(cfg: EvalConfig) -> None:
    if not cfg.prompts or not cfg.seeds:
        raise UserInputError("eval.prompts and eval.seeds must each hold at least one entry")
    if cfg.num_inference_steps < 1:
        raise UserInputError(f"eval.num_inference_steps={cfg.num_inference_steps}: must be >= 1")
    if cfg.every_n_steps < 0:
        raise UserInputError(f"eval.every_n_steps={cfg.every_n_steps}: must be >= 0 (0: only at the end)")
    if cfg.batch_size < 1:
        raise UserInputError(f"eval.batch_size={cfg.batch_size}: must be >= 1")
    check_sampler(cfg.sampler, "eval.sampler")
    if cfg.metrics not in (*metric_suites.names(), "auto"):
        raise UserInputError(
            f"eval.metrics={cfg.metrics}: use auto (the model's suite), {', '.join(metric_suites.names())}"
        )
    if cfg.prompt_set not in PROMPT_SETS:
        raise UserInputError(f"eval.prompt_set={cfg.prompt_set}: use one of {', '.join(PROMPT_SETS)}")
    if cfg.prompt_set == "custom" and not cfg.custom_prompts:
        raise UserInputError("eval.prompt_set=custom needs eval.custom_prompts (templates with {token}, {class_noun})")
    if cfg.images_per_prompt < 2 or cfg.subset_images_per_prompt < 2:
        raise UserInputError(
            "eval.images_per_prompt and eval.subset_images_per_prompt must be >= 2 (DIV compares pairs)"
        )
    if cfg.pres_images < 1 or not cfg.guidance_scales:
        raise UserInputError("eval.pres_images must be >= 1 and eval.guidance_scales must hold a value")


def score_weights(cfg: EvalConfig, suite: str) -> dict[str, float]:
    """``eval.score``, or the suite's own weights when it is null."""
    return dict(cfg.score) if cfg.score is not None else dict(metric_suites.get(suite).default_score)


def check_score(cfg: EvalConfig, suite: str) -> None:
    """``eval.score`` may weigh only what the run's metric suite measures."""
    measured = metric_suites.get(suite).metric_names
    unknown = set(score_weights(cfg, suite)) - set(measured)
    if unknown and measured:  # a suite that measures nothing (none) has no eval/score to weigh
        raise UserInputError(
            f"eval.score: {sorted(unknown)} not measured by the {suite} suite; "
            f"weights apply to {', '.join(measured)} (eval=toy for the toy model)"
        )


def metric_suite(cfg: EvalConfig, model_suite: str) -> str:
    """``eval.metrics``, with ``auto`` meaning the suite that suits the model (``model.eval_metrics``)."""
    suite = model_suite if cfg.metrics == "auto" else cfg.metrics
    if suite not in metric_suites.names():
        key = "model.eval_metrics" if cfg.metrics == "auto" else "eval.metrics"
        raise UserInputError(f"{key}={suite}: not a metric suite; use {', '.join(metric_suites.names())}")
    return suite


def eval_metric_names(cfg: EvalConfig, suite: str) -> list[str]:
    """What evaluation adds to a run's metrics (``optimized_metric`` may name any of them)."""
    measured = metric_suites.get(suite).metric_names
    if not measured or not (cfg.final or cfg.metrics_every_n_steps):
        return []
    return [f"eval/{name}" for name in (*measured, metric_suites.SCORE.name)]


@dataclass
class EvalPrompts:
    """The prompts of one evaluation: with the identifier (generation), without it (CLIP-T), the bare class."""

    prompts: list[str]
    clip_prompts: list[str]
    class_prompt: str


def eval_prompts(cfg: EvalConfig, token: str, class_noun: str) -> EvalPrompts:
    """The DreamBench set for the subject's class (objects vs live subjects), or ``eval.custom_prompts``."""
    if cfg.prompt_set == "custom":
        templates = list(cfg.custom_prompts)
    else:
        which = prompt_set_for(class_noun) if cfg.prompt_set == "auto" else cfg.prompt_set
        templates = read_prompt_templates()[which]
    templates = templates[: cfg.num_prompts] if cfg.num_prompts else templates
    try:
        prompts = [t.format(token=token, class_noun=class_noun) for t in templates]
        bare = [" ".join(t.format(token="", class_noun=class_noun).split()) for t in templates]
    except (KeyError, IndexError) as err:
        raise UserInputError(f"eval prompts: unknown placeholder {err}; use {{token}} and {{class_noun}}") from None
    return EvalPrompts(prompts=prompts, clip_prompts=bare, class_prompt=cfg.class_prompt.format(class_noun=class_noun))


@dataclass
class EvalResult:
    metrics: dict[str, float]  # eval/<metric>, eval/score, and the real photos' reference (real/dino, …)
    rows: list[dict]  # per prompt
    images: list[list[Image.Image]]  # per prompt
    seconds: float


#: Seed stream of the bare class prompt's images (prompt streams are 0, 1, …).
PRES_STREAM = 1_000_000


def eval_seed(seed: int, prompt_index: int, image_index: int) -> int:
    return sample_seed(seed, prompt_index, image_index) % (2**31)


def evaluate(
    pipeline,
    models: MetricModels,
    real_images: list[Image.Image],
    prompts: EvalPrompts,
    cfg: EvalConfig,
    guidance_scale: float,
    resolution: int | None,
    num_prompts: int | None = None,
    images_per_prompt: int | None = None,
    progress: str | None = None,
) -> EvalResult:
    """Generate (all prompts and the class prompt in shared batches), embed, score."""
    started = time.perf_counter()
    k = min(num_prompts or len(prompts.prompts), len(prompts.prompts))
    n = images_per_prompt or cfg.images_per_prompt
    jobs = [(p, prompts.prompts[p], eval_seed(cfg.metric_seed, p, i)) for p in range(k) for i in range(n)]
    jobs += [
        (PRES_STREAM, prompts.class_prompt, eval_seed(cfg.metric_seed, PRES_STREAM, i)) for i in range(cfg.pres_images)
    ]
    images = generate(
        pipeline,
        [text for _, text, _ in jobs],
        [seed for _, _, seed in jobs],
        guidance_scale=guidance_scale,
        num_inference_steps=cfg.num_inference_steps,
        negative_prompt=cfg.negative_prompt,
        resolution=resolution,
        batch_size=cfg.batch_size,
        progress=progress,
    )
    subject, class_images = images[: k * n], images[k * n :]
    values, rows, reference = models.score(subject, class_images, real_images, prompts, k, n)
    metrics = {f"eval/{name}": value for name, value in values.items()}
    weights = score_weights(cfg, models.description["suite"])
    metrics["eval/score"] = sum(weight * values[name] for name, weight in weights.items())
    metrics |= reference
    per_prompt = [subject[p * n : (p + 1) * n] for p in range(k)] + [class_images]
    return EvalResult(metrics=metrics, rows=rows, images=per_prompt, seconds=time.perf_counter() - started)


def eval_grid(result: EvalResult, prompts: EvalPrompts, max_rows: int = 25) -> Image.Image:
    """Rows = prompts (and the bare class prompt last), columns = images, at most 256 px a cell."""
    rows = result.images[:-1][:max_rows] + [result.images[-1]]
    labels = [*prompts.prompts[: len(rows) - 1], prompts.class_prompt]
    width = max(len(r) for r in rows)
    cells = [row[i] if i < len(row) else Image.new("RGB", row[0].size, "white") for row in rows for i in range(width)]
    cells = [c.resize((256, 256), Image.Resampling.LANCZOS) if max(c.size) > 256 else c for c in cells]
    return make_grid(cells, columns=width, row_labels=labels)


def evaluate_at_scales(
    pipeline,
    models: MetricModels,
    real_images: list[Image.Image],
    prompts: EvalPrompts,
    cfg: EvalConfig,
    resolution: int | None,
    out_dir: str | Path,
    loggers=(),
    step: int = 0,
) -> dict:
    """The full evaluation at every ``eval.guidance_scales``: per-prompt CSV, one grid per scale,
    metrics to the loggers; returns ``{"guidance_scales": {g: metrics}, "models": …, "seconds": …}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks, rows, seconds = {}, [], 0.0
    for scale in cfg.guidance_scales:
        result = evaluate(
            pipeline, models, real_images, prompts, cfg, scale, resolution, progress=f"evaluation (guidance {scale:g})"
        )
        blocks[f"{scale:g}"] = result.metrics
        rows += [{"guidance_scale": scale, **row} for row in result.rows]
        seconds += result.seconds
        grid = eval_grid(result, prompts)
        grid.save(out / f"guidance_{scale:g}.png")
        log_image(list(loggers), f"eval/guidance_{scale:g}", grid, step)
        for logger in loggers:
            logger.log_metrics({f"{k}_cfg{scale:g}": v for k, v in result.metrics.items()}, step=step)
    with open(out / "per_prompt.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {
        "guidance_scales": blocks,
        "models": models.description,
        "seconds": seconds,
        "prompts": len(prompts.prompts),
        "images_per_prompt": cfg.images_per_prompt,
    }


def summary_table(evaluation: dict) -> str:
    """The metrics per guidance scale as a text table (the real photos' row is guidance-free)."""
    first = next(iter(evaluation["guidance_scales"].values()))
    names = [k.removeprefix("eval/") for k in first if k.startswith("eval/")]
    width = max(7, *(len(n) for n in names))
    lines = [f"{'guidance':>8} " + " ".join(f"{n:>{width}}" for n in names)]
    for scale, metrics in evaluation.get("baseline", {}).items():
        lines.append(f"{'base ' + scale:>8} " + " ".join(f"{metrics[f'eval/{n}']:>{width}.3f}" for n in names))
    for scale, metrics in evaluation["guidance_scales"].items():
        lines.append(f"{scale:>8} " + " ".join(f"{metrics[f'eval/{n}']:>{width}.3f}" for n in names))
    real = [f"{first[f'real/{n}']:>{width}.3f}" if f"real/{n}" in first else " " * width for n in names]
    lines.append(f"{'real':>8} " + " ".join(real).rstrip())
    lines.append(f"({evaluation['models']['summary']}; {evaluation['seconds']:.1f} s)")
    return "\n".join(lines)


def before_after(baseline: dict[str, float], final: dict[str, float], step: int) -> str:
    """One line per metric: the base model's value → the fine-tuned one."""
    lines = [f"base model → after {step} steps:"]
    for key, before in baseline.items():
        lines.append(f"  {key.removeprefix('eval/'):>16}: {before:.3f} → {final[key]:.3f} ({final[key] - before:+.3f})")
    return "\n".join(lines)


class EvalMetricsCallback(L.Callback):
    """Every ``eval.metrics_every_n_steps``: the fast subset, logged as ``eval/*`` (checkpoints can keep the best)."""

    def __init__(self, cfg: EvalConfig, load_models, real_images, prompts: EvalPrompts, resolution: int) -> None:
        self.cfg, self.load_models, self.real_images = cfg, load_models, real_images
        self.prompts, self.resolution = prompts, resolution
        self._last_step: int | None = None
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, values): metrics.json's in_training

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        every, step = self.cfg.metrics_every_n_steps, trainer.global_step
        if not every or step % every or step == self._last_step or not trainer.is_global_zero:
            return  # (with gradient accumulation, several micro-batches end at the same step)
        self._last_step = step
        with pl_module.sampling(self.cfg.sampler) as pipeline, trainer.precision_plugin.forward_context():
            result = evaluate(
                pipeline,
                self.load_models(pl_module.device),
                self.real_images,
                self.prompts,
                self.cfg,
                self.cfg.guidance_scales[0],
                self.resolution,
                self.cfg.subset_prompts,
                self.cfg.subset_images_per_prompt,
            )
        values = {k: v for k, v in result.metrics.items() if k.startswith("eval/")} | {"eval/seconds": result.seconds}
        self.history.append((step, values))
        # Straight to the loggers, in the row of the step just taken (self.log would repeat the values
        # on every later row), and into callback_metrics for checkpoint monitors and pruners.
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step - 1)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})


def save_images(folder: Path, images: list[Image.Image], prompts: list[str], seeds: list[int]) -> None:
    """``<k>_seed<s>.png`` per image and ``index.json`` naming each file's prompt and seed."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(dict.fromkeys(prompts))
    index = []
    for image, prompt, seed in zip(images, prompts, seeds, strict=True):
        file = f"{order.index(prompt):02d}_seed{seed}.png"
        image.save(folder / file)
        index.append({"file": file, "prompt": prompt, "seed": int(seed)})
    (folder / "index.json").write_text(json.dumps(index, indent=2) + "\n")


def sample_prompts(cfg: EvalConfig, token: str, class_noun: str | None) -> list[str]:
    """``eval.prompts`` with ``{token}``/``{class_noun}`` filled in (the bare class prompt shows drift)."""
    try:
        return [p.format(token=token, class_noun=class_noun or "") for p in cfg.prompts]
    except (KeyError, IndexError) as err:
        raise UserInputError(f"eval.prompts: unknown placeholder {err}; use {{token}} and {{class_noun}}") from None


class SampleGridCallback(L.Callback):
    """Renders ``samples/step_<N>.png`` every N steps and ``samples/final.png`` at the end, with fixed seeds."""

    def __init__(self, cfg: EvalConfig, prompts: list[str], resolution: int, folder: str | Path) -> None:
        self.cfg, self.prompts, self.resolution = cfg, prompts, resolution
        self.folder = Path(folder)
        self._last_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.cfg.at_start and trainer.global_step == 0:
            self.render(trainer, pl_module, "step_0")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.cfg.every_n_steps:
            return
        step = trainer.global_step
        if step % self.cfg.every_n_steps == 0 and step != self._last_step:
            self.render(trainer, pl_module, f"step_{step}")

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.render(trainer, pl_module, "final")

    def render(self, trainer: L.Trainer, pl_module, name: str) -> Path | None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return None
        prompts = [p for p in self.prompts for _ in self.cfg.seeds]
        seeds = [s for _ in self.prompts for s in self.cfg.seeds]
        with pl_module.sampling(self.cfg.sampler) as pipeline, trainer.precision_plugin.forward_context():
            images = generate(
                pipeline,
                prompts,
                seeds,
                guidance_scale=self.cfg.guidance_scale,
                num_inference_steps=self.cfg.num_inference_steps,
                negative_prompt=self.cfg.negative_prompt,
                resolution=self.resolution,
                batch_size=self.cfg.batch_size,
            )
        grid = make_grid(images, columns=len(self.cfg.seeds), row_labels=self.prompts)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        grid.save(path)
        if name == "final":  # also one file per image: runs are compared image by image (dbexp.compare)
            save_images(self.folder / "final", images, prompts, seeds)
        log_image(trainer.loggers, "samples", grid, trainer.global_step)
        log.info("samples: %s", path)
        return path
