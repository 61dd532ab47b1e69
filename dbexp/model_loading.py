"""Owner of ``conf/model``: where the base model comes from and how its parts are loaded.

One function, :func:`load_components`, loads tokenizer, text encoder, VAE, UNet and noise
scheduler (SDXL: also its second tokenizer and text encoder) from a hub id or a local diffusers
folder. ``model=tiny`` builds a small SD-architecture model from its config (random weights), saves
it once in diffusers layout under the cache root and then loads it through that same function, so
tests exercise the path SD1.5 takes (``model=tiny_xl``: SDXL's). ``model.init=random`` does the same
with a full architecture (SD1.5, SD2.1, SDXL: benchmarks and the real-architecture tests), so its
exports name a base model that loads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from omegaconf import DictConfig, ListConfig, OmegaConf
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dbexp.atomic_files import atomic_path
from dbexp.config import ModelConfig
from dbexp.dreambench import prompt_vocabulary_text
from dbexp.errors import UserInputError
from dbexp.fingerprint import folder_digest, text_digest
from dbexp.sampling import build_pipeline
from dbexp.tokenizer import build_clip_tokenizer, words_of

log = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction")
PARTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
#: SDXL's second text encoder (OpenCLIP bigG, with the projection whose pooled output conditions the UNet).
XL_PARTS = ("tokenizer_2", "text_encoder_2")
INIT_MODES = ("pretrained", "random")
#: Bumped whenever the way a built model is written changes, so stale cache entries are not reused.
BUILD_FORMAT = 2


@dataclass
class ModelParts:
    """The pieces of a Stable Diffusion model that training and sampling need."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # training: forward process, targets, SNR
    inference_scheduler: SchedulerMixin  # sampling and export: the base model's own sampler
    source: str  # where the weights came from (hub id, folder, or "random")
    #: A content fingerprint per part (tokenizer, text_encoder, vae, unet, scheduler): what caches key on.
    identity: dict[str, str] = field(default_factory=dict)
    tokenizer_2: CLIPTokenizer | None = None  # SDXL only
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL only

    @property
    def xl(self) -> bool:
        """SDXL: two text encoders, and a UNet conditioned on the pooled text embedding and time ids."""
        return self.text_encoder_2 is not None

    def pipeline(self, unet=None, scheduler: SchedulerMixin | None = None):
        """A sampling pipeline over these parts (``unet``, ``scheduler``: others in their place)."""
        return build_pipeline(
            self.vae,
            self.text_encoder,
            self.tokenizer,
            unet if unet is not None else self.unet,
            scheduler if scheduler is not None else self.inference_scheduler,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
        )


def check_model_config(cfg: ModelConfig) -> None:
    """Config errors found before anything loads."""
    if cfg.init not in INIT_MODES:
        raise UserInputError(f"model.init={cfg.init}: use one of {', '.join(INIT_MODES)}")
    if cfg.prediction_type is not None and cfg.prediction_type not in PREDICTION_TYPES:
        raise UserInputError(
            f"model.prediction_type={cfg.prediction_type}: use one of {', '.join(PREDICTION_TYPES)} "
            "(or null for the scheduler's own)"
        )
    if cfg.pretrained is None or cfg.init == "random":
        for part in ("unet", "vae", "text_encoder", "scheduler"):
            if part not in cfg.architecture:
                raise UserInputError(
                    f"model.architecture.{part} is missing: a model built from config "
                    "(model.pretrained=null or model.init=random) needs unet, vae, text_encoder and scheduler"
                )
    elif _looks_like_path(cfg.pretrained) and not Path(cfg.pretrained).expanduser().is_dir():
        raise UserInputError(
            f"model.pretrained={cfg.pretrained}: folder does not exist; give a diffusers folder or a hub id"
        )
    if cfg.vae and _looks_like_path(cfg.vae) and not Path(cfg.vae).expanduser().is_dir():
        raise UserInputError(f"model.vae={cfg.vae}: folder does not exist; give a diffusers VAE folder or a hub id")


def load_model(cfg: ModelConfig, cache_dir: str | Path) -> ModelParts:
    """The base model a run starts from, as ``conf/model`` describes it."""
    architecture = _plain(cfg.architecture)
    if cfg.pretrained is None or cfg.init == "random":
        folder = materialize_architecture(cfg.name, architecture, cache_dir)
        parts = load_components(str(folder))
        if cfg.init == "random":
            log.info("model: %s architecture with random weights (no download), saved in %s", cfg.name, folder)
    else:
        parts = load_components(cfg.pretrained, revision=cfg.revision, variant=cfg.variant)
    if cfg.vae:
        parts.vae, parts.identity["vae"] = load_vae(cfg.vae)
    if cfg.prediction_type is not None:
        parts = with_prediction_type(parts, cfg.prediction_type)
    return parts


def load_vae(source: str) -> tuple[AutoencoderKL, str]:
    """``model.vae``: a VAE in place of the model's own (hub id, a VAE folder, or a pipeline folder with
    ``vae/``), and its content fingerprint (what the latent cache keys on)."""
    files = ["config.json", "diffusion_pytorch_model.safetensors", "vae/config.json", "vae/*.safetensors"]
    folder = hub_or_folder(source, "model.vae", None, files)
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise UserInputError(f"model.vae={source}: no config.json (nor vae/config.json); give a diffusers VAE folder")
    vae = AutoencoderKL.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    log.info("model: VAE from %s", source)
    return vae, folder_digest(folder)


def load_components(pretrained: str, revision: str | None = None, variant: str | None = None) -> ModelParts:
    """Load the five parts from a hub id (via the local HF cache when offline) or a diffusers folder."""
    folder = _resolve_folder(pretrained, revision, variant)
    weights = {"variant": variant, "use_safetensors": True}
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32, **weights)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch.float32, **weights)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=torch.float32, **weights)
    scheduler_config = DDPMScheduler.load_config(folder, subfolder="scheduler")
    xl = {}
    if (Path(folder) / "text_encoder_2").is_dir():
        xl = {
            "tokenizer_2": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"),
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder_2", dtype=torch.float32, **weights
            ),
        }
    log.info("model: loaded %s", pretrained)
    return ModelParts(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        noise_scheduler=DDPMScheduler.from_config(scheduler_config),
        inference_scheduler=_scheduler_from_config(scheduler_config),
        source=pretrained,
        identity={part: folder_digest(Path(folder) / part) for part in PARTS + (XL_PARTS if xl else ())},
        **xl,
    )


def build_components(architecture: dict[str, Any]) -> ModelParts:
    """An SD-architecture model with random weights (seeded, global RNG untouched) and a built tokenizer."""
    arch = _plain(architecture)
    text_config = CLIPTextConfig(**arch["text_encoder"])
    words = words_of([prompt_vocabulary_text()]) + list(arch.get("tokenizer_words", []))
    tokenizer = build_clip_tokenizer(words, model_max_length=text_config.max_position_embeddings)
    if len(tokenizer) > text_config.vocab_size:
        raise UserInputError(
            f"model.architecture.text_encoder.vocab_size={text_config.vocab_size} is smaller than the "
            f"built tokenizer ({len(tokenizer)} tokens); raise it"
        )
    xl = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(arch.get("seed", 0)))
        unet = UNet2DConditionModel(**arch["unet"])
        vae = AutoencoderKL(**arch["vae"])
        text_encoder = CLIPTextModel(text_config)
        if "text_encoder_2" in arch:  # SDXL: the same built vocabulary for both tokenizers
            xl = {
                "tokenizer_2": build_clip_tokenizer(words, model_max_length=text_config.max_position_embeddings),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**arch["text_encoder_2"])),
            }
    inference_scheduler = _scheduler_from_config(arch["scheduler"])
    spec = json.dumps(arch, sort_keys=True, default=str)
    return ModelParts(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        noise_scheduler=DDPMScheduler.from_config(inference_scheduler.config),
        inference_scheduler=inference_scheduler,
        source="random",
        # Seeded weights: the architecture (with its seed) is the content.
        identity={part: text_digest(f"random:{part}:{spec}") for part in PARTS + (XL_PARTS if xl else ())},
        **xl,
    )


def parameter_counts(architecture: dict[str, Any]) -> dict[str, int]:
    """Parameters per trained-or-frozen part of ``architecture``, counted on the meta device (nothing allocated:
    SDXL's 3.5 B in a test)."""
    arch = _plain(architecture)
    builders = {
        "unet": lambda: UNet2DConditionModel(**arch["unet"]),
        "vae": lambda: AutoencoderKL(**arch["vae"]),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**arch["text_encoder"])),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**arch["text_encoder_2"])),
    }
    with torch.device("meta"):
        return {part: sum(p.numel() for p in build().parameters()) for part, build in builders.items() if part in arch}


def materialize_architecture(name: str, architecture: dict[str, Any], cache_dir: str | Path) -> Path:
    """Build ``architecture`` once into ``<cache>/models/<name>-<hash>/`` (diffusers layout).

    Concurrent runs either find the complete folder or build their own copy, and the first
    rename wins (the copies are identical: the weights are seeded).
    """
    spec = json.dumps({"format": BUILD_FORMAT, "architecture": architecture}, sort_keys=True, default=str)
    key = text_digest(spec, length=12)
    folder = Path(cache_dir).expanduser().resolve() / "models" / f"{name}-{key}"
    if not (folder / "model_index.json").is_file():
        save_pipeline(build_components(architecture), folder, extra_files={"dbexp_architecture.json": spec})
        log.info("model: built %s into %s", name, folder)
    os.utime(folder)  # last use, for `dbexp.cache prune --older-than`
    return folder


def save_pipeline(
    parts: ModelParts, folder: str | Path, replace: bool = False, extra_files: dict[str, str] | None = None
) -> Path:
    """Write the parts as a ``StableDiffusionPipeline`` folder (safetensors, no safety checker).

    The folder appears whole or not at all: it is written beside its place and renamed.
    An existing folder is replaced when ``replace``, else kept (another process wrote it).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if replace and folder.exists():
        shutil.rmtree(folder)
    with atomic_path(folder) as staging:
        write_pipeline(parts, staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return folder


def write_pipeline(parts: ModelParts, folder: Path) -> None:
    """The parts as a ``StableDiffusionPipeline`` (SDXL: ``StableDiffusionXLPipeline``) folder, in place (no
    staging: the caller's)."""
    parts.pipeline().save_pretrained(folder, safe_serialization=True)


def with_prediction_type(parts: ModelParts, prediction_type: str) -> ModelParts:
    """The same parts, both schedulers switched to ``prediction_type``."""
    config = dict(parts.inference_scheduler.config)
    config["prediction_type"] = prediction_type
    parts.noise_scheduler = DDPMScheduler.from_config(config)
    parts.inference_scheduler = type(parts.inference_scheduler).from_config(config)
    parts.identity["scheduler"] = text_digest(f"{parts.identity.get('scheduler')}:{prediction_type}")
    return parts


def _plain(node: Any) -> Any:
    """Plain dicts and lists (diffusers writes configs with ``json``, which knows no OmegaConf nodes)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def _scheduler_from_config(config: dict[str, Any]) -> SchedulerMixin:
    config = dict(config)
    class_name = config.pop("class_name", None) or config.get("_class_name") or "DDPMScheduler"
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None or not issubclass(scheduler_class, SchedulerMixin):
        raise UserInputError(f"scheduler class {class_name!r} is not a diffusers scheduler")
    return scheduler_class.from_config(config)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.sep in source.strip("/").replace("/", "", 1)


def _resolve_folder(pretrained: str, revision: str | None, variant: str | None) -> str:
    """A local Stable Diffusion folder for ``pretrained``: the folder itself, or the hub snapshot."""
    path = hub_or_folder(pretrained, "model.pretrained", revision, _hub_files(variant))
    missing = [p for p in PARTS if not (path / p).is_dir()]
    if missing:
        raise UserInputError(
            f"model.pretrained={pretrained}: not a diffusers Stable Diffusion folder "
            f"(missing {', '.join(missing)}/); save one with StableDiffusionPipeline.save_pretrained"
        )
    return str(path)


def hub_or_folder(source: str, key: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> Path:
    """A local folder for ``source`` (the config value of ``key``): the folder itself, or a Hugging Face
    hub snapshot (found in the local HF cache when offline, else downloaded) — or one clear error line."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if _looks_like_path(source):
        raise UserInputError(f"{key}={source}: folder does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=allow_patterns))
    except (OSError, HfHubHTTPError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(
            f"{key}={source}: could not get it from the Hugging Face hub or its local cache "
            f"({reason}). Offline? Download it where there is network (`hf download {source}`) and "
            f"set {key}=/path/to/that/folder"
        ) from None


def _hub_files(variant: str | None) -> list[str]:
    suffix = f".{variant}" if variant else ""
    files = ["model_index.json", "tokenizer/*", "tokenizer_2/*", "scheduler/*", "*/config.json"]
    for part, stem in (
        ("text_encoder", "model"),
        ("text_encoder_2", "model"),
        ("vae", "diffusion_pytorch_model"),
        ("unet", "diffusion_pytorch_model"),
    ):
        files += [
            f"{part}/{stem}{suffix}.safetensors",
            f"{part}/{stem}.safetensors.index{suffix}.json",
            f"{part}/{stem}{suffix}-*-of-*.safetensors",
        ]
    return files
