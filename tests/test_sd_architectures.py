"""The real architectures end to end (``make test-sd``; not in ``make test``: minutes each, up to 16 GB of memory
and 35 GB of disk while a case runs — each case's folder and the built bases are removed after it):
SD1.5 full fine-tune and LoRA, SD2.1 LoRA (v-prediction), SDXL LoRA on the UNet and both text encoders, random
weights (``model.init=random``: no download) at 64 px — train, checkpoint, resume, export in every format the
model has, load, generate, evaluate."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from dbexp.bench_harness import SMALL_REAL_RUN
from dbexp.export import SINGLE_FILE, read_metadata
from tests.conftest import run_cli

pytestmark = pytest.mark.sd

RUN = [
    *SMALL_REAL_RUN,
    "data.subject=dog",
    "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.model_checkpoint.save_top_k=1",
    "export.formats=[diffusers,single_file]",
    "logger=csv",
]
CASES = {
    "sd15-full": ["model=sd15"],
    "sd15-lora": ["model=sd15", "finetune=lora", "finetune.train_text_encoder=true", "optimizer.lr=1e-3"],
    "sd21-lora": ["model=sd21", "finetune=lora", "optimizer.lr=1e-3"],
    # SDXL: 13.9 GB of fp32 weights to build and save once; its LoRA also in kohya's SDXL names
    "sdxl-lora": ["model=sdxl", "finetune=lora", "finetune.train_text_encoder=true", "optimizer.lr=1e-3"],
}


def _draw(pipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipeline(
        "a photo of sks dog", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np"
    ).images


def _load(folder, xl=False, **kwargs):
    if xl:
        return StableDiffusionXLPipeline.from_pretrained(folder, **kwargs)
    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False, **kwargs)


def _run_dir(stdout: str) -> Path:
    return Path(re.findall(r"^run dir: (\S+)", stdout, flags=re.M)[-1])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The random bases, built once for the module (SD1.5 4 GB, SD2.1 5 GB), removed after it."""
    folder = tmp_path_factory.mktemp("sd-cache")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def work(tmp_path_factory, request):
    """A case's folder: two step files of 10.3 GB and two exports for SD1.5's full fine-tune; removed after it."""
    folder = tmp_path_factory.mktemp(request.node.callspec.id)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("case", list(CASES))
def test_real_architecture_trains_resumes_exports_loads_generates_and_evaluates(case, work, cache):
    xl = case.startswith("sdxl")
    args = [*CASES[case], *RUN, f"paths.cache_dir={cache}"]

    first = run_cli("dbexp.train", *args, cwd=work, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = _run_dir(first.stdout)
    assert (run_dir / "checkpoints" / "last.ckpt").is_symlink()

    resumed = run_cli("dbexp.train", *args, "ckpt_path=last", "trainer.max_steps=3", cwd=work, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stderr
    second = _run_dir(resumed.stdout)
    metrics = json.loads((second / "metrics.json").read_text())
    assert (metrics["step"], metrics["train/steps_run"]) == (3, 1)
    assert "eval/score" in metrics

    export = second / "pipeline"
    lora = "lora" in case
    single = export / SINGLE_FILE["lora" if lora else "full"]
    for file in export.rglob("*.safetensors"):
        meta = read_metadata(file)
        assert json.loads(meta["dbexp.metrics"])["step"] == 3, file
    if lora:  # diffusers' LoRA file changes the base's picture; the kohya file draws what it draws
        base = json.loads((export / "dbexp.json").read_text())["base"]["pretrained"]
        pipeline = _load(base, xl=xl)
        before = _draw(pipeline)
        pipeline.load_lora_weights(export)
        expected = _draw(pipeline)
        assert np.isfinite(expected).all() and not np.allclose(expected, before)
        del pipeline  # SDXL: 14 GB of fp32 weights — never two pipelines at once
        pipeline = _load(base, xl=xl)
        pipeline.load_lora_weights(str(export), weight_name=single.name)
        np.testing.assert_allclose(_draw(pipeline), expected, atol=1e-4)
        del pipeline
    else:  # float16 on disk; the single file draws what the folder draws
        unet_file = export / "unet" / "diffusion_pytorch_model.safetensors"
        assert unet_file.stat().st_size < 2.01 * 859_520_964  # float16: 2 bytes a weight of SD1.5's UNet
        expected = _draw(_load(export))
        from_single = StableDiffusionPipeline.from_single_file(
            single, config=str(export), local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
        np.testing.assert_allclose(_draw(from_single), expected, atol=1e-5)

    generated = run_cli(
        "dbexp.generate",
        f"pipeline={export}",
        "prompt=a sks dog",
        "num_images=1",
        "num_inference_steps=2",
        "resolution=64",
        cwd=work,
        timeout=1800,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    evaluated = run_cli(
        "dbexp.evaluate",
        f"pipeline={export}",
        "data.subject=dog",
        "resolution=64",
        "eval.metrics=tiny",
        "eval.num_prompts=1",
        "eval.images_per_prompt=2",
        "eval.pres_images=1",
        "eval.num_inference_steps=2",
        f"paths.cache_dir={cache}",
        cwd=work,
        timeout=1800,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    out = Path(re.findall(r"^evaluation dir: (\S+)", evaluated.stdout, flags=re.M)[-1])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["resolution"] == 64 and "eval/score" in saved["guidance_scales"]["7.5"]
