"""Owner of ``conf/data``: which photos, which prompt, and the stream of training samples.

Training is step-based, so the data is an endless stream in which the k-th sample (its image,
crop, flip — and, in the module, its noise and timestep) is a pure function of (seed, k).
A resumed run starts the stream at the sample the checkpoint reached, which is what makes a
stopped-and-resumed run end bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dbexp.config import DataConfig
from dbexp.dreambench import BUNDLED_ROOT, read_classes
from dbexp.errors import UserInputError
from dbexp.images import load_image_folder

log = logging.getLogger(__name__)

#: Stream ids, so instance and class samples never share random numbers.
INSTANCE_STREAM, CLASS_STREAM = 0, 1
#: Purposes of random numbers: augmentation and pass order here, diffusion noise in the module.
AUGMENT, NOISE, ORDER = 0, 1, 2


@dataclass
class Subject:
    """The resolved subject: where its photos are and what class it belongs to."""

    instance_dir: Path
    class_noun: str | None
    key: str  # the config key the folder came from, for error messages


def resolve_subject(cfg: DataConfig) -> Subject:
    """``data.instance_dir`` (with ``data.class_noun``) wins; else ``data.subject`` in a DreamBench root."""
    if cfg.instance_dir:
        if cfg.subject:
            log.info("data.instance_dir is set: data.subject=%s is ignored", cfg.subject)
        return Subject(Path(cfg.instance_dir).expanduser(), cfg.class_noun, "data.instance_dir")
    if not cfg.subject:
        raise UserInputError("no subject: set data.subject=<name> (DreamBench) or data.instance_dir=<folder>")
    root = Path(cfg.dreambench_root).expanduser() if cfg.dreambench_root else BUNDLED_ROOT
    folder = root / cfg.subject
    if not folder.is_dir():
        available = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        hint = f"available: {', '.join(available)}" if available else f"{root} is not a DreamBench folder"
        where = "" if cfg.dreambench_root else " (the bundled copy has only 'dog'; set data.dreambench_root)"
        raise UserInputError(f"data.subject={cfg.subject}: no such subject in {root}{where}; {hint}")
    class_noun = cfg.class_noun
    if class_noun is None:
        try:
            class_noun = read_classes(root).get(cfg.subject)
        except FileNotFoundError:
            class_noun = None
    return Subject(folder, class_noun, f"data.subject={cfg.subject} ({folder})")


def check_data_config(cfg: DataConfig) -> None:
    if cfg.resolution <= 0 or cfg.resolution % 8:
        raise UserInputError(
            f"data.resolution={cfg.resolution}: must be a positive multiple of 8 (the VAE downsamples by 8)"
        )
    if cfg.batch_size < 1:
        raise UserInputError(f"data.batch_size={cfg.batch_size}: must be >= 1")
    if not cfg.token.strip():
        raise UserInputError("data.token is empty: set a rare identifier such as sks")
    fields = {name for _, name, _, _ in string.Formatter().parse(cfg.prompt_template) if name is not None}
    unknown = fields - {"token", "class_noun"}
    if unknown:
        raise UserInputError(
            f"data.prompt_template={cfg.prompt_template!r}: unknown placeholder(s) {sorted(unknown)}; "
            "use {token} and {class_noun}"
        )
    if "token" not in fields:
        raise UserInputError(
            f"data.prompt_template={cfg.prompt_template!r}: has no {{token}}, so nothing binds the subject"
        )


def instance_prompt(cfg: DataConfig, class_noun: str | None) -> str:
    if "{class_noun}" in cfg.prompt_template and not class_noun:
        raise UserInputError(
            "data.class_noun is not set but data.prompt_template uses {class_noun}: set data.class_noun=<noun>"
        )
    return cfg.prompt_template.format(token=cfg.token, class_noun=class_noun or "")


def load_subject_images(subject: Subject) -> list[Image.Image]:
    """Every photo of the subject, decoded and validated (a bad file is named, never skipped)."""
    return load_image_folder(subject.instance_dir, subject.key)


def sample_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one sample's random numbers, well mixed from (seed, stream, index, purpose)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def fitted_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) with the shorter side scaled to ``resolution``."""
    scale = resolution / min(width, height)
    return max(resolution, round(width * scale)), max(resolution, round(height * scale))


def fit_to_square(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution`` (crop happens per sample)."""
    return image.resize(fitted_size(*image.size, resolution), Image.Resampling.BICUBIC, reducing_gap=3.0)


def center_geometry(image: Image.Image, resolution: int) -> torch.Tensor:
    """A sample's ``geometry`` (see :class:`ImageStream`) for the centre crop of ``image``, unflipped."""
    width, height = fitted_size(*image.size, resolution)
    top, left = (height - resolution) // 2, (width - resolution) // 2
    return torch.tensor([image.height, image.width, top, left, resolution, resolution])


def center_square(image: Image.Image, resolution: int) -> Image.Image:
    """The centre crop a sample uses with ``data.center_crop`` (what the latent cache encodes)."""
    image = fit_to_square(image, resolution)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB → float CHW in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageStream:
    """Samples of one image set: each pass over the set is a fresh permutation.

    A sample is ``{"pixels"}``, or ``{"latent_mean", "latent_std"}`` when ``latents`` (the VAE
    posterior of each image's centre crop, and of its mirror image) are given — and ``{"geometry"}``: the
    photo's original height and width, the crop's top and left in the resized photo (mirrored with a flip)
    and the crop's height and width: SDXL's time ids, from each photo's real crop.
    """

    def __init__(
        self,
        images: list[Image.Image],
        stream: int,
        seed: int,
        resolution: int,
        center_crop: bool,
        random_flip: bool,
        latents: list[dict[str, torch.Tensor]] | None = None,
    ) -> None:
        if latents is not None and (not center_crop or len(latents) != len(images)):
            raise ValueError("cached latents need centre crops and one entry per image")
        self.original_sizes = [(img.height, img.width) for img in images]
        self.images = [fit_to_square(img, resolution) for img in images]
        self.stream, self.seed, self.resolution = stream, seed, resolution
        self.center_crop, self.random_flip, self.latents = center_crop, random_flip, latents

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self.images)
        order = np.random.default_rng(sample_seed(self.seed, self.stream, index // n, ORDER)).permutation(n)
        which = int(order[index % n])
        image = self.images[which]
        rng = np.random.default_rng(sample_seed(self.seed, self.stream, index, AUGMENT))
        room_x, room_y = image.width - self.resolution, image.height - self.resolution
        if self.center_crop:
            left, top = room_x // 2, room_y // 2
        else:
            left, top = int(rng.integers(0, room_x + 1)), int(rng.integers(0, room_y + 1))
        flip = self.random_flip and rng.random() < 0.5
        seen_left = image.width - left - self.resolution if flip else left  # where the crop is in what the model sees
        geometry = torch.tensor([*self.original_sizes[which], top, seen_left, self.resolution, self.resolution])
        if self.latents is not None:
            suffix = "_flipped" if flip else ""
            entry = self.latents[which]
            return {"latent_mean": entry[f"mean{suffix}"], "latent_std": entry[f"std{suffix}"], "geometry": geometry}
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return {"pixels": to_tensor(image), "geometry": geometry}


class DreamBoothStream(IterableDataset):
    """Endless (instance, class) pairs from global sample ``start`` on, sharded over ranks and workers.

    Rank r of W takes global samples start + r, start + r + W, …; DataLoader workers take
    whole batches in turn, so the order the model sees does not depend on ``num_workers``.
    """

    def __init__(
        self,
        instances: ImageStream,
        classes: ImageStream | None,
        batch_size: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.instances, self.classes, self.batch_size = instances, classes, batch_size
        self.start, self.rank, self.world_size = start, rank, world_size

    def __iter__(self):
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        batch = worker_id
        while True:
            for local in range(batch * self.batch_size, (batch + 1) * self.batch_size):
                index = self.start + local * self.world_size + self.rank
                item = {f"instance_{k}": v for k, v in self.instances[index].items()} | {"instance_index": index}
                if self.classes is not None:
                    item |= {f"class_{k}": v for k, v in self.classes[index].items()} | {"class_index": index}
                yield item
            batch += num_workers


class DreamBoothDataModule(L.LightningDataModule):
    """Instance photos, and class images when the prior loss is on — as pixels, or as cached VAE latents."""

    def __init__(
        self,
        cfg: DataConfig,
        instance_images: list[Image.Image],
        class_images: list[Image.Image] | None,
        seed: int,
        instance_latents: list[dict[str, torch.Tensor]] | None = None,
        class_latents: list[dict[str, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.seed = cfg, seed
        crops = (cfg.resolution, cfg.center_crop, cfg.random_flip)
        self.instances = ImageStream(instance_images, INSTANCE_STREAM, seed, *crops, latents=instance_latents)
        self.classes = (
            ImageStream(class_images, CLASS_STREAM, seed, *crops, latents=class_latents) if class_images else None
        )

    def train_dataloader(self) -> DataLoader:
        # Called after a checkpoint is restored, so global_step is the step training resumes from.
        trainer = self.trainer
        per_step = self.cfg.batch_size * trainer.accumulate_grad_batches * trainer.world_size
        stream = DreamBoothStream(
            self.instances,
            self.classes,
            self.cfg.batch_size,
            start=trainer.global_step * per_step,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        return DataLoader(
            stream,
            batch_size=self.cfg.batch_size,
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
        )
