"""``python -m dbexp.bench train [overrides] --presets default,16gb --finetune full,lora``: training speed and memory.

For each fine-tuning mode × memory preset, a whole dbexp run (Lightning, the DreamBooth module, the
data stream) trains ``--warmup + --steps`` steps with nothing else on (no samples, checkpoints,
loggers, evaluation, export). Per row: the median and p90 step time after the warm-up, the peak
memory of training (:class:`~dbexp.bench_harness.PeakMemory`), and on a GPU the model FLOPs utilisation.

Beside it, for ``memory=default``, a bare PyTorch + diffusers loop (:class:`BareLoop`) trains its own copy of
the same model on the same batch (the cached latents and text embeddings dbexp uses, instance + class sample)
with the same optimizer, learning-rate schedule, clipping and loss — **step by step in turn with dbexp**, in one
more dbexp run per round (:class:`InterleavedBare`, a callback that runs one bare step after each dbexp step). A
machine whose speed drifts (other processes, clocks, a neighbour on a shared host) slows both loops alike, so
the ratio of each adjacent pair of steps cancels the drift; the table ends with the median of those ratios
(per round, then over ``--rounds``; goal ≤ 1.03). The table's own rows come from runs without the bare copy,
so their peak memory is dbexp's alone.

MFU counts model FLOPs, not hardware FLOPs: UNet forward FLOPs counted on the meta device at the run's
resolution, × 3 for a full fine-tune (forward, and backward for activations and weights) or × 2 with
LoRA (the frozen weights get no gradient), × the samples of a step; plus the text encoder the same way
when it trains, plus the VAE encoder when latents are not cached. Recomputation by activation
checkpointing is not counted (it is overhead). The peak is the device's dense bf16 figure
(:data:`PEAK_BF16_TFLOPS`, or ``--peak-tflops``); MFU is left out for fp32 runs and on CPUs.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dbexp.bench_harness import QUIET, compose_config, counted_flops, device_description
from dbexp.errors import UserInputError

#: Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets), by a part of the CUDA device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM (HBM3)
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
}


def bench_train(
    root: Path,
    overrides: list[str],
    presets: list[str],
    finetunes: list[str],
    steps: int = 20,
    warmup: int = 5,
    rounds: int = 2,
    peak_tflops: float | None = None,
    bare: bool = True,
) -> dict:
    """``bare=False``: no bare loop beside ``memory=default``, peak memory and step times only (the real
    architectures on a small machine: the bare loop loads a second copy of the model and its optimizer)."""
    from dbexp.train import run

    settings = [(mode, preset) for mode in finetunes for preset in presets]
    records: dict[tuple[str, str], dict] = {key: {"steps": [], "peak": []} for key in settings}
    pairs: dict[str, dict[str, list]] = {mode: {"ratio": [], "dbexp": [], "bare": []} for mode in finetunes}
    configs = {}
    for round_ in range(rounds):
        for mode, preset in settings:
            name = f"{round_}-{mode}-{preset}"
            out = root / f"{name}.json"
            cfg = compose_config(root, name, bench_overrides(mode, preset, steps + warmup, overrides, out))
            configs[(mode, preset)] = cfg
            reference = preset == "default" and bare
            if reference and cfg.model.architecture.get("text_encoder_2") is not None:
                raise UserInputError("bench train: the bare loop trains SD1.5 / SD2.1 only; for SDXL add --no-bare")
            gc.collect()
            run(cfg)
            timed = json.loads(out.read_text())
            record = records[(mode, preset)]
            record["steps"] += timed["steps"][warmup:]
            record["peak"].append(timed["peak_bytes"])
            record["memory_kind"] = timed["memory_kind"]
            if reference:
                interleaved = run_interleaved(root, f"{name}-bare", cfg, steps, warmup, overrides, mode)
                for key in ("dbexp", "bare"):
                    pairs[mode][key].append(statistics.median(interleaved[key]))
                step_ratios = [a / b for a, b in zip(interleaved["dbexp"], interleaved["bare"], strict=True)]
                pairs[mode]["ratio"].append(statistics.median(step_ratios))
    rows = []
    first = next(iter(configs.values()))
    counted = counted_flops(first.model, first.data.resolution)  # the same model in every row: count once
    peak = peak_tflops or device_peak_tflops()
    for mode, preset in settings:
        cfg, times = configs[(mode, preset)], records[(mode, preset)]["steps"]
        median = statistics.median(times)
        flops = step_flops(cfg, counted)
        mixed = str(cfg.trainer.precision).startswith(("bf16", "16"))
        rows.append(
            {
                "finetune": mode,
                "memory": preset,
                "precision": str(cfg.trainer.precision),
                "median_ms": median * 1e3,
                "p90_ms": _p90(times) * 1e3,
                "peak_mib": max(records[(mode, preset)]["peak"]) / 2**20,
                "memory_kind": records[(mode, preset)]["memory_kind"],
                "tflop_per_step": flops,
                "mfu": flops / median / peak if peak and mixed and torch.cuda.is_available() else None,
            }
        )
    ratios = {
        mode: {
            "dbexp_ms": statistics.median(p["dbexp"]) * 1e3,
            "bare_ms": statistics.median(p["bare"]) * 1e3,
            "ratio": statistics.median(p["ratio"]),
            "round_ratios": p["ratio"],
        }
        for mode, p in pairs.items()
        if p["ratio"]
    }
    print_table(first, rows, ratios, steps, warmup, rounds)
    return {"rows": rows, "dbexp_vs_bare": ratios}


def bench_overrides(
    mode: str, preset: str, max_steps: int, overrides: list[str], out: Path, timer: str = ""
) -> list[str]:
    timer = timer or f"+callbacks.timer={{_target_: dbexp.bench_harness.StepTimer, out: '{out}'}}"
    only_training = [
        *QUIET,
        "eval.final=false",
        "eval.baseline=false",
        "eval.metrics=none",
        "eval.metrics_every_n_steps=0",
        "prior.num_class_images=2",  # batch 1 + 1 class image needs only a few; made once, cached
        "prior.num_inference_steps=2",
        f"trainer.max_steps={max_steps + 1}",  # + 1: step times are differences of timestamps
    ]
    return [*only_training, f"memory={preset}", f"finetune.method={mode}", *overrides, timer]


def run_interleaved(root: Path, name: str, cfg, steps: int, warmup: int, overrides: list[str], mode: str) -> dict:
    """One dbexp run (``memory=default``) with a bare step after each of its steps: the step times of both after
    ``warmup``, pair by pair (:class:`InterleavedBare`)."""
    from dbexp.train import run

    config, out = root / f"{name}.yaml", root / f"{name}.json"
    OmegaConf.save(cfg, config, resolve=True)  # what the bare loop trains: this round's composed setting
    timer = f"+callbacks.timer={{_target_: dbexp.bench_train.InterleavedBare, out: '{out}', config: '{config}'}}"
    gc.collect()
    run(compose_config(root, name, bench_overrides(mode, "default", steps + warmup, overrides, out, timer)))
    timed = json.loads(out.read_text())
    return {key: timed[key][warmup:] for key in ("dbexp", "bare")}


class InterleavedBare(L.Callback):
    """After each dbexp training step, one step of :class:`BareLoop` on its own copy of the model. A dbexp step is
    timed from the end of the bare step before it to the end of its batch (the data, Lightning's loop and hooks,
    forward, backward, update); each bare step on its own. Writes both lists as JSON to ``out``."""

    def __init__(self, out: str, config: str) -> None:
        self.out, self.config = Path(out), OmegaConf.load(config)
        self.times: dict[str, list[float]] = {"dbexp": [], "bare": []}

    def on_train_start(self, trainer, pl_module) -> None:
        self.bare = BareLoop(self.config, trainer.max_steps)
        self.cuda = pl_module.device.type == "cuda"
        self.resumed = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ended = self._now()
        self.times["dbexp"].append(ended - self.resumed)
        self.times["bare"].append(self.bare.step())
        self.resumed = self._now()

    def on_train_end(self, trainer, pl_module) -> None:
        first = 1  # the first dbexp step also timed the start of the loop
        self.out.write_text(json.dumps({key: values[first:] for key, values in self.times.items()}))
        del self.bare


class BareLoop:
    """The same training in plain PyTorch + diffusers (+ peft for LoRA), on its own copy of the model and one fixed
    batch on the device; :meth:`step` trains one step and returns its seconds."""

    def __init__(self, cfg, total_steps: int) -> None:
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import compute_snr
        from peft import LoraConfig

        from dbexp.model_loading import load_model
        from dbexp.prior_cache import class_images
        from dbexp.run import encode_once, plan_run

        if cfg.memory.optimizer_8bit or cfg.memory.gradient_checkpointing:
            raise ValueError("the bare loop is the reference for memory=default only")
        device = torch.device("cuda" if str(cfg.trainer.accelerator) in ("gpu", "cuda") else "cpu")
        plan = plan_run(cfg)
        parts = load_model(cfg.model, cfg.paths.cache_dir)
        classes = None
        if plan.class_prompt is not None:  # prior on
            classes = class_images(cfg.prior, parts, plan.class_prompt, cfg.data.resolution, cfg.paths.cache_dir).images
        encoded = encode_once(cfg, parts, plan, classes, device)
        unet, text_encoder = parts.unet.to(device).train(), parts.text_encoder.to(device)
        self.two = plan.class_prompt is not None
        prompts = [plan.instance_prompt] + ([plan.class_prompt] if self.two else [])
        latents = [encoded.instance_latents[0]] + ([encoded.class_latents[0]] if self.two else [])
        batch = self.batch = cfg.data.batch_size
        self.mean = torch.stack([entry["mean"] for entry in latents for _ in range(batch)]).to(device)
        self.std = torch.stack([entry["std"] for entry in latents for _ in range(batch)]).to(device)
        tokens = parts.tokenizer(
            [p for p in prompts for _ in range(batch)],
            padding="max_length",
            max_length=parts.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        self.ids = tokens.input_ids.to(device)
        self.text_trains = bool(cfg.finetune.train_text_encoder)
        unet.requires_grad_(cfg.finetune.method == "full")
        text_encoder.requires_grad_(self.text_trains and cfg.finetune.method == "full")
        if cfg.finetune.method == "lora":
            lora = cfg.finetune.lora
            alpha = lora.alpha if lora.alpha is not None else lora.rank
            unet.add_adapter(LoraConfig(r=lora.rank, lora_alpha=alpha, target_modules=list(lora.unet_target_modules)))
            if self.text_trains:
                targets = list(lora.text_encoder_target_modules)
                text_encoder.add_adapter(LoraConfig(r=lora.rank, lora_alpha=alpha, target_modules=targets))
        text_encoder.train(self.text_trains)
        self.unet, self.text_encoder, self.device = unet, text_encoder, device
        self.params = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
        opt = cfg.optimizer
        self.optimizer = torch.optim.AdamW(
            self.params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay
        )
        schedule = {"constant": "constant_with_warmup"}.get(opt.lr_schedule, opt.lr_schedule)
        self.lr_schedule = get_scheduler(
            schedule, self.optimizer, num_warmup_steps=opt.warmup_steps, num_training_steps=total_steps
        )
        self.scheduler, self.scaling = parts.noise_scheduler, parts.vae.config.scaling_factor
        self.states = (
            None
            if self.text_trains
            else torch.cat([e["states"] for e in encoded.text_embeddings for _ in range(batch)]).to(device)
        )
        self.autocast = torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=str(cfg.trainer.precision) == "bf16-mixed"
        )
        self.clip, self.gamma = cfg.trainer.get("gradient_clip_val"), cfg.finetune.min_snr_gamma
        self.prior_weight, self.compute_snr = cfg.prior.weight, compute_snr
        self.v_prediction = self.scheduler.config.prediction_type == "v_prediction"

    def step(self) -> float:
        start = time.perf_counter()
        scheduler, batch = self.scheduler, self.batch
        latents = (self.mean + self.std * torch.randn_like(self.std)) * self.scaling
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=self.device)
        with self.autocast:
            encoder_states = self.text_encoder(self.ids)[0] if self.text_trains else self.states
            prediction = self.unet(scheduler.add_noise(latents, noise, t), t, encoder_states).sample.float()
        target = scheduler.get_velocity(latents, noise, t) if self.v_prediction else noise
        per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
        if self.gamma:
            snr = self.compute_snr(scheduler, t)
            per_sample = per_sample * torch.clamp(snr, max=self.gamma) / (snr + 1 if self.v_prediction else snr)
        loss = per_sample[:batch].mean()
        if self.two:
            loss = loss + self.prior_weight * per_sample[batch:].mean()
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def step_flops(cfg, counted: dict[str, float] | None = None) -> float:
    """Model TFLOP of one training step (see the module docstring); ``counted``: :func:`counted_flops` of the model."""
    counted = counted or counted_flops(cfg.model, cfg.data.resolution)
    passes = 3 if cfg.finetune.method == "full" else 2
    samples = cfg.data.batch_size * (2 if cfg.prior.weight > 0 else 1)
    flops = passes * counted["unet_forward"]
    if cfg.finetune.train_text_encoder:
        flops += passes * counted["text_encoder"]
    if not (cfg.data.cache_latents and cfg.data.center_crop):
        flops += counted["vae_encode"]
    return flops * samples


def device_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for part, peak in PEAK_BF16_TFLOPS.items() if part in name), None)


def print_table(cfg, rows: list[dict], ratios: dict, steps: int, warmup: int, rounds: int) -> None:
    samples = cfg.data.batch_size * (2 if cfg.prior.weight > 0 else 1)
    print(
        f"\ndbexp bench train — model={cfg.model.name}{' (random init)' if cfg.model.init == 'random' else ''}, "
        f"{cfg.data.resolution} px, {samples} samples per step, text encoder "
        f"{'trained' if cfg.finetune.train_text_encoder else 'frozen'}, {device_description()}; "
        f"median of {steps} steps "
        f"after {warmup} warm-up, {rounds} round(s)"
    )
    print(f"{'finetune':<9} {'memory':<8} {'precision':<11} {'ms/step':>9} {'p90 ms':>9} {'peak MiB':>10} {'MFU':>6}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "—"
        print(
            f"{r['finetune']:<9} {r['memory']:<8} {r['precision']:<11} {r['median_ms']:>9.2f} {r['p90_ms']:>9.2f} "
            f"{r['peak_mib']:>10.0f} {mfu:>6}"
        )
    print(f"peak memory: {rows[0]['memory_kind']}; model TFLOP per step: {rows[0]['tflop_per_step']:.4f} (first row)")
    for mode, r in ratios.items():
        rounds_text = ", ".join(f"{x:.3f}" for x in r["round_ratios"])
        print(
            f"dbexp step ÷ bare PyTorch + diffusers loop ({mode}, memory=default), step by step in turn: "
            f"{r['ratio']:.3f} (median of the rounds' median pair ratios {rounds_text}; medians "
            f"{r['dbexp_ms']:.2f} / {r['bare_ms']:.2f} ms)  (goal ≤ 1.03)"
        )


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
