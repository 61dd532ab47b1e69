"""VAE latents and text embeddings computed once per content and reused by every run and trial.

* Latents: the VAE posterior (mean and std) of each centre-cropped instance or class image —
  and of its mirror image when random flips are on — keyed by (VAE fingerprint, image content
  hash, resolution, crop, flip). Training samples ``mean + std · ε`` with the same per-sample ε
  as without the cache, so both give the same loss. Random crops cannot be cached (each step
  sees another crop): there the cache is off.
* Text embeddings: the text encoder's output for the fixed instance and class prompts (SDXL: both
  encoders' and the pooled embedding, :func:`encode_text`), keyed by (text-encoder and tokenizer
  fingerprints, prompt). Only valid while the text encoders are frozen.

Files are ``<cache>/latents/<key>.safetensors`` and ``<cache>/text/<key>.safetensors``, written
under a temporary name and renamed, so concurrent runs never read a half-written file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dbexp.atomic_files import atomic_path
from dbexp.datamodule import Size, center_crop, to_tensor
from dbexp.fingerprint import fields_key, image_digest

log = logging.getLogger(__name__)
#: Bumped when how an image becomes VAE input (resize, crop, normalisation) changes.
LATENT_FORMAT = 1
#: Hex characters of a latent or text-embedding key (changing it renames every entry).
KEY_LENGTH = 24


def latent_key(vae_identity: str, image: Image.Image, size: int | Size, flips: bool) -> str:
    """``size``: the crop's (width, height), or the side of a square one (which keys as before buckets)."""
    if isinstance(size, tuple | list) and size[0] == size[1]:
        size = size[0]
    return fields_key(
        {
            "format": LATENT_FORMAT,
            "vae": vae_identity,
            "image": image_digest(image),
            "resolution": size if isinstance(size, int) else list(size),
            "crop": "center",
            "flips": flips,
        },
        length=KEY_LENGTH,
    )


@torch.no_grad()
def cached_latents(
    vae,
    vae_identity: str,
    images: list[Image.Image],
    resolution: int,
    flips: bool,
    cache_dir: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    sizes: list[Size] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Per image ``{"mean", "std"}`` (plus ``"mean_flipped", "std_flipped"`` with flips) of its centre crop —
    the ``resolution`` square, or its own ``sizes`` entry (an aspect-ratio bucket) — encoding only misses."""
    sizes = list(sizes) if sizes is not None else [(resolution, resolution)] * len(images)
    folder = Path(cache_dir).expanduser().resolve() / "latents"
    folder.mkdir(parents=True, exist_ok=True)
    keys = [latent_key(vae_identity, image, size, flips) for image, size in zip(images, sizes, strict=True)]
    paths = [folder / f"{key}.safetensors" for key in keys]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        vae_device = next(vae.parameters()).device
        vae.to(device)
        try:
            by_size: dict[Size, list[int]] = {}  # one VAE batch holds one crop size
            for i in missing:
                by_size.setdefault(tuple(sizes[i]), []).append(i)
            for size, group in by_size.items():
                for begin in range(0, len(group), batch_size):
                    chunk = group[begin : begin + batch_size]
                    crops = [center_crop(images[i], size) for i in chunk]
                    views = {"": crops}
                    if flips:
                        views["_flipped"] = [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]
                    encoded = {}
                    for suffix, view in views.items():
                        pixels = torch.stack([to_tensor(c) for c in view]).to(device, vae.dtype)
                        posterior = vae.encode(pixels).latent_dist
                        encoded[f"mean{suffix}"] = posterior.mean.float()
                        encoded[f"std{suffix}"] = posterior.std.float()
                    for row, index in enumerate(chunk):
                        _save_atomic({k: v[row].cpu().contiguous() for k, v in encoded.items()}, paths[index])
        finally:
            vae.to(vae_device)
    log.info(
        "latents: %d images, %d reused, %d encoded (%s)", len(images), len(images) - len(missing), len(missing), folder
    )
    return [load_file(p) for p in paths]


def encode_text(text_encoder, ids: torch.Tensor, text_encoder_2=None, ids_2=None) -> dict[str, torch.Tensor]:
    """The UNet's text conditioning for token ids ``(n, tokens)``: ``{"states"}``, the text encoder's last
    hidden state (SD1.x, SD2.x); SDXL (``text_encoder_2``): ``{"states", "pooled"}``, both encoders'
    penultimate hidden states side by side and the second's projected pooled embedding — what
    ``StableDiffusionXLPipeline.encode_prompt`` computes."""
    if text_encoder_2 is None:
        return {"states": text_encoder(ids)[0]}
    first = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    second = text_encoder_2(ids_2, output_hidden_states=True)
    return {"states": torch.cat([first, second.hidden_states[-2]], dim=-1), "pooled": second.text_embeds}


def token_ids(parts, prompt: str) -> dict[str, torch.Tensor]:
    """A prompt's token ids for :func:`encode_text`: ``{"ids"}``, SDXL also ``{"ids_2"}`` (its second tokenizer)."""
    ids = {"ids": tokenize(parts.tokenizer, prompt)}
    if parts.tokenizer_2 is not None:
        ids["ids_2"] = tokenize(parts.tokenizer_2, prompt)
    return ids


@torch.no_grad()
def cached_text_embeddings(
    parts, prompts: list[str], cache_dir: str | Path, device: torch.device | str = "cpu"
) -> list[dict[str, torch.Tensor]]:
    """:func:`encode_text` of each prompt with ``parts``' frozen text encoders (``{"states": (1, tokens,
    width)}``, SDXL also ``"pooled": (1, width)``), from the cache when there."""
    folder = Path(cache_dir).expanduser().resolve() / "text"
    folder.mkdir(parents=True, exist_ok=True)
    identity = parts.identity
    fields = {"text_encoder": identity["text_encoder"], "tokenizer": identity["tokenizer"]}
    fields["max_length"] = parts.tokenizer.model_max_length
    if parts.xl:  # SD1.x/2.x keys stay as they were: their entries are still found
        fields |= {"text_encoder_2": identity["text_encoder_2"], "tokenizer_2": identity["tokenizer_2"]}
    paths = [folder / f"{fields_key(fields | {'prompt': p}, length=KEY_LENGTH)}.safetensors" for p in prompts]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    encoders = [e for e in (parts.text_encoder, parts.text_encoder_2) if e is not None]
    if missing:
        homes = [next(e.parameters()).device for e in encoders]
        for encoder in encoders:
            encoder.to(device)  # once for all misses
        try:
            for i in missing:
                ids = {k: v.to(device) for k, v in token_ids(parts, prompts[i]).items()}
                encoded = encode_text(parts.text_encoder, ids["ids"], parts.text_encoder_2, ids.get("ids_2"))
                _save_atomic({k: v.float().cpu().contiguous() for k, v in encoded.items()}, paths[i])
        finally:
            for encoder, home in zip(encoders, homes, strict=True):
                encoder.to(home)
    return [_load_touched(path) for path in paths]


def tokenize(tokenizer, prompt: str) -> torch.Tensor:
    """Token ids padded to the model's length, as Stable Diffusion encodes prompts."""
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def _load_touched(path: Path) -> dict[str, torch.Tensor]:
    """Load a cache entry and mark it used now (``dbexp.cache prune --older-than`` goes by last use)."""
    tensors = load_file(path)
    os.utime(path)
    return tensors


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as staging:
        save_file(tensors, str(staging))
