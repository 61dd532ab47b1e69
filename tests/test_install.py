"""The locked install: requirements.lock satisfies pyproject's ranges, the venv is the lock, and dbexp also
works as an installed wheel (conf/ and the sweep presets inside the package, the console commands)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

LOCK = REPO / "requirements.lock"
COMMANDS = ("dbexp-train", "dbexp-generate", "dbexp-evaluate", "dbexp-compare", "dbexp-cache", "dbexp-bench")


def locked() -> dict[str, Version]:
    """name → pinned version; every entry of the lock is ``name==version`` with hashes."""
    pins, entry = {}, None
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+) \\", line)
            assert match, f"requirements.lock: not a hashed pin: {line!r}"
            entry = canonicalize_name(match[1])
            pins[entry] = Version(match[2])
        elif line.strip().startswith("--hash=sha256:"):
            assert entry is not None
    return pins


def requirements() -> list[tuple[str, Requirement]]:
    """(extra or "", requirement) for every dependency pyproject declares, dbexp's own extras excepted."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [("", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        found += [(extra, Requirement(r)) for r in reqs if canonicalize_name(Requirement(r).name) != "dbexp"]
    return found


def test_every_entry_of_the_lock_is_pinned_and_hashed():
    text = LOCK.read_text()
    pins = locked()
    assert len(pins) > 100 and text.count("==") == len(pins)
    assert text.count("--hash=sha256:") >= len(pins)
    assert "torchvision" not in pins  # no CPU build here: nothing may pull it in
    assert str(pins["torch"]).startswith("2.13.0")  # the local CPU wheel


def test_the_lock_satisfies_every_range_in_pyproject():
    pins = locked()
    for extra, req in requirements():
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} ({extra or 'dependencies'}) is not in requirements.lock: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock has {name}=={pins[name]}, not {req}"


def test_transformers_stays_below_the_release_that_needs_an_unreleased_peft():
    """transformers 5.24 checks for peft >= 0.22 (not released): text-encoder LoRA fails. The range says so."""
    (transformers,) = [r for _, r in requirements() if r.name == "transformers"]
    assert not transformers.specifier.contains("5.24.0")
    pins = locked()
    assert pins["peft"] >= Version("0.20")


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (REPO / ".venv").resolve(), reason="runs in make install's .venv only"
)
def test_the_venv_holds_exactly_the_lock():
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in importlib.metadata.distributions()}
    pins = locked()
    assert {n: v for n, v in installed.items() if n in pins} == pins
    assert set(installed) - set(pins) <= {"dbexp", "pip"}  # dbexp itself; the venv's own pip


def sh(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)


def wheel_venv(tmp: Path) -> tuple[Path, Path]:
    """dbexp built as a wheel from a copy of the working tree, installed into a fresh venv that borrows the
    locked packages of this interpreter (a ``.pth`` line) — not its editable dbexp."""
    source = tmp / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv*", "outputs", "build", "*.egg-info", "__pycache__", ".*cache"),
    )
    dist = tmp / "dist"
    sh(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        dist,
        ".",
        cwd=source,
        check=True,
    )
    (wheel,) = dist.glob("dbexp-*.whl")
    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv, check=True)
    python = venv / "bin" / "python"
    purelib = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", check=True).stdout.strip()
    (Path(purelib) / "locked_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel, check=True)
    return wheel, venv


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_runs_from_an_unrelated_folder(tmp_path):
    import zipfile

    wheel, venv = wheel_venv(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "dbexp/conf/train.yaml" in names and "dbexp/conf/finetune/toy.yaml" in names
    assert "dbexp/sweeps/quick_cpu.yaml" in names and "dbexp/sweeps/hydra/launcher/slurm_one_gpu.yaml" in names
    assert "dbexp/assets/toy/model/unet/diffusion_pytorch_model.safetensors" in names
    assert "hydra_plugins/dbexp_optuna_sweeper/sweeper.py" in names
    assert "hydra_plugins/dbexp_sweeps/__init__.py" in names
    assert not [n for n in names if n.startswith("tests/")]
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert all(f"{command} =" in entry_points for command in COMMANDS)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf_home")}
    env.pop("PYTHONPATH", None)
    python = venv / "bin" / "python"
    where = sh(
        python,
        "-c",
        "import dbexp, hydra_plugins.dbexp_sweeps as s; print(dbexp.__file__, s.__file__)",
        cwd=work,
        env=env,
    )
    where = where.stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the wheel's files, not the checkout
    check = sh(sys.executable, "-m", "pip", "--python", python, "check")
    assert check.returncode == 0, check.stdout  # the wheel's requirements are met by the locked packages
    for command in COMMANDS:
        result = sh(venv / "bin" / command, "--help", cwd=work, env=env)
        assert result.returncode == 0 and result.stdout.strip(), (command, result.stderr[-1000:])
    preset = sh(venv / "bin" / "dbexp-train", "--config-name", "quick_cpu", "--cfg", "job", cwd=work, env=env)
    assert preset.returncode == 0 and "task_name: sweep_quick_cpu" in preset.stdout, preset.stderr[-2000:]

    run = ["trainer.max_steps=2", "prior.num_class_images=2", "eval.num_prompts=1", "eval.images_per_prompt=2"]
    run += ["eval.pres_images=2", "eval.baseline=false", "callbacks.progress_bar=null"]
    result = sh(python, "-m", "dbexp.train", *run, cwd=work, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (work / "outputs" / "train" / "runs").iterdir()
    assert f"run dir: {run_dir}" in result.stdout or f"run dir: {run_dir.relative_to(work)}" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 2 and "eval/subject_fidelity" in metrics
    assert (run_dir / "pipeline" / "model_index.json").is_file()
