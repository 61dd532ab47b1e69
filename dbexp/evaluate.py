"""``python -m dbexp.evaluate pipeline=<dir> data.subject=dog eval.guidance_scales=[3,5,7.5,10]``.

Generates the DreamBench prompt set with fixed seeds, scores it (DINO, CLIP-I, CLIP-T, PRES, DIV,
and the real-images reference) and writes ``metrics.json`` (one block per guidance scale),
``per_prompt.csv`` and one image grid per scale into this command's own folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dbexp import metric_suites
from dbexp.config import prepare_command_line
from dbexp.console import announce, quiet_known_noise
from dbexp.errors import UserInputError, exit_on_user_error


def run(cfg: DictConfig) -> dict:
    # torch, diffusers, Lightning: loaded when the command runs (--help, --cfg job answer in a second)
    from dbexp.datamodule import check_data_config, load_subject_images, resolve_subject
    from dbexp.eval_protocol import check_eval_config, check_score, eval_prompts, evaluate_at_scales, summary_table
    from dbexp.generate import load_pipeline
    from dbexp.metric_models import load_metric_models
    from dbexp.sampling import sampler
    from dbexp.tracking import open_loggers

    quiet_known_noise()
    check_data_config(cfg.data)
    check_eval_config(cfg.eval)
    if cfg.resolution is not None and (cfg.resolution < 8 or cfg.resolution % 8):
        raise UserInputError(f"resolution={cfg.resolution}: must be a positive multiple of 8 (or null: native)")
    subject = resolve_subject(cfg.data)
    if not subject.class_noun:
        raise UserInputError("evaluation needs the subject's class: set data.class_noun=<noun>")
    real_images = load_subject_images(subject)
    prompts = eval_prompts(cfg.eval, cfg.data.token, subject.class_noun)
    suite = _suite(cfg)
    check_score(cfg.eval, suite)
    if not metric_suites.get(suite).evaluates:
        raise UserInputError(f"eval.metrics={suite}: nothing to evaluate; use dreambench (or tiny for test models)")
    out = Path(cfg.paths.output_dir)
    announce(f"evaluation dir: {out}")
    pipeline = load_pipeline(cfg.pipeline, cfg.device, cfg.dtype)
    pipeline.scheduler = sampler(pipeline.scheduler, cfg.eval.sampler)
    models = load_metric_models(suite, cfg.eval, cfg.paths.cache_dir, pipeline.device)
    size = cfg.resolution or pipeline.unet.config.sample_size * pipeline.vae_scale_factor  # null: its own size
    with open_loggers(cfg.logger) as loggers:
        evaluation = evaluate_at_scales(pipeline, models, real_images, prompts, cfg.eval, size, out, loggers)
    evaluation |= {
        "pipeline": str(Path(cfg.pipeline).expanduser().resolve()),
        "subject": str(subject.instance_dir),
        "class_noun": subject.class_noun,
        "resolution": size,
    }
    (out / "metrics.json").write_text(json.dumps(evaluation, indent=2) + "\n")  # guidance scales in given order
    announce(summary_table(evaluation))
    announce(f"evaluation dir: {out} (metrics.json, per_prompt.csv, guidance_<g>.png)")
    return evaluation


def _suite(cfg: DictConfig) -> str:
    """``eval.metrics``; ``auto`` is the suite the exported model names (``dreambench`` when it names none)."""
    from dbexp.export import METADATA

    if cfg.eval.metrics != "auto":
        return cfg.eval.metrics
    metadata = Path(cfg.pipeline).expanduser() / METADATA
    return json.loads(metadata.read_text()).get("eval_metrics", "dreambench") if metadata.is_file() else "dreambench"


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run(cfg)


def cli() -> None:
    """``dbexp-evaluate``, also ``python -m dbexp.evaluate``."""
    sys.argv = prepare_command_line(sys.argv)
    main()


if __name__ == "__main__":
    cli()
