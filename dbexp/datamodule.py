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
    if cfg.buckets and (cfg.bucket_step <= 0 or cfg.bucket_step % 8 or cfg.resolution % cfg.bucket_step):
        raise UserInputError(
            f"data.bucket_step={cfg.bucket_step}: must be a multiple of 8 that divides data.resolution="
            f"{cfg.resolution} (64 for SD models; or data.buckets=false)"
        )
    if cfg.buckets and cfg.bucket_max_aspect < 1:
        raise UserInputError(f"data.bucket_max_aspect={cfg.bucket_max_aspect}: must be >= 1 (2: up to 2:1 and 1:2)")
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


#: (width, height) of a training crop: (resolution, resolution), or an aspect-ratio bucket's size.
Size = tuple[int, int]


def bucket_sizes(resolution: int, step: int, max_aspect: float) -> list[Size]:
    """``data.buckets``' crop sizes: sides multiples of ``step``, about ``resolution``² pixels (never more),
    aspect ratio at most ``max_aspect`` either way — the square first, then by aspect ratio (as SDXL's and
    kohya's buckets: at 1024 px, step 64: 1024×1024, 1088×960, 1152×896, …, 1408×704 and their transposes)."""
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    for width in range(step, int(resolution * max_aspect**0.5) + 1, step):
        height = area // width // step * step
        if height >= step and max(width / height, height / width) <= max_aspect:
            sizes |= {(width, height), (height, width)}
    return sorted(sizes, key=lambda size: (size != (resolution, resolution), size[0] / size[1]))


def nearest_bucket(width: int, height: int, sizes: list[Size]) -> Size:
    """The bucket whose aspect ratio is closest to the photo's (in log ratio: 2:1 is as far from 1:1 as 1:2)."""
    aspect = np.log(width / height)
    return min(sizes, key=lambda size: abs(np.log(size[0] / size[1]) - aspect))


def crop_sizes(cfg: DataConfig, images: list[Image.Image]) -> list[Size]:
    """Each photo's training crop: its bucket with ``data.buckets``, else the ``data.resolution`` square."""
    if not cfg.buckets:
        return [(cfg.resolution, cfg.resolution)] * len(images)
    sizes = bucket_sizes(cfg.resolution, cfg.bucket_step, cfg.bucket_max_aspect)
    return [nearest_bucket(*image.size, sizes) for image in images]


def fitted_size(width: int, height: int, size: Size) -> tuple[int, int]:
    """(width, height) scaled so the photo just covers ``size`` (the crop is cut from it)."""
    scale = max(size[0] / width, size[1] / height)
    return max(size[0], round(width * scale)), max(size[1], round(height * scale))


def fit_to_cover(image: Image.Image, size: Size) -> Image.Image:
    """Resize so the photo just covers a ``size`` crop (the crop happens per sample)."""
    return image.resize(fitted_size(*image.size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)


def center_geometry(image: Image.Image, size: Size) -> torch.Tensor:
    """A sample's ``geometry`` (see :class:`ImageStream`) for the centre crop of ``image``, unflipped."""
    width, height = fitted_size(*image.size, size)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    return torch.tensor([image.height, image.width, top, left, size[1], size[0]])


def center_crop(image: Image.Image, size: Size) -> Image.Image:
    """The centre crop a sample uses with ``data.center_crop`` (what the latent cache encodes)."""
    image = fit_to_cover(image, size)
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


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

    ``sizes``: each image's crop (``data.buckets``: its aspect-ratio bucket); None: every crop the
    ``resolution`` square. With more than one size, :meth:`batch_members` makes each batch from one bucket.
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
        sizes: list[Size] | None = None,
    ) -> None:
        if latents is not None and (not center_crop or len(latents) != len(images)):
            raise ValueError("cached latents need centre crops and one entry per image")
        self.sizes = list(sizes) if sizes is not None else [(resolution, resolution)] * len(images)
        self.original_sizes = [(img.height, img.width) for img in images]
        self.images = [fit_to_cover(img, size) for img, size in zip(images, self.sizes, strict=True)]
        self.stream, self.seed, self.resolution = stream, seed, resolution
        self.center_crop, self.random_flip, self.latents = center_crop, random_flip, latents
        self.buckets: dict[Size, list[int]] = {}  # bucket → its images, in order
        for which, size in enumerate(self.sizes):
            self.buckets.setdefault(size, []).append(which)
        self._pass: tuple[int, int, list] | None = None  # (pass, batch size, its batches): the last one made

    @property
    def bucketed(self) -> bool:
        return len(self.buckets) > 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self.images)
        order = np.random.default_rng(sample_seed(self.seed, self.stream, index // n, ORDER)).permutation(n)
        return self.sample(int(order[index % n]), index)

    def sample(self, which: int, index: int) -> dict[str, torch.Tensor]:
        """Image ``which`` as global sample ``index`` (whose random numbers crop and flip it)."""
        image, (width, height) = self.images[which], self.sizes[which]
        rng = np.random.default_rng(sample_seed(self.seed, self.stream, index, AUGMENT))
        room_x, room_y = image.width - width, image.height - height
        if self.center_crop:
            left, top = room_x // 2, room_y // 2
        else:
            left, top = int(rng.integers(0, room_x + 1)), int(rng.integers(0, room_y + 1))
        flip = self.random_flip and rng.random() < 0.5
        seen_left = image.width - left - width if flip else left  # where the crop is in what the model sees
        geometry = torch.tensor([*self.original_sizes[which], top, seen_left, height, width])
        if self.latents is not None:
            suffix = "_flipped" if flip else ""
            entry = self.latents[which]
            return {"latent_mean": entry[f"mean{suffix}"], "latent_std": entry[f"std{suffix}"], "geometry": geometry}
        image = image.crop((left, top, left + width, top + height))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return {"pixels": to_tensor(image), "geometry": geometry}

    def batch_members(self, number: int, batch_size: int) -> tuple[Size, list[int]]:
        """The bucket and images of global batch ``number``: each pass over the set shuffles every bucket,
        cuts it into batches (the last one filled up from the same bucket's shuffle) and shuffles the
        batches — a pure function of (seed, number), as resuming needs."""
        per_pass = sum(-(-len(members) // batch_size) for members in self.buckets.values())
        pass_, position = divmod(number, per_pass)
        if self._pass is None or self._pass[:2] != (pass_, batch_size):
            rng = np.random.default_rng(sample_seed(self.seed, self.stream, pass_, ORDER))
            batches = []
            for size in sorted(self.buckets):
                members = [self.buckets[size][i] for i in rng.permutation(len(self.buckets[size]))]
                count = -(-len(members) // batch_size)
                cycled = [members[i % len(members)] for i in range(count * batch_size)]
                batches += [(size, cycled[b * batch_size : (b + 1) * batch_size]) for b in range(count)]
            self._pass = (pass_, batch_size, [batches[i] for i in rng.permutation(len(batches))])
        return self._pass[2][position]

    def from_bucket(self, size: Size, number: int, batch_size: int) -> list[int]:
        """``batch_size`` images of bucket ``size`` for global batch ``number`` (the class images that go
        with an instance batch: a fresh shuffle of that bucket per batch, cycled when it is smaller)."""
        members = self.buckets.get(size)
        if not members:
            raise ValueError(f"no image of bucket {size[0]}×{size[1]} in this set")
        order = np.random.default_rng(sample_seed(self.seed, self.stream, number, ORDER)).permutation(len(members))
        return [members[order[i % len(members)]] for i in range(batch_size)]


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
        if self.instances.bucketed:
            yield from self._bucketed(worker_id, num_workers)
            return
        batch = worker_id
        while True:
            for local in range(batch * self.batch_size, (batch + 1) * self.batch_size):
                index = self.start + local * self.world_size + self.rank
                item = {f"instance_{k}": v for k, v in self.instances[index].items()} | {"instance_index": index}
                if self.classes is not None:
                    item |= {f"class_{k}": v for k, v in self.classes[index].items()} | {"class_index": index}
                yield item
            batch += num_workers

    def _bucketed(self, worker_id: int, num_workers: int):
        """``data.buckets``: whole batches from one bucket, instance and class images alike. Rank r of W takes
        global batches first + r, first + r + W, …; sample j of batch b is global sample b × batch size + j."""
        first = self.start // self.batch_size
        batch = worker_id
        while True:
            number = first + batch * self.world_size + self.rank
            size, members = self.instances.batch_members(number, self.batch_size)
            classes = self.classes.from_bucket(size, number, self.batch_size) if self.classes is not None else None
            for j, which in enumerate(members):
                index = number * self.batch_size + j
                item = {f"instance_{k}": v for k, v in self.instances.sample(which, index).items()}
                item["instance_index"] = index
                if classes is not None:
                    item |= {f"class_{k}": v for k, v in self.classes.sample(classes[j], index).items()}
                    item["class_index"] = index
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
        instance_sizes: list[Size] | None = None,
        class_sizes: list[Size] | None = None,
    ) -> None:
        """``*_sizes``: each image's crop (``data.buckets``); None: the ``data.resolution`` square."""
        super().__init__()
        self.cfg, self.seed = cfg, seed
        crops = (cfg.resolution, cfg.center_crop, cfg.random_flip)
        self.instances = ImageStream(
            instance_images, INSTANCE_STREAM, seed, *crops, latents=instance_latents, sizes=instance_sizes
        )
        self.classes = (
            ImageStream(class_images, CLASS_STREAM, seed, *crops, latents=class_latents, sizes=class_sizes)
            if class_images
            else None
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
