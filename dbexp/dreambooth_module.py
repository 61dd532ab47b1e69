"""The DreamBooth training task as a LightningModule: the loss, the optimizer, what is trained.

The VAE is frozen (eval mode, no grad, never in the optimizer); the UNet is trained; the text
encoder only with ``finetune.train_text_encoder``. With ``finetune=lora`` the base weights are
frozen too and only LoRA adapters train (``dbexp.finetune``). Checkpoints hold the trained weights only (the parameters
that require grad): the frozen ones come back from the base model on resume.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from diffusers import StableDiffusionPipeline

from dbexp import metric_suites
from dbexp.config import FinetuneConfig, MemoryConfig, OptimizerConfig
from dbexp.datamodule import CLASS_STREAM, INSTANCE_STREAM, NOISE, sample_seed
from dbexp.encoding_cache import encode_text, tokenize
from dbexp.errors import UserInputError
from dbexp.finetune import set_trainable
from dbexp.losses import dreambooth_loss
from dbexp.memory import apply_memory_settings, hold_frozen_in
from dbexp.model_loading import ModelParts
from dbexp.optimization import build_lr_scheduler, build_optimizer
from dbexp.sampling import sampler


class DreamBoothModule(L.LightningModule):
    def __init__(
        self,
        parts: ModelParts,
        finetune_cfg: FinetuneConfig,
        optimizer_cfg: OptimizerConfig,
        instance_prompt: str,
        class_prompt: str | None,
        prior_weight: float,
        seed: int,
        text_embeddings: list[dict[str, torch.Tensor]] | None = None,
        memory_cfg: MemoryConfig | None = None,
        offload: tuple[str, ...] = (),
        half_base: torch.dtype | None = None,
    ) -> None:
        """``text_embeddings``: the frozen text encoders' output for [instance prompt, class prompt]
        (from the cache), used instead of running the encoders every step. ``offload``: frozen parts
        ("vae", "text_encoder", SDXL's "text_encoder_2") whose outputs come from the caches, kept on the CPU
        while training. ``half_base``: the dtype LoRA's frozen base weights are held in (``dbexp.memory``)."""
        super().__init__()
        self.unet, self.vae, self.text_encoder = parts.unet, parts.vae, parts.text_encoder
        self.tokenizer = parts.tokenizer
        self.text_encoder_2, self.tokenizer_2 = parts.text_encoder_2, parts.tokenizer_2  # SDXL; else None
        self.xl = parts.xl
        self.noise_scheduler, self.inference_scheduler = parts.noise_scheduler, parts.inference_scheduler
        self.base_source = parts.source  # what a LoRA export points to
        self.finetune_cfg, self.optimizer_cfg = finetune_cfg, optimizer_cfg
        self.memory_cfg = memory_cfg or MemoryConfig()
        self.prior_weight, self.seed = prior_weight, seed
        self.train_text_encoder = finetune_cfg.train_text_encoder
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.vae.requires_grad_(False)
        set_trainable(finetune_cfg, self.unet, self.text_encoder, self.text_encoder_2)
        apply_memory_settings(self.memory_cfg, self.unet, self.vae, self.text_encoders, self.train_text_encoder)
        # memory.lora_base_dtype: the base weights around the adapters in half precision (the VAE stays float32:
        # SDXL's overflows in float16, and its latents are cached). Sampling then runs under autocast too.
        self.half_base = half_base
        if half_base is not None:
            hold_frozen_in(half_base, [self.unet, *self.text_encoders])
        encoders = {"text_encoder", "text_encoder_2"}
        if set(offload) - {"vae"} - encoders or (encoders & set(offload) and self.train_text_encoder):
            raise ValueError(f"only frozen parts can be offloaded, not {offload}")
        self.offload = tuple(offload)
        tokenizers = {"ids": self.tokenizer} | ({"ids_2": self.tokenizer_2} if self.xl else {})
        for suffix, tokenizer in tokenizers.items():  # instance_ids, class_ids (SDXL also instance_ids_2, …)
            self.register_buffer(f"instance_{suffix}", tokenize(tokenizer, instance_prompt), persistent=False)
            ids = tokenize(tokenizer, class_prompt) if class_prompt is not None else torch.empty(0).long()
            self.register_buffer(f"class_{suffix}", ids, persistent=False)
        if text_embeddings is not None and self.train_text_encoder:
            raise ValueError("cached text embeddings are only valid while the text encoder is frozen")
        self.cached_states = text_embeddings is not None
        for name in ("states", "pooled") if self.cached_states else ():  # instance_states, class_pooled, …
            if name in text_embeddings[0]:
                self.register_buffer(f"instance_{name}", text_embeddings[0][name], persistent=False)
                self.register_buffer(f"class_{name}", text_embeddings[-1][name], persistent=False)
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone(), persistent=False)
        # Frozen weights are not in the checkpoint, so loading it is not strict about them.
        self.strict_loading = False
        self.start_step = 0  # the step training started from in this process (> 0 when resumed)
        self._nonfinite: torch.Tensor | None = None  # _watch_finite's record

    def model_parts(self) -> ModelParts:
        """The current (fine-tuned) model as the parts a pipeline is made of."""
        return ModelParts(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            unet=self.unet,
            noise_scheduler=self.noise_scheduler,
            inference_scheduler=self.inference_scheduler,
            source="fine-tuned",
            tokenizer_2=self.tokenizer_2,
            text_encoder_2=self.text_encoder_2,
        )

    @property
    def text_encoders(self) -> list:
        """The text encoder, and SDXL's second."""
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    @contextlib.contextmanager
    def evaluating(self, offloaded: bool = True) -> Iterator[None]:
        """Eval mode and no grad (with ``offloaded``, the offloaded frozen parts on the device); the previous
        mode comes back afterwards."""
        was_training = self.training
        self.eval()
        if offloaded:
            self._place_offloaded(self.device)
        try:
            with torch.no_grad():
                yield
        finally:
            if offloaded:
                self._place_offloaded(torch.device("cpu"))
            self.train(was_training)

    @contextlib.contextmanager
    def sampling(self, sampler_name: str | None = None) -> Iterator[StableDiffusionPipeline]:
        """A pipeline over the live modules (what the model has learnt so far), while :meth:`evaluating`."""
        half = self.half_base is not None
        with self.evaluating(), torch.autocast(self.device.type, dtype=self.half_base, enabled=half):
            yield self.model_parts().pipeline(scheduler=sampler(self.inference_scheduler, sampler_name))

    def _place_offloaded(self, device: torch.device) -> None:
        for name in self.offload:
            getattr(self, name).to(device)

    @staticmethod
    def metric_names(prior: bool) -> list[str]:
        """What :meth:`training_step` logs (so ``optimized_metric`` can be checked before training): the losses
        ``dbexp.metric_suites.TRAINING`` declares (with the direction that is better), and the learning rate."""
        losses = [name for name in metric_suites.TRAINING if prior or name != "train/loss_prior"]
        return [*losses, "train/lr"]

    # --- modes and trainable parameters ---------------------------------------------------------
    def train(self, mode: bool = True) -> DreamBoothModule:
        super().train(mode)
        self.vae.eval()  # frozen parts never run in training mode
        if not self.train_text_encoder:
            for text_encoder in self.text_encoders:
                text_encoder.eval()
        return self

    def on_fit_start(self) -> None:
        # from_pretrained returns modules in eval mode and Lightning keeps modes as it finds them:
        # set them here, or a resumed run (which draws no step-0 samples) would train in eval mode.
        self.train()
        self._place_offloaded(torch.device("cpu"))  # Lightning moved every part to the device

    def on_train_start(self) -> None:
        self.start_step = self.trainer.global_step  # after a resumed checkpoint is restored
        self._nonfinite = None

    def on_train_end(self) -> None:
        self._stop_if_not_finite()  # training that stopped between logged steps (pruned, early-stopped)

    def trained_keys(self) -> set[str]:
        """State-dict names of the trained weights (full: UNet [+ text encoder]; lora: the adapters)."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        trained = self.trained_keys()
        return {k: v for k, v in self.state_dict().items() if k in trained}

    def configure_optimizers(self) -> dict[str, Any]:
        unet_params = [p for p in self.unet.parameters() if p.requires_grad]
        te_params = [p for e in self.text_encoders for p in e.parameters() if p.requires_grad]
        optimizer = build_optimizer(
            self.optimizer_cfg, unet_params, te_params, eight_bit=self.memory_cfg.optimizer_8bit
        )
        scheduler = build_lr_scheduler(self.optimizer_cfg, optimizer, max(1, self.trainer.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=self.memory_cfg.set_to_none)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trained = self.trained_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Loading is not strict (frozen parts are absent), so check that every trained weight is there.
        missing = sorted(self.trained_keys() - checkpoint["state_dict"].keys())
        if missing:
            raise UserInputError(
                f"ckpt_path: the checkpoint lacks {len(missing)} of this run's trained weights (e.g. {missing[0]}); "
                "it was made with another model, or with finetune.train_text_encoder or finetune.method set differently"
            )

    # --- the training step ----------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        kinds = ["instance", "class"] if "class_index" in batch and self.prior_weight > 0 else ["instance"]
        num_instance = len(batch["instance_index"])
        latents, noise, timesteps = self._diffusion_inputs(batch, kinds)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        text = self._text_conditioning(batch, kinds)
        prediction = self.unet(
            noisy, timesteps, text["states"], added_cond_kwargs=self._added(batch, kinds, text)
        ).sample
        if self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = dreambooth_loss(
            prediction,
            target,
            timesteps,
            num_instance=num_instance,
            prior_weight=self.prior_weight,
            alphas_cumprod=self.alphas_cumprod,
            min_snr_gamma=self.finetune_cfg.min_snr_gamma,
            prediction_type=self.prediction_type,
        )
        self._watch_finite(loss)
        if self._logs_this_step():
            self._stop_if_not_finite()
            self.log("train/loss", loss.total, prog_bar=True)
            self.log("train/loss_instance", loss.instance)
            if loss.prior is not None:
                self.log("train/loss_prior", loss.prior)
            for group in self.trainer.optimizers[0].param_groups if self._trainer else []:
                name = "train/lr" if group.get("name") == "unet" else f"train/lr_{group.get('name')}"
                self.log(name, group["lr"])
        return loss.total

    def _watch_finite(self, loss) -> None:
        """Remember, on the loss's device, the first step whose loss is not finite — no host sync (a GPU
        would wait for every step to finish); :meth:`_stop_if_not_finite` reads it on logged steps."""
        total = loss.total.detach().float()  # float32: steps exact to 2^24, and MPS has no float64
        prior = loss.prior.detach().float() if loss.prior is not None else torch.full_like(total, -1.0)  # none
        if self._nonfinite is None:  # [batches seen, first bad batch (-1: none), its total, instance, prior loss]
            self._nonfinite = torch.full((5,), -1.0, device=total.device)
            self._nonfinite[0] = 0
        watch = self._nonfinite
        row = torch.stack([watch[0], total, loss.instance.detach().float(), prior])
        fresh = ~torch.isfinite(total) & (watch[1] < 0)
        watch[1:] = torch.where(fresh, row, watch[1:])
        watch[0] += 1

    def _stop_if_not_finite(self) -> None:
        """Stop (a sweep marks the trial FAIL with this reason) at the first logged step after a loss went
        NaN or infinite — at most ``trainer.log_every_n_steps`` steps late, not after hours of NaN steps —
        naming the step it happened at."""
        if self._nonfinite is None:
            return
        _, batch, total, instance, prior = self._nonfinite.tolist()  # the one host sync, on logged steps
        if batch >= 0:
            accumulate = self.trainer.accumulate_grad_batches if self._trainer else 1
            step = self.start_step + int(batch) // max(1, accumulate)
            raise FloatingPointError(
                f"training loss is {total} at step {step} (instance {instance}, "
                f"prior {None if prior == -1.0 else prior}); "
                "lower optimizer.lr or enable gradient clipping (trainer.gradient_clip_val)"
            )

    def _logs_this_step(self) -> bool:
        """Whether this step's values reach a logger (every ``trainer.log_every_n_steps``, as Lightning
        writes them) or are the last (metrics.json). ``self.log`` costs ~0.7 ms a call on a CPU — more than
        5 % of a tiny model's step — and a value logged on other steps is overwritten unseen."""
        if not self._trainer:
            return True
        step = self.global_step + 1
        return step % max(1, self.trainer.log_every_n_steps) == 0 or step >= self.trainer.max_steps

    def _text_conditioning(self, batch: dict[str, torch.Tensor], kinds: list[str]) -> dict[str, torch.Tensor]:
        """:func:`~dbexp.encoding_cache.encode_text` per sample (``states``; SDXL also ``pooled``): cached for
        frozen encoders, else computed (with grad when trained)."""
        counts = [len(batch[f"{kind}_index"]) for kind in kinds]

        def per_sample(name: str) -> torch.Tensor:  # instance_<name> or class_<name>, one row per sample
            rows = [
                getattr(self, f"{k}_{name}").expand(n, *getattr(self, f"{k}_{name}").shape[1:])
                for k, n in zip(kinds, counts, strict=True)
            ]
            return torch.cat(rows)

        if self.cached_states:
            return {name: per_sample(name) for name in ("states", "pooled") if hasattr(self, f"instance_{name}")}
        ids = {name: per_sample(name) for name in ("ids", "ids_2") if hasattr(self, f"instance_{name}")}
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return encode_text(self.text_encoder, ids["ids"], self.text_encoder_2, ids.get("ids_2"))

    def _added(self, batch: dict[str, torch.Tensor], kinds: list[str], text: dict[str, torch.Tensor]) -> dict | None:
        """SDXL's added conditioning: the pooled text embedding and the time ids (each photo's original size,
        crop and target size, from the sample's ``geometry``); None for SD1.x/2.x."""
        if not self.xl:
            return None
        geometry = torch.cat([batch[f"{kind}_geometry"] for kind in kinds])
        return {"text_embeds": text["pooled"], "time_ids": geometry.to(text["pooled"].device, text["pooled"].dtype)}

    def _posterior(self, batch: dict[str, torch.Tensor], kinds: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior's mean and std per sample: cached latents, or the VAE on the pixels."""
        if all(f"{kind}_latent_mean" in batch for kind in kinds):
            return (
                torch.cat([batch[f"{k}_latent_mean"] for k in kinds]),
                torch.cat([batch[f"{k}_latent_std"] for k in kinds]),
            )
        pixels = torch.cat([batch[f"{kind}_pixels"] for kind in kinds])
        with torch.no_grad():
            posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return posterior.mean, posterior.std

    def _diffusion_inputs(
        self, batch: dict[str, torch.Tensor], kinds: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents (a posterior sample), noise and timesteps — per sample from its own CPU generator,
        so they depend on the sample's stream position only (not on device, batch, cache or resume)."""
        streams = {"instance": INSTANCE_STREAM, "class": CLASS_STREAM}
        seeds = [sample_seed(self.seed, streams[k], int(i), NOISE) for k in kinds for i in batch[f"{k}_index"]]
        mean, std = self._posterior(batch, kinds)
        shape = mean.shape[1:]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        latent_eps = torch.stack([torch.randn(shape, generator=g) for g in generators])
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        num_train_timesteps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.cat([torch.randint(0, num_train_timesteps, (1,), generator=g) for g in generators])
        if self.finetune_cfg.noise_offset:
            offset = torch.stack([torch.randn(shape[0], 1, 1, generator=g) for g in generators])
            noise = noise + self.finetune_cfg.noise_offset * offset
        device = mean.device
        latents = (mean + std * latent_eps.to(device, mean.dtype)) * self.vae.config.scaling_factor
        return latents, noise.to(device, latents.dtype), timesteps.to(device)
