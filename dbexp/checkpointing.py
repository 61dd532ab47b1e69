"""Checkpoints: atomic, weights-only writes and reads; one copy per saved step (``last.ckpt`` links to the
newest); ``ckpt_path=last`` finds the run to resume."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from dbexp.atomic_files import atomic_path
from dbexp.config_roles import resume_setting
from dbexp.errors import UserInputError
from dbexp.fingerprint import fields_key


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file, fsyncs and renames, so a kill while saving leaves the old file whole;
    reads with ``weights_only=True``, so loading a checkpoint never unpickles arbitrary objects."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, durable=True) as staging, open(staging, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` every N steps that also saves when training ends between two of them; with
    ``save_last: link``, ``last.ckpt`` is a link to the newest step file, never a second copy."""

    @staticmethod
    def _link_checkpoint(trainer, filepath: str, linkpath: str) -> None:
        """Point ``linkpath`` at ``filepath``: a relative symbolic link (a hard link where the file system has
        none) made beside it and renamed over the old one, so a kill leaves the previous link in place.
        Lightning's own removes the old link first and falls back to copying the file."""
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            with atomic_path(linkpath) as staging:
                try:
                    os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), staging)
                except OSError:
                    os.link(filepath, staging)
        trainer.strategy.barrier()

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        """Before a step file ``last.ckpt`` links to goes (``save_top_k: 1``), link it to the new one."""
        last, newest, going = self.last_model_path, self._last_checkpoint_saved, os.path.realpath(filepath)
        points_there = bool(last) and os.path.islink(last) and os.path.realpath(last) == going
        if self.save_last == "link" and points_there and newest and os.path.realpath(newest) != going:
            self._link_checkpoint(trainer, newest, last)
        super()._remove_checkpoint(trainer, filepath)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run or self._last_global_step_saved == trainer.global_step:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


def release_finished(folder: Path, weights_elsewhere: bool) -> int:
    """A finished sweep trial is never resumed: what only resuming needs goes (an SD1.5 full fine-tune's step
    file is 10.3 GB, two thirds of it AdamW's moments). With its trained weights kept elsewhere (the
    trained-weights cache, the export) or of no use (a pruned trial), the whole ``checkpoints/`` goes; else the
    newest step file stays with its weights only (``state_dict``, step), loadable as before. Returns bytes freed."""
    if not folder.is_dir():
        return 0
    files = [f for f in folder.iterdir() if f.is_file() and not f.is_symlink()]
    before = sum(f.stat().st_size for f in files)
    last = folder / "last.ckpt"  # names the newest step file (else: the latest written, then the highest name)
    newest = folder / last.resolve().name if last.is_symlink() and last.resolve().is_file() else None
    newest = newest or max(files, key=lambda f: (f.stat().st_mtime, f.name), default=None)
    if weights_elsewhere or newest is None:
        shutil.rmtree(folder)
        return before
    # mmap: the tensors are read once, as they are written, not all held in memory (10 GB for SD1.5)
    state = torch.load(newest, map_location="cpu", weights_only=True, mmap=True)
    kept = {k: state[k] for k in ("state_dict", "global_step", "epoch", "pytorch-lightning_version") if k in state}
    with atomic_path(newest, durable=True) as staging, open(staging, "wb") as f:
        torch.save(kept, f)
    del state
    for f in folder.iterdir():
        if f.name != newest.name and (f.is_symlink() or f.is_file()):
            f.unlink()
    if not (folder / "last.ckpt").exists():
        (folder / "last.ckpt").symlink_to(newest.name)
    return before - newest.stat().st_size


def setting_fingerprint(cfg: DictConfig | dict) -> str:
    """A hash of the config keys that shape training (:func:`dbexp.config_roles.resume_setting`)."""
    return fields_key(resume_setting(cfg), stringify=True)


def resolve_ckpt_path(ckpt_path: str | None, cfg: DictConfig, runs_root: str | Path) -> str | None:
    """``None``, an existing checkpoint file, or — for ``last`` — the newest run of this setting's last.ckpt."""
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise UserInputError(f"ckpt_path={ckpt_path}: no such checkpoint file (or use ckpt_path=last)")
        return str(path.resolve())
    wanted = setting_fingerprint(cfg)
    here = Path(cfg.paths.output_dir).resolve() if "output_dir" in cfg.get("paths", {}) else None
    for run in sorted(Path(runs_root).glob("*/"), key=lambda p: p.name, reverse=True):
        saved, last = run / ".hydra" / "config.yaml", run / "checkpoints" / "last.ckpt"
        if run.resolve() == here or not (saved.is_file() and last.is_file()):
            continue
        if setting_fingerprint(OmegaConf.load(saved)) == wanted:
            return str(last.resolve())
    raise UserInputError(
        f"ckpt_path=last: no earlier run of this setting with checkpoints/last.ckpt under {runs_root}; "
        "run without ckpt_path, or give ckpt_path=<path to a .ckpt>"
    )
