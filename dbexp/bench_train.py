"""``python -m dbexp.bench train [overrides] --presets default,16gb --finetune full,lora``: training speed and memory.

For each fine-tuning mode × memory preset, a whole dbexp run (Lightning, the DreamBooth module, the
data stream) trains ``--warmup + --steps`` steps with nothing else on (no samples, checkpoints,
loggers, evaluation, export). Per row: the median and p90 step time after the warm-up, the peak
memory of training (:class:`~dbexp.bench_harness.PeakMemory`), and on a GPU the model FLOPs utilisation.

Beside it, for ``memory=default``, a bare PyTorch + diffusers loop trains the same model on the same
batch (the cached latents and text embeddings dbexp uses, instance + class sample) with the same
optimizer, learning-rate schedule, clipping and loss; the two alternate ``--rounds`` times in one
process (in ABBA order), and the table ends with dbexp's step ÷ the bare loop's: the median over rounds of
the ratio of the two medians measured back to back (goal ≤ 1.05). Shared machines drift; pairing cancels that.

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

import torch

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
    bare_ms: dict[str, list[float]] = {mode: [] for mode in finetunes}
    paired: dict[str, list[float]] = {mode: [] for mode in finetunes}  # per round: dbexp median ÷ bare median
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
            # ABBA order (bare loop first every other round), so a machine that drifts faster or slower
            # during the benchmark does not favour either side.
            bare_times = bare_loop(cfg, steps, warmup) if reference and round_ % 2 else []
            gc.collect()
            run(cfg)
            timed = json.loads(out.read_text())
            record = records[(mode, preset)]
            record["steps"] += timed["steps"][warmup:]
            record["peak"].append(timed["peak_bytes"])
            record["memory_kind"] = timed["memory_kind"]
            if reference:
                bare_times = bare_times or bare_loop(cfg, steps, warmup)
                bare_ms[mode] += bare_times
                paired[mode].append(statistics.median(timed["steps"][warmup:]) / statistics.median(bare_times))
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
            "dbexp_ms": statistics.median(records[(mode, "default")]["steps"]) * 1e3,
            "bare_ms": statistics.median(bare_ms[mode]) * 1e3,
            "ratio": statistics.median(paired[mode]),
            "round_ratios": paired[mode],
        }
        for mode in finetunes
        if paired[mode]
    }
    print_table(first, rows, ratios, steps, warmup, rounds)
    return {"rows": rows, "dbexp_vs_bare": ratios}


def bench_overrides(mode: str, preset: str, max_steps: int, overrides: list[str], out: Path) -> list[str]:
    timer = f"+callbacks.timer={{_target_: dbexp.bench_harness.StepTimer, out: '{out}'}}"
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


def bare_loop(cfg, steps: int, warmup: int) -> list[float]:
    """The same training in plain PyTorch + diffusers (+ peft for LoRA): step times after ``warmup``."""
    import torch.nn.functional as F
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
    prompts = [plan.instance_prompt] + ([plan.class_prompt] if plan.class_prompt is not None else [])
    latents = [encoded.instance_latents[0]] + ([encoded.class_latents[0]] if plan.class_prompt is not None else [])
    batch = cfg.data.batch_size
    mean = torch.stack([entry["mean"] for entry in latents for _ in range(batch)]).to(device)
    std = torch.stack([entry["std"] for entry in latents for _ in range(batch)]).to(device)
    tokens = parts.tokenizer(
        [p for p in prompts for _ in range(batch)],
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids = tokens.input_ids.to(device)
    text_trains = bool(cfg.finetune.train_text_encoder)
    unet.requires_grad_(cfg.finetune.method == "full")
    text_encoder.requires_grad_(text_trains and cfg.finetune.method == "full")
    if cfg.finetune.method == "lora":
        lora = cfg.finetune.lora
        alpha = lora.alpha if lora.alpha is not None else lora.rank
        unet.add_adapter(LoraConfig(r=lora.rank, lora_alpha=alpha, target_modules=list(lora.unet_target_modules)))
        if text_trains:
            targets = list(lora.text_encoder_target_modules)
            text_encoder.add_adapter(LoraConfig(r=lora.rank, lora_alpha=alpha, target_modules=targets))
    text_encoder.train(text_trains)
    params = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay)
    schedule = {"constant": "constant_with_warmup"}.get(opt.lr_schedule, opt.lr_schedule)
    lr_schedule = get_scheduler(
        schedule, optimizer, num_warmup_steps=opt.warmup_steps, num_training_steps=steps + warmup
    )
    scheduler = parts.noise_scheduler
    states = (
        None
        if text_trains
        else torch.cat([e["states"] for e in encoded.text_embeddings for _ in range(batch)]).to(device)
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=str(cfg.trainer.precision) == "bf16-mixed")
    clip, gamma = cfg.trainer.get("gradient_clip_val"), cfg.finetune.min_snr_gamma
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        latents = (mean + std * torch.randn_like(std)) * parts.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=device)
        with autocast:
            encoder_states = text_encoder(ids)[0] if text_trains else states
            prediction = unet(scheduler.add_noise(latents, noise, t), t, encoder_states).sample.float()
        target = (
            scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
        )
        per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
        if gamma:
            snr = compute_snr(scheduler, t)
            weight = torch.clamp(snr, max=gamma) / (
                snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr
            )
            per_sample = per_sample * weight
        loss = per_sample[:batch].mean()
        if len(prompts) == 2:
            loss = loss + cfg.prior.weight * per_sample[batch:].mean()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times[warmup:]


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
            f"dbexp step ÷ bare PyTorch + diffusers loop ({mode}, memory=default): {r['ratio']:.3f} "
            f"(median of the rounds' ratios {rounds_text}; medians {r['dbexp_ms']:.2f} / {r['bare_ms']:.2f} ms)"
            "  (goal ≤ 1.05)"
        )


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
