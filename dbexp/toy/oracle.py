"""The toy world's oracle: a small CNN that reads every attribute of a scene from its picture.

Trained on the generator's own labels (``python -m dbexp.toy.oracle``), it tells what a generated
image shows — shape, colour, size, position, background and surface pattern — exactly and fast,
which makes subject fidelity, prompt fidelity and prior preservation measurable in the toy world.
Training pictures are blurred and noised a little, as a small diffusion model's samples are.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from dbexp.toy.world import BACKGROUNDS, COLORS, PATTERNS, POSITIONS, SHAPES, SIZES, render, sample_scene

HEADS = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": SIZES,
    "position": POSITIONS,
    "background": tuple(BACKGROUNDS),
    "pattern": PATTERNS,
}
WEIGHTS, CONFIG = "oracle.safetensors", "oracle.json"


class ToyOracle(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(3, width),
            block(width, width),
            nn.MaxPool2d(2),  # 16
            block(width, 2 * width),
            nn.MaxPool2d(2),  # 8
            block(2 * width, 2 * width),
            nn.MaxPool2d(2),  # 4: coarse positions survive
        )
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in HEADS.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for ``pixels`` in [-1, 1], shape (N, 3, 32, 32)."""
        hidden = self.body(self.features(pixels))
        return {name: head(hidden) for name, head in self.heads.items()}

    @torch.no_grad()
    def read_and_embed(self, images) -> tuple[list[dict[str, str]], torch.Tensor]:
        """What each PIL image shows, attribute by attribute, and the hidden features every head reads
        from (what DIV compares, as DINO's in DreamBench)."""
        self.eval()
        hidden = self.body(self.features(to_pixels(images)))
        picks = {name: head(hidden).argmax(-1).tolist() for name, head in self.heads.items()}
        return [{name: HEADS[name][picks[name][i]] for name in HEADS} for i in range(len(images))], hidden

    def read(self, images) -> list[dict[str, str]]:
        """What each PIL image shows, attribute by attribute."""
        return self.read_and_embed(images)[0]


def to_pixels(images) -> torch.Tensor:
    arrays = [np.asarray(i.convert("RGB").resize((32, 32)), dtype=np.float32) for i in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


def labelled_batch(rng: random.Random, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    scenes = [sample_scene(rng, pattern=rng.choice(PATTERNS)) for _ in range(n)]
    pixels = to_pixels([render(s, 32) for s in scenes])
    targets = {name: torch.tensor([HEADS[name].index(getattr(s, name)) for s in scenes]) for name in HEADS}
    return pixels, targets


def degrade(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A little blur and noise, at random strength per image."""
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :]) / 16
    blurred = F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    mix = torch.rand(len(pixels), 1, 1, 1, generator=generator)
    noise = (
        torch.randn(pixels.shape, generator=generator) * 0.08 * torch.rand(len(pixels), 1, 1, 1, generator=generator)
    )
    return (mix * blurred + (1 - mix) * pixels + noise).clamp(-1, 1)


def train(steps: int = 3000, batch_size: int = 128, seed: int = 0, log_every: int = 250) -> tuple[ToyOracle, dict]:
    torch.manual_seed(seed)
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    model = ToyOracle()
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    started = time.time()
    for step in range(steps):
        pixels, targets = labelled_batch(rng, batch_size)
        logits = model(degrade(pixels, generator))
        loss = sum(F.cross_entropy(logits[name], targets[name]) for name in HEADS)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % log_every == 0:
            print(f"oracle step {step}: loss {loss.item():.4f} ({time.time() - started:.0f} s)", flush=True)
    return model.eval(), {"steps": steps, "batch_size": batch_size, "seed": seed, "seconds": time.time() - started}


@torch.no_grad()
def accuracy(model: ToyOracle, count: int = 2000, seed: int = 12345, degraded: bool = False) -> dict[str, float]:
    """Per-attribute accuracy on fresh scenes (another seed than training)."""
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    pixels, targets = labelled_batch(rng, count)
    logits = model.eval()(degrade(pixels, generator) if degraded else pixels)
    return {name: float((logits[name].argmax(-1) == targets[name]).float().mean()) for name in HEADS}


def save(model: ToyOracle, folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps({"heads": HEADS, **info}, indent=2) + "\n")


def load(folder: Path) -> ToyOracle:
    model = ToyOracle()
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dbexp.toy.oracle", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for oracle.safetensors + oracle.json")
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args(argv)
    model, info = train(args.steps)
    info["accuracy"] = accuracy(model)
    info["accuracy_degraded"] = accuracy(model, degraded=True)
    save(model, args.out, info)
    print(json.dumps(info, indent=2))
    print(f"oracle: {args.out / WEIGHTS}")


if __name__ == "__main__":
    sys.exit(main())
