"""The commands as users type them: exit codes, one-line errors, printed locations, DDP."""

import json
import re
import shutil
from pathlib import Path

import pytest

from dbexp.dreambench import BUNDLED_ROOT
from tests.conftest import run_cli

FAST = ["debug=fast", "callbacks.progress_bar=null"]
#: What a run needs and a question about the command does not (~10 s to import on two cores).
HEAVY = ("torch", "lightning", "diffusers", "transformers", "peft")
COMMANDS = ("dbexp.train", "dbexp.generate", "dbexp.evaluate", "dbexp.compare", "dbexp.cache", "dbexp.bench")


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dbexp: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def test_bad_input_exits_2_with_one_line_before_any_model_loads(tmp_path):
    result = run_cli(
        "dbexp.train",
        f"data.instance_dir={tmp_path / 'missing'}",
        "data.class_noun=mug",
        f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "data.instance_dir=" in line and "does not exist" in line
    assert not (tmp_path / "cache").exists()  # nothing was built or loaded


def test_unknown_group_option_is_refused_by_hydra(tmp_path):
    result = run_cli("dbexp.train", "model=sd99", cwd=tmp_path, hide=HEAVY)  # before torch loads
    assert result.returncode != 0
    assert "sd99" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_help_answers_before_torch_loads(tmp_path, command):
    result = run_cli(command, "--help", cwd=tmp_path, hide=HEAVY)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]


def test_a_composed_config_and_a_wrong_key_answer_before_torch_loads(tmp_path):
    shown = run_cli("dbexp.train", "--config-name", "quick_cpu", "--cfg", "job", cwd=tmp_path, hide=HEAVY)
    assert shown.returncode == 0 and "task_name: sweep_quick_cpu" in shown.stdout, shown.stderr[-2000:]
    for command, key in [("dbexp.train", "trainer.max_stepz=3"), ("dbexp.generate", "num_imagez=2")]:
        wrong = run_cli(command, key, cwd=tmp_path, hide=HEAVY)
        assert wrong.returncode != 0 and key.split("=")[0] in wrong.stderr, wrong.stderr[-2000:]
        assert "No module named" not in wrong.stderr


def test_offline_hub_id_gives_one_line_with_the_fix(tmp_path):
    result = run_cli("dbexp.train", f"paths.cache_dir={tmp_path / 'cache'}", *FAST, "model=sd15", cwd=tmp_path)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "model.pretrained=stable-diffusion-v1-5/stable-diffusion-v1-5" in line
    assert "set model.pretrained=/path/to/that/folder" in line


@pytest.mark.slow
def test_train_resume_and_generate_from_the_command_line(tmp_path, cache_dir):
    photos = tmp_path / "my photos"
    shutil.copytree(BUNDLED_ROOT / "dog", photos)
    snapshot = {p.name: p.read_bytes() for p in photos.iterdir()}
    args = [f"data.instance_dir={photos}", "data.class_noun=dog", f"paths.cache_dir={cache_dir}", *FAST]

    first = run_cli("dbexp.train", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dirs = re.findall(r"^run dir: (\S+)", first.stdout, flags=re.M)
    assert len(run_dirs) == 2 and run_dirs[0] == run_dirs[1]  # printed at start and end
    run_dir = Path(run_dirs[0])
    assert run_dir.parent == tmp_path / "outputs" / "debug" / "runs"
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 4
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == snapshot  # the user's folder is untouched

    resumed = run_cli("dbexp.train", *args, "ckpt_path=last", "trainer.max_steps=6", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # last.ckpt links to the newest step file; the resume names that file
    assert f"Restored all states from the checkpoint at {run_dir}/checkpoints/step_000004.ckpt" in resumed.stderr
    second = Path(re.findall(r"^run dir: (\S+)", resumed.stdout, flags=re.M)[0])
    assert json.loads((second / "metrics.json").read_text())["step"] == 6

    generated = run_cli(
        "dbexp.generate",
        f"pipeline={second / 'pipeline'}",
        "prompt=a sks dog on the beach",
        "negative_prompt=blurry",
        "guidance_scale=7.5",
        "seed=0",
        "num_images=3",
        "num_inference_steps=3",
        cwd=tmp_path,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    out = Path(re.search(r"written to (\S+)", generated.stdout).group(1))
    assert sorted(p.name for p in out.glob("*.png")) == ["grid.png", "seed_0000.png", "seed_0001.png", "seed_0002.png"]

    missing = run_cli("dbexp.generate", f"pipeline={tmp_path}", "prompt=x", cwd=tmp_path)
    assert missing.returncode == 2 and "not a diffusers pipeline folder" in _one_error_line(missing.stderr)


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_run_folder(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train", "--multirun", "optimizer.lr=1e-5,1e-4", f"paths.cache_dir={cache_dir}", *FAST, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "debug" / "multiruns").iterdir())
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    lrs = [json.loads((sweep / job / "metrics.json").read_text())["train/lr"] for job in ("0", "1")]
    assert lrs == pytest.approx([1e-5, 1e-4])


def test_a_home_path_as_typed_in_a_shell_reaches_the_run(tmp_path):
    """`data.instance_dir=~/photos/mug` as the README shows: no shell expands that `~`, Hydra rejects it."""
    home = tmp_path / "home"
    result = run_cli(
        "dbexp.train",
        "model=sd21",
        "data.instance_dir=~/photos/mug",
        "data.class_noun=mug",
        f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
        env={"HOME": str(home)},
    )
    assert result.returncode == 2
    assert f"data.instance_dir={home}/photos/mug: folder does not exist" in _one_error_line(result.stderr)


def test_expand_home_in_overrides(monkeypatch):
    from dbexp.console import expand_home_in_overrides

    monkeypatch.setenv("HOME", "/home/me")
    argv = ["train.py", "data.instance_dir=~/a", "+x=~", "prompt=a ~ b", "--multirun", "~key"]
    assert expand_home_in_overrides(argv) == [
        "train.py",
        "data.instance_dir=/home/me/a",
        "+x=/home/me",
        "prompt=a ~ b",
        "--multirun",
        "~key",
    ]


def test_missing_metric_models_stop_the_run_before_training(tmp_path):
    result = run_cli(
        "dbexp.train", "eval.metrics=dreambench", f"paths.cache_dir={tmp_path / 'cache'}", *FAST, cwd=tmp_path
    )
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "eval.dino_model=facebook/dino-vits16: could not get it" in line and "set eval.dino_model=/path" in line
    assert "Epoch 0" not in result.stderr and "class images" not in result.stderr  # no expensive work began
