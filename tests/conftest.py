"""Shared fixtures: configs composed with Hydra's compose API against temporary folders, CPU only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# `make test` runs two pytest workers on the two cores (pytest-xdist): each gets one torch thread, and so
# do the processes it starts (they inherit OMP_NUM_THREADS). Two 2-thread torch processes on two cores
# slow each other down several times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from dbexp import CONF_DIR  # noqa: E402
from dbexp.config import register_configs  # noqa: E402

register_configs()

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR

#: A run in seconds: the random tiny model (the DreamBench dog, DreamBench metrics on tiny embedders),
#: few steps, few and cheap class images and samples. The toy model has its own tests.
FAST = [
    "model=tiny",
    "trainer.max_steps=4",
    "trainer.log_every_n_steps=1",
    "prior.num_class_images=2",
    "prior.num_inference_steps=2",
    "eval.seeds=[0]",
    "eval.prompts=['a photo of {token} {class_noun}','a photo of {class_noun}']",
    "eval.num_inference_steps=2",
    "eval.every_n_steps=2",
    "eval.num_prompts=2",
    "eval.images_per_prompt=2",
    "eval.pres_images=2",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.progress_bar=null",
]


def pytest_configure(config) -> None:
    # here, not in pyproject.toml: a changed pyproject.toml makes `make` rebuild the venv
    config.addinivalue_line(
        "markers", "sd: the real SD architectures at 64 px (minutes each, up to 16 GB): make test-sd only"
    )
    config.addinivalue_line(
        "markers",
        "engines: real PostgreSQL, MLflow server and SLURM started on 127.0.0.1 (tests/engines): make test-engines",
    )


#: The longest test files (minutes each on 2 cores): started first, so the short files fill the other worker
#: instead of one worker finishing a long file alone at the end (`make test` distributes whole files, in this
#: order: --no-loadscope-reorder, or xdist starts the files with the most tests first).
LONGEST_FIRST = (
    "test_toy_behaviour.py",
    "test_toy_sweep.py",
    "test_sweeper.py",
    "test_cli.py",
    "test_tracking.py",
    "test_bench.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))  # stable: files stay whole


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session: the tiny model is built once."""
    return tmp_path_factory.mktemp("cache")


def compose_train(tmp: Path, cache: Path, *overrides: str, name: str = "run") -> DictConfig:
    """The train config for a run folder ``tmp/runs/<name>``, as the CLI would compose it."""
    paths = [
        f"paths.root_dir={tmp}",
        f"paths.log_dir={tmp}",
        f"paths.runs_dir={tmp / 'runs'}",
        f"paths.output_dir={tmp / 'runs' / name}",
        f"paths.cache_dir={cache}",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*paths, *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    def make(*overrides: str, name: str = "run", fast: bool = True) -> DictConfig:
        return compose_train(tmp_path, cache_dir, *(FAST if fast else []), *overrides, name=name)

    return make


#: ``sitecustomize`` of a process whose ``$DBEXP_TEST_HIDE`` modules (and their submodules) cannot be imported
#: or found, as if their package were not installed (Hydra's plugin scan skips a hidden plugin too).
HIDE_MODULES = """
import importlib.abc, os, pkgutil, sys
HIDDEN = tuple(os.environ["DBEXP_TEST_HIDE"].split(","))
def hidden(name):
    return name in HIDDEN or name.startswith(tuple(h + "." for h in HIDDEN))
class HideModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if hidden(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, HideModules())
walk_packages = pkgutil.walk_packages  # Hydra's plugin scan loads hydra_plugins.* by file, past the finder
pkgutil.walk_packages = lambda *a, **k: (m for m in walk_packages(*a, **k) if not hidden(m.name))
"""


def run_cli(
    module: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 600, hide: tuple[str, ...] = ()
):
    """``python -m <module> <args>`` in ``cwd`` with an isolated, offline Hugging Face cache; ``hide``: modules
    the process cannot import (a missing optional package)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf_home"), **(env or {})}
    if hide:
        site = cwd / "hide_modules"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(HIDE_MODULES)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), full_env.get("PYTHONPATH")]))
        full_env["DBEXP_TEST_HIDE"] = ",".join(hide)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def comparable(metrics: dict) -> dict:
    """A run's metrics without the evaluation block (it records wall-clock seconds)."""
    return {k: v for k, v in metrics.items() if k != "evaluation"}


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Selenium. The Debian packages are installed when missing (where the
    tests run as root or with passwordless sudo); the test is skipped only where that cannot be done."""
    import shutil

    if not shutil.which("chromedriver"):
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        install = [*sudo, "apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
        for command in ([*sudo, "apt-get", "update", "-q"], install):
            subprocess.run(
                command, capture_output=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            )
        if not shutil.which("chromedriver"):
            pytest.skip("chromium / chromium-driver are not installed and could not be installed here")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,2000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def photo(width: int, height: int, colour):
    """A made-up subject photo: a light ellipse on ``colour``, ``width`` × ``height``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), colour)
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(250, 250, 250))
    return image


@pytest.fixture
def mixed_photos(tmp_path) -> Path:
    """Two portrait, two landscape and one square photo of one subject (``data.buckets`` tests)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (w, h) in enumerate([(300, 400), (330, 440), (400, 300), (440, 330), (300, 300)]):
        photo(w, h, (40 * i, 90, 160)).save(folder / f"{i}.png")
    return folder
