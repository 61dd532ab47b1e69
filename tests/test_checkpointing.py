"""Checkpoints: bit-identical resume, atomic writes and links, weights-only reads, ckpt_path=last, keep-last-K."""

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dbexp.checkpointing import AtomicCheckpointIO, StepCheckpoint, resolve_ckpt_path
from dbexp.dreambooth_module import DreamBoothModule
from dbexp.errors import UserInputError
from dbexp.run import save_config
from dbexp.train import run
from tests.conftest import comparable


def _crash_at(step: int):
    """A kill at ``step`` (after its checkpoint callbacks ran): no config key changes, as with a real kill."""

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.trainer.global_step >= step:
            raise RuntimeError(f"simulated crash at step {self.trainer.global_step}")

    return on_train_batch_end


def _final_unet(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("model", ["tiny", "tiny_xl", "tiny_xl-buckets"])  # SDXL's two encoders and time ids
def test_a_stopped_and_resumed_run_ends_bit_identical(make_cfg, monkeypatch, model, request):
    bucketed = []
    if model.endswith("-buckets"):  # portrait, landscape and square photos in batches of 2, one bucket each
        folder = request.getfixturevalue("mixed_photos")
        bucketed = ["data.buckets=true", "data.bucket_step=8", f"data.instance_dir={folder}", "data.class_noun=dog"]
        bucketed += ["data.batch_size=2", "prior.num_class_images=5"]
    steps = [
        f"model={model.removesuffix('-buckets')}",
        *bucketed,
        "trainer.max_steps=6",
        "finetune.train_text_encoder=true",
        "optimizer.lr=1e-3",
        "optimizer.lr_schedule=cosine",
    ]
    straight_cfg = make_cfg(*steps, name="2026-01-01_00-00-00")
    straight = run(straight_cfg)

    crashed_cfg = make_cfg(*steps, name="2026-01-02_00-00-00")
    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="simulated crash at step 3"):
        patch.setattr(DreamBoothModule, "on_train_batch_end", _crash_at(3), raising=False)
        run(crashed_cfg)
    crashed_dir = Path(crashed_cfg.paths.output_dir)
    assert torch.load(crashed_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2

    resumed_cfg = make_cfg(*steps, "ckpt_path=last", name="2026-01-03_00-00-00")
    resumed = run(resumed_cfg)
    assert (straight.pop("train/steps_run"), resumed.pop("train/steps_run")) == (6, 4)  # resumed from step 2
    assert comparable(resumed) == comparable(straight)  # same final losses, learning rates, metrics, step

    a = _final_unet(Path(straight_cfg.paths.output_dir))
    b = _final_unet(Path(resumed_cfg.paths.output_dir))
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    states_a, states_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert states_a.keys() == states_b.keys()
    for sa, sb in zip(states_a.values(), states_b.values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_only_the_last_k_step_checkpoints_are_kept(make_cfg):
    cfg = make_cfg("trainer.max_steps=7", "callbacks.model_checkpoint.save_top_k=2")
    run(cfg)
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["last.ckpt", "step_000006.ckpt", "step_000007.ckpt"]  # step 7: saved at the end
    last = folder / "last.ckpt"  # one copy per saved step: last.ckpt links to the newest
    assert last.is_symlink() and os.readlink(last) == "step_000007.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 7


def test_last_links_to_a_whole_file_while_the_older_step_file_goes(make_cfg, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    cfg = make_cfg(
        "trainer.max_steps=3",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint.save_top_k=1",
    )
    last, removed = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", []
    remove = ModelCheckpoint._remove_checkpoint

    def checked(self, trainer, filepath):  # a kill here must find last.ckpt loadable
        removed.append((Path(filepath).name, torch.load(last, weights_only=True)["global_step"]))
        remove(self, trainer, filepath)

    monkeypatch.setattr(ModelCheckpoint, "_remove_checkpoint", checked)
    run(cfg)
    assert removed == [("step_000001.ckpt", 2), ("step_000002.ckpt", 3)]
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step_000003.ckpt"]


def test_a_kill_while_linking_last_leaves_the_previous_link(tmp_path, monkeypatch):
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda: None))
    for step in (1, 2):
        torch.save({"global_step": step}, tmp_path / f"step_{step}.ckpt")
    last = str(tmp_path / "last.ckpt")
    StepCheckpoint._link_checkpoint(trainer, str(tmp_path / "step_1.ckpt"), last)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while linking")

    monkeypatch.setattr(os, "symlink", killed)
    with pytest.raises(KeyboardInterrupt):
        StepCheckpoint._link_checkpoint(trainer, str(tmp_path / "step_2.ckpt"), last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step_1.ckpt", "step_2.ckpt"]
    StepCheckpoint._link_checkpoint(trainer, str(tmp_path / "step_2.ckpt"), last)
    assert torch.load(last, weights_only=True)["global_step"] == 2 and os.readlink(last) == "step_2.ckpt"


def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)


def test_ckpt_path_last_finds_the_newest_run_of_the_same_setting(make_cfg):
    def fake_run(name, *overrides):
        cfg = make_cfg(*overrides, name=name)
        run_dir = Path(cfg.paths.output_dir)
        save_config(cfg, run_dir)
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
        return run_dir

    fake_run("2026-01-01_00-00-00")
    newest = fake_run("2026-01-02_00-00-00", "trainer.max_steps=9", "logger=none")  # same setting
    fake_run("2026-01-03_00-00-00", "optimizer.lr=1e-4")  # another setting
    cfg = make_cfg("ckpt_path=last", name="2026-01-04_00-00-00")
    assert resolve_ckpt_path("last", cfg, cfg.paths.runs_dir) == str(newest / "checkpoints" / "last.ckpt")

    other = make_cfg("ckpt_path=last", "seed=7", name="2026-01-05_00-00-00")
    with pytest.raises(UserInputError, match="no earlier run of this setting"):
        resolve_ckpt_path("last", other, other.paths.runs_dir)
    with pytest.raises(UserInputError, match="no such checkpoint file"):
        resolve_ckpt_path("missing.ckpt", other, other.paths.runs_dir)


def test_a_checkpoint_of_another_setting_is_refused(make_cfg):
    first = make_cfg(name="2026-01-01_00-00-00")
    run(first)
    checkpoint = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    other = make_cfg("finetune.train_text_encoder=true", f"ckpt_path={checkpoint}", name="2026-01-02_00-00-00")
    with pytest.raises(UserInputError, match=r"lacks \d+ of this run's trained weights \(e.g. text_encoder\."):
        run(other)
