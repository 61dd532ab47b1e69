"""The DreamBooth evaluation: after training, during training, from the command line; schema and seeds."""

import csv
import json
import re
from pathlib import Path

import pytest

from dbexp.eval_protocol import EvalConfig, eval_prompts, evaluate
from dbexp.metric_models import load_metric_models
from dbexp.model_loading import load_model
from dbexp.run import objective
from dbexp.sampling import build_pipeline
from dbexp.train import run
from tests.conftest import compose_train, run_cli

KEYS = {f"eval/{k}" for k in ("dino", "clip_i", "clip_t", "pres", "div", "score")} | {"real/dino", "real/clip_i"}


def test_evaluation_reads_the_metric_suites():
    from dbexp import metric_suites
    from dbexp.errors import UserInputError
    from dbexp.eval_protocol import check_eval_config, check_score, eval_metric_names, metric_suite, score_weights

    cfg = EvalConfig()
    for suite in metric_suites.suites():
        expected = [f"eval/{m}" for m in suite.metric_names] + ["eval/score"] if suite.metrics else []
        assert eval_metric_names(cfg, suite.name) == expected
        assert score_weights(cfg, suite.name) == dict(suite.default_score)
        check_score(cfg, suite.name)
        check_eval_config(EvalConfig(metrics=suite.name))
    assert metric_suite(cfg, "toy") == "toy" and metric_suite(EvalConfig(metrics="tiny"), "toy") == "tiny"
    with pytest.raises(UserInputError, match="model.eval_metrics=nope: not a metric suite"):
        metric_suite(cfg, "nope")
    with pytest.raises(UserInputError, match=r"not measured by the dreambench suite; weights apply to dino, clip_i"):
        check_score(EvalConfig(score={"subject_fidelity": 1.0}), "dreambench")
    with pytest.raises(UserInputError, match="eval.metrics=dino: use auto"):
        check_eval_config(EvalConfig(metrics="dino"))


def test_final_evaluation_writes_the_metrics_json_schema(make_cfg):
    cfg = make_cfg("eval.guidance_scales=[3.0,7.5]")
    metrics = run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved.keys() >= KEYS
    evaluation = saved["evaluation"]
    assert list(evaluation["guidance_scales"]) == ["3", "7.5"]
    assert all(block.keys() >= KEYS for block in evaluation["guidance_scales"].values())
    assert {k: saved[k] for k in KEYS} == pytest.approx(evaluation["guidance_scales"]["3"])  # flat = first scale
    assert evaluation["models"]["suite"] == "tiny"
    assert {"dino_preprocessing", "clip_preprocessing", "clip_model", "dino_model"} <= evaluation["models"].keys()
    assert evaluation["seconds"] > 0
    assert saved["eval/score"] == pytest.approx(saved["eval/dino"] + saved["eval/clip_t"])
    rows = list(csv.DictReader((run_dir / "eval" / "per_prompt.csv").open()))
    assert len(rows) == 2 * 2 and rows[0]["prompt"] == "a sks dog in the jungle"  # live-subject set, 2 scales
    assert (run_dir / "eval" / "guidance_3.png").is_file() and (run_dir / "eval" / "guidance_7.5.png").is_file()
    assert metrics["eval/dino"] == saved["eval/dino"]


def test_evaluation_during_training_logs_eval_metrics_and_keeps_the_best(make_cfg):
    cfg = make_cfg(
        "eval.metrics_every_n_steps=2",
        "eval.final=false",
        "callbacks.model_checkpoint.monitor=eval/score",
        "callbacks.model_checkpoint.mode=max",
        "callbacks.model_checkpoint.save_top_k=1",
        "optimized_metric=[eval/dino,eval/clip_t]",
    )
    metrics = run(cfg)
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))
    logged = [r for r in rows if r.get("eval/dino")]
    assert len(logged) == 2  # steps 2 and 4
    assert "evaluation" not in metrics  # no final evaluation asked for
    checkpoints = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("step_*.ckpt"))
    assert len(checkpoints) == 1
    assert objective(metrics, cfg.optimized_metric) == (metrics["eval/dino"], metrics["eval/clip_t"])


class RecordingPipeline:
    """A real pipeline that also notes the prompts it was asked for."""

    def __init__(self, pipeline):
        self.pipeline, self.prompts = pipeline, []

    def __call__(self, **kwargs):
        self.prompts += kwargs["prompt"]
        return self.pipeline(**kwargs)

    def set_progress_bar_config(self, **kwargs):
        self.pipeline.set_progress_bar_config(**kwargs)


def test_pres_uses_the_bare_class_prompt_and_seeds_are_fixed(tmp_path, cache_dir):
    parts = load_model(compose_train(tmp_path, cache_dir).model, cache_dir)
    pipeline = RecordingPipeline(
        build_pipeline(parts.vae, parts.text_encoder, parts.tokenizer, parts.unet, parts.inference_scheduler)
    )
    cfg = EvalConfig(num_prompts=2, images_per_prompt=2, pres_images=3, num_inference_steps=2)
    prompts = eval_prompts(cfg, "sks", "backpack")
    assert (
        prompts.prompts[0] == "a sks backpack in the jungle" and prompts.clip_prompts[0] == "a backpack in the jungle"
    )
    models = load_metric_models("tiny", cfg, cache_dir)
    from PIL import Image

    real = [Image.new("RGB", (32, 32), (20 * i, 80, 140)) for i in range(3)]
    first = evaluate(pipeline, models, real, prompts, cfg, 7.5, 32)
    assert pipeline.prompts[-3:] == ["a backpack"] * 3 and "sks" not in " ".join(pipeline.prompts[-3:])
    assert pipeline.prompts[:4] == [prompts.prompts[0]] * 2 + [prompts.prompts[1]] * 2
    again = evaluate(pipeline, models, real, prompts, cfg, 7.5, 32)
    assert again.metrics == first.metrics  # same prompts, same seeds, same numbers
    assert len(first.rows) == 2 and first.metrics["eval/pres"] == pytest.approx(first.metrics["eval/pres"])
    from dbexp.eval_protocol import eval_metric_names

    assert sorted(k for k in first.metrics if k.startswith("eval/")) == sorted(eval_metric_names(cfg, "tiny"))


@pytest.mark.slow
def test_the_evaluate_command_end_to_end(make_cfg, tmp_path, cache_dir):
    cfg = make_cfg("eval.final=false")
    run(cfg)
    result = run_cli(
        "dbexp.evaluate",
        f"pipeline={Path(cfg.paths.output_dir) / 'pipeline'}",
        "data.subject=dog",
        "eval.guidance_scales=[3,5,7.5,10]",
        "resolution=24",  # not the tiny model's own 32 px
        "eval.num_prompts=3",
        "eval.images_per_prompt=2",
        "eval.pres_images=2",
        "eval.num_inference_steps=2",
        f"paths.cache_dir={cache_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(re.findall(r"^evaluation dir: (\S+)", result.stdout, flags=re.M)[-1])
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved["guidance_scales"]) == ["3", "5", "7.5", "10"]
    assert saved["models"]["suite"] == "tiny"  # the exported model says which suite suits it
    assert len(list(csv.DictReader((out / "per_prompt.csv").open()))) == 4 * 3
    assert len(list(out.glob("guidance_*.png"))) == 4
    assert saved["resolution"] == 24
    assert re.search(r"^\s+7\.5\s+-?\d\.\d{3}", result.stdout, flags=re.M)  # the summary table
