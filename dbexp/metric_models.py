"""The embedders behind the metrics: DINO ViT-S/16 (CLS token) and CLIP, through transformers.

They load from a hub id or a local folder (one clear line when neither is there). ``tiny``
builds small random ones from transformers configs, saves them once under the cache root and
loads them through the same ``from_pretrained`` path — for tests and offline runs, where the
numbers exercise the pipeline but mean nothing. Loaded once per process; :func:`release` frees them.
These are the ``dreambench`` and ``tiny`` suites' loaders; which suite loads what is declared in
``dbexp.metric_suites`` (:func:`load_metric_models` and :func:`metric_model_folders` ask it).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
    ViTConfig,
    ViTImageProcessorPil,
    ViTModel,
)

from dbexp import metric_suites
from dbexp.atomic_files import atomic_path
from dbexp.dreambench import prompt_vocabulary_text
from dbexp.fingerprint import fields_key
from dbexp.metrics import diversity, mean_pairwise_similarity, real_reference, text_alignment, within_set_similarity
from dbexp.model_loading import hub_or_folder
from dbexp.tokenizer import build_clip_tokenizer, words_of

log = logging.getLogger(__name__)
#: The tiny suite's architectures (random weights, seed 0): enough to run every metric end to end.
TINY = {
    "dino": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
    },
    "clip_text": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "vocab_size": 2048,
        "max_position_embeddings": 77,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    },
    "clip_vision": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
    },
    "projection_dim": 32,
}


@dataclass
class MetricModels:
    dino: ViTModel
    dino_processor: ViTImageProcessorPil
    clip: CLIPModel
    clip_processor: CLIPImageProcessorPil
    clip_tokenizer: CLIPTokenizer
    device: torch.device
    description: dict[str, Any] = field(default_factory=dict)  # ids and preprocessing, for metrics.json

    @torch.no_grad()
    def dino_embed(self, images: list[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """DINO CLS-token embeddings (the paper's subject-fidelity features)."""
        return self._batched(
            images, batch_size, lambda px: self.dino(pixel_values=px).last_hidden_state[:, 0], self.dino_processor
        )

    @torch.no_grad()
    def clip_image_embed(self, images: list[Image.Image], batch_size: int = 32) -> torch.Tensor:
        return self._batched(
            images, batch_size, lambda px: _features(self.clip.get_image_features(pixel_values=px)), self.clip_processor
        )

    @torch.no_grad()
    def clip_text_embed(self, texts: list[str]) -> torch.Tensor:
        tokens = self.clip_tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return _features(self.clip.get_text_features(**tokens)).float().cpu()

    def score(self, subject: list[Image.Image], class_images: list[Image.Image], real_images, prompts, k: int, n: int):
        """DINO, CLIP-I, CLIP-T, PRES, DIV of ``k`` prompts × ``n`` images (``subject``, prompt-major) and the
        bare class prompt's images → (metrics, per-prompt rows, the real photos' own reference)."""
        dino, dino_real = self.dino_embed(subject), self.dino_embed(real_images)
        clip, clip_real = self.clip_image_embed(subject), self.clip_image_embed(real_images)
        texts = self.clip_text_embed(prompts.clip_prompts[:k]).repeat_interleave(n, dim=0)
        values = {
            "dino": mean_pairwise_similarity(dino, dino_real),
            "clip_i": mean_pairwise_similarity(clip, clip_real),
            "clip_t": text_alignment(clip, texts),
            "pres": mean_pairwise_similarity(self.dino_embed(class_images), dino_real),
            "div": diversity([dino[p * n : (p + 1) * n] for p in range(k)]),
        }
        rows = []
        for p in range(k):
            part = slice(p * n, (p + 1) * n)
            rows.append(
                {
                    "prompt": prompts.prompts[p],
                    "dino": mean_pairwise_similarity(dino[part], dino_real),
                    "clip_i": mean_pairwise_similarity(clip[part], clip_real),
                    "clip_t": text_alignment(clip[part], texts[part]),
                    "div": 1.0 - within_set_similarity(dino[part]),
                }
            )
        several = len(real_images) > 1
        reference = {
            "real/dino": real_reference(dino_real) if several else float("nan"),
            "real/clip_i": real_reference(clip_real) if several else float("nan"),
        }
        return values, rows, reference

    def _batched(self, images, batch_size, embed, processor) -> torch.Tensor:
        out = []
        for begin in range(0, len(images), batch_size):
            pixels = processor(images=images[begin : begin + batch_size], return_tensors="pt")["pixel_values"]
            out.append(embed(pixels.to(self.device)).float().cpu())
        return torch.cat(out)


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooled projection is the feature; older ones a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


_LOADED: dict[tuple, MetricModels] = {}


def load_metric_models(suite: str, eval_cfg, cache_dir: str | Path, device: torch.device | str = "cpu"):
    """The suite's models (``dbexp.metric_suites``: embedders, or the toy oracle), loaded once per process."""
    return metric_suites.get(suite).load(eval_cfg, cache_dir, device)


def load_dreambench(eval_cfg, cache_dir: str | Path, device: torch.device | str = "cpu") -> MetricModels:
    """The ``dreambench`` suite: ``eval.dino_model``/``clip_model`` (and revisions) from the hub or a folder."""
    return _load_embedders("dreambench", eval_cfg, cache_dir, device)


def load_tiny(eval_cfg, cache_dir: str | Path, device: torch.device | str = "cpu") -> MetricModels:
    """The ``tiny`` suite: small random DINO and CLIP, built once under the cache root."""
    return _load_embedders("tiny", eval_cfg, cache_dir, device)


def _load_embedders(suite: str, eval_cfg, cache_dir: str | Path, device: torch.device | str) -> MetricModels:
    dino_model, clip_model = eval_cfg.dino_model, eval_cfg.clip_model
    tiny = suite == "tiny"
    key = (suite, dino_model, eval_cfg.dino_revision, clip_model, eval_cfg.clip_revision, str(device))
    if key not in _LOADED:
        dino_path, clip_path = tiny_folders(eval_cfg, cache_dir) if tiny else dreambench_folders(eval_cfg, cache_dir)
        dino_source, clip_source = (dino_path, clip_path) if tiny else (dino_model, clip_model)
        device = torch.device(device)
        dino = ViTModel.from_pretrained(dino_path, add_pooling_layer=False, dtype=torch.float32).to(device).eval()
        clip = CLIPModel.from_pretrained(clip_path, dtype=torch.float32).to(device).eval()
        dino_processor = ViTImageProcessorPil.from_pretrained(dino_path)
        clip_processor = CLIPImageProcessorPil.from_pretrained(clip_path)
        _LOADED[key] = MetricModels(
            dino=dino,
            dino_processor=dino_processor,
            clip=clip,
            clip_processor=clip_processor,
            clip_tokenizer=CLIPTokenizer.from_pretrained(clip_path),
            device=device,
            description={
                "suite": suite,
                "dino_model": "tiny (random, built from config)" if tiny else dino_source,
                "dino_revision": None if tiny else eval_cfg.dino_revision,
                "clip_model": "tiny (random, built from config)" if tiny else clip_source,
                "clip_revision": None if tiny else eval_cfg.clip_revision,
                "dino_preprocessing": _preprocessing(dino_processor),
                "clip_preprocessing": _preprocessing(clip_processor),
                "summary": f"models: DINO {dino_source}, CLIP {clip_source}",
            },
        )
        log.info("metric models: DINO %s, CLIP %s", dino_source, clip_source)
    return _LOADED[key]


def metric_model_folders(suite: str, eval_cfg, cache_dir: str | Path) -> tuple[Path, ...]:
    """Local folders of the suite's weights (DINO and CLIP: hub snapshots, the user's folders, or the built
    tiny ones; the toy oracle's) — cheap, so runs call it before the expensive work: missing weights are
    one line, not a lost run."""
    return metric_suites.get(suite).model_folders(eval_cfg, cache_dir)


def tiny_folders(eval_cfg, cache_dir: str | Path) -> tuple[Path, Path]:
    return build_tiny(cache_dir)


def dreambench_folders(eval_cfg, cache_dir: str | Path) -> tuple[Path, Path]:
    files = ["*.json", "*.safetensors", "*.txt"]  # safetensors only: nothing is unpickled
    return (
        hub_or_folder(eval_cfg.dino_model, "eval.dino_model", eval_cfg.dino_revision, files),
        hub_or_folder(eval_cfg.clip_model, "eval.clip_model", eval_cfg.clip_revision, files),
    )


def release() -> None:
    """Free every loaded metric model (after a run's final evaluation)."""
    _LOADED.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_tiny(cache_dir: str | Path) -> tuple[Path, Path]:
    """The tiny DINO and CLIP folders (built once, atomically, under ``<cache>/models/``)."""
    root = Path(cache_dir).expanduser().resolve() / "models" / f"metrics-tiny-{fields_key(TINY, length=12)}"
    dino_dir, clip_dir = root / "dino", root / "clip"
    if not (dino_dir / "config.json").is_file() or not (clip_dir / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            dino = ViTModel(ViTConfig(**TINY["dino"]), add_pooling_layer=False)
            clip = CLIPModel(
                CLIPConfig(
                    text_config=TINY["clip_text"],
                    vision_config=TINY["clip_vision"],
                    projection_dim=TINY["projection_dim"],
                )
            )
        size = TINY["dino"]["image_size"]
        for folder, model, processor in (
            (dino_dir, dino, ViTImageProcessorPil(size={"height": size, "width": size})),
            (
                clip_dir,
                clip,
                CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
            ),
        ):
            with atomic_path(folder) as staging:
                model.save_pretrained(staging, safe_serialization=True)
                processor.save_pretrained(staging)
                if model is clip:
                    build_clip_tokenizer(words_of([prompt_vocabulary_text()]) + ["sks", "photo"]).save_pretrained(
                        staging
                    )
    return dino_dir, clip_dir


def _preprocessing(processor) -> dict[str, Any]:
    keys = ("size", "crop_size", "do_center_crop", "resample", "image_mean", "image_std", "do_normalize", "do_resize")
    config = processor.to_dict()
    return {k: config[k] for k in keys if k in config}
