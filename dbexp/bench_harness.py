"""The benchmark harness both benchmark modules measure with (:mod:`dbexp.bench`, :mod:`dbexp.bench_train`):
a train config composed under a scratch folder with only training on, a Lightning callback that times
optimizer steps, peak memory, FLOPs counted on the meta device, and a line naming the device.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from dbexp import CONF_DIR


class PeakMemory:
    """Peak memory over a stretch of work: CUDA max allocated on a GPU; on a CPU the process's peak
    resident set (VmHWM), reset at :meth:`start` through ``/proc/self/clear_refs`` where Linux allows it
    (else the peak since the process started)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.kind = "CUDA max allocated" if self.cuda else "peak RSS"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        except OSError:
            self.kind = "peak RSS since the process started"

    def peak_bytes(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        status = Path("/proc/self/status")
        if status.is_file():
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
            return int(line.split()[1]) * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StepTimer(L.Callback):
    """Wall time between consecutive optimizer steps (data, forward, backward, update) and the peak
    memory of training (:class:`PeakMemory`), written as JSON."""

    def __init__(self, out: str) -> None:
        self.out, self.stamps = Path(out), []

    def on_train_start(self, trainer, pl_module) -> None:
        self.memory = PeakMemory(pl_module.device)
        self.memory.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.memory.cuda:
            torch.cuda.synchronize(self.memory.device)
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        steps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        record = {"steps": steps, "peak_bytes": self.memory.peak_bytes(), "memory_kind": self.memory.kind}
        self.out.write_text(json.dumps(record))


#: Overrides that leave only training in a benchmarked run: no checkpoints, loggers, samples, evaluation, export.
QUIET = [
    "callbacks=none",
    "logger=none",
    "export.enabled=false",
    "eval.every_n_steps=0",
    "eval.at_start=false",
    "eval.num_inference_steps=1",
    "+trainer.enable_progress_bar=false",
]


#: One real-architecture run (random weights at 64 px, 2 steps), cheap in all that does not change what its weights,
#: optimizer state and exports weigh: ``bench disk`` and ``make test-sd`` (add ``model=sd15|sd21``).
SMALL_REAL_RUN = [
    "model.init=random",
    "data.resolution=64",
    "trainer.max_steps=2",
    "prior.num_class_images=2",
    "prior.num_inference_steps=2",
    "eval.metrics=tiny",
    "eval.num_prompts=1",
    "eval.images_per_prompt=2",
    "eval.pres_images=1",
    "eval.num_inference_steps=2",
    "eval.baseline=false",
    "eval.at_start=false",
    "eval.every_n_steps=0",
    "callbacks.progress_bar=null",
]


def compose_config(root: Path, name: str, overrides: list[str]) -> DictConfig:
    """The train config with every folder under ``root`` (a benchmark never touches the user's outputs)."""
    from hydra import compose, initialize_config_dir

    from dbexp.config import register_configs

    register_configs()

    paths = [
        f"paths.root_dir={root}",
        f"paths.log_dir={root}",
        f"paths.runs_dir={root / 'runs'}",
        f"paths.output_dir={root / 'runs' / name}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*paths, *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def counted_flops(model_cfg, resolution: int) -> dict[str, float]:
    """TFLOP per sample of VAE encode, text encoder(s) and UNet forward, counted on the meta device
    (no weights, no memory: works for the full SD and SDXL architectures here). SDXL's UNet is counted with
    its added conditioning (pooled text embedding + time ids), its text encoders together."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from omegaconf import OmegaConf
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    arch = OmegaConf.to_container(model_cfg.architecture, resolve=True)
    factor = 2 ** (len(arch["vae"]["block_out_channels"]) - 1)
    xl = arch.get("text_encoder_2") is not None
    with torch.device("meta"), torch.no_grad():
        unet, vae = UNet2DConditionModel(**arch["unet"]), AutoencoderKL(**arch["vae"])
        encoders = [CLIPTextModel(CLIPTextConfig(**arch["text_encoder"]))]
        if xl:
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**arch["text_encoder_2"])))
        pixels = torch.zeros(1, 3, resolution, resolution)
        latents = torch.zeros(1, 4, resolution // factor, resolution // factor)
        states = torch.zeros(1, 77, arch["unet"].get("cross_attention_dim") or arch["text_encoder"]["hidden_size"])
        added = None
        if xl:
            pooled = torch.zeros(1, arch["text_encoder_2"]["projection_dim"])
            added = {"text_embeds": pooled, "time_ids": torch.zeros(1, 6)}
        ids = torch.zeros(1, 77, dtype=torch.long)
        calls = {
            "vae_encode": lambda: vae.encode(pixels),
            "text_encoder": lambda: [encoder(ids) for encoder in encoders],
            "unet_forward": lambda: unet(latents, torch.tensor([10]), states, added_cond_kwargs=added),
        }
        counted = {}
        for name, call in calls.items():
            with FlopCounterMode(display=False) as counter:
                call()
            counted[name] = counter.get_total_flops() / 1e12
    return counted


def device_description() -> str:
    """``CUDA <name>`` or ``CPU (<n> threads)``, for the benchmark tables' headings."""
    threads = torch.get_num_threads()
    return f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else f"CPU ({threads} threads)"
