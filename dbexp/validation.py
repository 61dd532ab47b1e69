"""The validation loss (``eval.val_every_n_steps``): the diffusion loss, without gradients, on a fixed set.

The set is every instance photo and ``eval.val_class_images`` class images the *base* model drew of the
class prompt (from the prior cache, seeds ``prior.seed + VALIDATION_SEED_OFFSET + i``: images training never
sees). Each is noised at ``eval.val_timesteps`` timesteps spread over the schedule, with noise fixed by
(``eval.metric_seed``, kind, image, timestep), from the posterior mean of its cached latent. So two steps of
a run, or two trials of a sweep, are compared on identical inputs. Logged:

* ``val/loss_instance`` — how well the model denoises the subject's photos (fit to the subject);
* ``val/loss_prior`` — how well it still denoises the base model's own class images (drift away from the
  class: the cheap cousin of PRES), whatever ``prior.weight`` is;
* ``val/loss`` — their sum: DreamBooth's loss at prior weight 1, so trials that sweep ``prior.weight`` are
  measured with the same yardstick (the toy sweep's pruning signal);
* ``val/seconds`` — what it cost.

The loss is the plain MSE of the prediction target (ε or v), unweighted (no min-SNR γ: trials that sweep
``finetune.min_snr_gamma`` stay comparable). Nothing is sampled; the latent and text caches are reused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dbexp.config import EvalConfig
from dbexp.datamodule import center_geometry, crop_sizes, sample_seed
from dbexp.encoding_cache import cached_latents, cached_text_embeddings, encode_text, token_ids
from dbexp.errors import UserInputError
from dbexp.prior_cache import class_images

log = logging.getLogger(__name__)

#: Validation class images are seeded ``prior.seed + VALIDATION_SEED_OFFSET + i``; training's are ``prior.seed + i``.
VALIDATION_SEED_OFFSET = 1_000_000
#: ``sample_seed`` stream of the validation noise (training's streams are 0 and 1).
VALIDATION_STREAM = 2
KINDS = ("instance", "class")


def check_validation_config(cfg: EvalConfig) -> None:
    if cfg.val_every_n_steps < 0:
        raise UserInputError(f"eval.val_every_n_steps={cfg.val_every_n_steps}: must be >= 0 (0: off)")
    if cfg.val_every_n_steps and cfg.val_timesteps < 1:
        raise UserInputError(f"eval.val_timesteps={cfg.val_timesteps}: must be >= 1")
    if cfg.val_class_images < 0:
        raise UserInputError(f"eval.val_class_images={cfg.val_class_images}: must be >= 0 (0: no val/loss_prior)")


def metric_names(cfg: EvalConfig, has_class: bool) -> list[str]:
    """What the validation logs (``optimized_metric`` and ``pruning.metric`` may name them)."""
    if not cfg.val_every_n_steps:
        return []
    return ["val/loss_instance"] + (["val/loss_prior", "val/loss"] if has_class and cfg.val_class_images else [])


def timesteps(num_train_timesteps: int, count: int) -> list[int]:
    """``count`` timesteps at the centres of equal parts of the schedule (4 of 1000: 125, 375, 625, 875)."""
    return [int((i + 0.5) * num_train_timesteps / count) for i in range(count)]


@dataclass
class ValidationSet:
    """The fixed inputs per kind: latents (posterior means, scaled), each image's ``geometry`` (SDXL's time
    ids), the prompt's token ids, and the text encoders' output for them when the encoders are frozen (else
    they run on the ids at each validation)."""

    latents: dict[str, list[torch.Tensor]]  # per image: its shape follows its crop (aspect-ratio buckets)
    geometry: dict[str, torch.Tensor]
    ids: dict[str, dict[str, torch.Tensor]]
    text: dict[str, dict[str, torch.Tensor]] | None
    timesteps: list[int]


def build_validation_set(cfg, parts, instance_images, instance_prompt: str, class_prompt: str | None, device):
    """The validation set of a run: ``cfg`` is the run's config (``eval``, ``prior``, ``data``, ``paths``)."""
    images = {"instance": list(instance_images)}
    prompts = {"instance": instance_prompt}
    if class_prompt is not None and cfg.eval.val_class_images:
        prior = OmegaConf.merge(
            cfg.prior,
            {"seed": cfg.prior.seed + VALIDATION_SEED_OFFSET, "num_class_images": cfg.eval.val_class_images},
        )
        images["class"] = class_images(prior, parts, class_prompt, cfg.data.resolution, cfg.paths.cache_dir).images
        prompts["class"] = class_prompt
    kinds = list(images)
    square = (cfg.data.resolution, cfg.data.resolution)
    sizes = {"instance": crop_sizes(cfg.data, images["instance"]), "class": [square] * len(images.get("class", []))}
    flat = [image for kind in kinds for image in images[kind]]
    flat_sizes = [size for kind in kinds for size in sizes[kind]]
    encoded = cached_latents(
        parts.vae,
        parts.identity["vae"],
        flat,
        cfg.data.resolution,
        False,
        cfg.paths.cache_dir,
        device,
        sizes=flat_sizes,
    )
    means = [e["mean"] * parts.vae.config.scaling_factor for e in encoded]  # each photo at its own crop size
    latents, begin = {}, 0
    for kind in kinds:
        latents[kind], begin = means[begin : begin + len(images[kind])], begin + len(images[kind])
    geometry = {
        kind: torch.stack([center_geometry(im, size) for im, size in zip(images[kind], sizes[kind], strict=True)])
        for kind in kinds
    }
    text = None
    if not cfg.finetune.train_text_encoder:
        embedded = cached_text_embeddings(parts, [prompts[kind] for kind in kinds], cfg.paths.cache_dir, device)
        text = dict(zip(kinds, embedded, strict=True))
    ids = {kind: token_ids(parts, prompts[kind]) for kind in kinds}
    steps = timesteps(parts.noise_scheduler.config.num_train_timesteps, cfg.eval.val_timesteps)
    return ValidationSet(latents=latents, geometry=geometry, ids=ids, text=text, timesteps=steps)


@torch.no_grad()
def validation_loss(module, vset: ValidationSet, seed: int, batch_size: int) -> dict[str, float]:
    """The loss per kind over every (image, timestep) pair of the set, with the module as it is now."""
    scheduler, device = module.noise_scheduler, module.device
    dtype = next(module.unet.parameters()).dtype
    losses = {}
    for kind_index, kind in enumerate(KINDS):
        if kind not in vset.latents:
            continue
        latents = vset.latents[kind]
        # (image, timestep) pairs, grouped by the image's latent shape (aspect-ratio buckets), so a chunk stacks
        pairs = sorted(
            [(i, t) for i in range(len(latents)) for t in vset.timesteps], key=lambda p: tuple(latents[p[0]].shape)
        )
        if vset.text is not None:
            text = {name: value.to(device) for name, value in vset.text[kind].items()}
        else:
            ids = {name: value.to(device) for name, value in vset.ids[kind].items()}
            text = encode_text(module.text_encoder, ids["ids"], module.text_encoder_2, ids.get("ids_2"))
        total = 0.0
        chunks = [pairs[b : b + batch_size] for b in range(0, len(pairs), batch_size)]
        chunks = [part for chunk in chunks for part in _split_by_shape(chunk, latents)]
        for chunk in chunks:
            clean = torch.stack([latents[i] for i, _ in chunk]).to(device)
            noise = torch.stack(
                [
                    torch.randn(
                        clean.shape[1:],
                        generator=torch.Generator("cpu").manual_seed(
                            sample_seed(seed, VALIDATION_STREAM, kind_index, i, t)
                        ),
                    )
                    for i, t in chunk
                ]
            ).to(device)
            steps = torch.tensor([t for _, t in chunk], device=device)
            noisy = scheduler.add_noise(clean, noise, steps)
            states = text["states"].expand(len(chunk), -1, -1).to(dtype)
            added = None
            if module.xl:  # SDXL: the pooled embedding and each image's time ids
                geometry = vset.geometry[kind][[i for i, _ in chunk]]
                pooled = text["pooled"].expand(len(chunk), -1).to(dtype)
                added = {"text_embeds": pooled, "time_ids": geometry.to(device, dtype)}
            prediction = module.unet(noisy.to(dtype), steps, states, added_cond_kwargs=added).sample
            target = scheduler.get_velocity(clean, noise, steps) if module.prediction_type == "v_prediction" else noise
            total += F.mse_loss(prediction.float(), target.float(), reduction="sum").item() / clean[0].numel()
        losses[f"val/loss_{'instance' if kind == 'instance' else 'prior'}"] = total / len(pairs)
    if "val/loss_prior" in losses:  # DreamBooth's loss at prior weight 1: the same yardstick for every trial
        losses["val/loss"] = losses["val/loss_instance"] + losses["val/loss_prior"]
    return losses


def _split_by_shape(chunk: list[tuple[int, int]], latents) -> list[list[tuple[int, int]]]:
    """``chunk`` cut where its images' latent shape changes (it is sorted by shape)."""
    parts: list[list[tuple[int, int]]] = []
    for pair in chunk:
        if parts and latents[parts[-1][-1][0]].shape == latents[pair[0]].shape:
            parts[-1].append(pair)
        else:
            parts.append([pair])
    return parts


class ValidationLossCallback(L.Callback):
    """The validation loss before training (step 0) and every ``eval.val_every_n_steps``, logged in the row of
    the step just taken and put in ``callback_metrics`` (for checkpoints, pruning and the best step)."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.vset: ValidationSet | None = None  # set by the run before training (it needs the base model)
        self._last_step: int | None = None
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, values): metrics.json's in_training

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.global_step == 0:
            self.validate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.cfg.val_every_n_steps == 0 and step != self._last_step:
            self.validate(trainer, pl_module)

    def validate(self, trainer: L.Trainer, pl_module) -> None:
        step = trainer.global_step
        self._last_step = step
        if not trainer.is_global_zero:
            return
        if self.vset is None:
            raise RuntimeError("ValidationLossCallback.vset is not set: build_validation_set before training")
        started = time.perf_counter()
        with pl_module.evaluating(offloaded=False), trainer.precision_plugin.forward_context():
            values = validation_loss(pl_module, self.vset, self.cfg.metric_seed, self.cfg.batch_size)
        values["val/seconds"] = time.perf_counter() - started
        self.history.append((step, values))
        for logger in trainer.loggers:
            logger.log_metrics(values, step=max(step - 1, 0))
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
