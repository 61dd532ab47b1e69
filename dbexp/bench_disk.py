"""``python -m dbexp.bench disk``: what a sweep preset leaves on disk, from the files one trial leaves.

One training run on the real architecture (default: SD1.5 with random weights at 64 px, 2 steps — the sizes of
weights, optimizer state and exports do not depend on the resolution or the step count), with the preset's
disk settings (one step file, the trained-weights cache, its export formats in float16). Its files are
measured by kind, then multiplied by the preset's trial count:

* before — every trial keeps what dbexp 0.2.0 left: the step file and ``last.ckpt`` as a second copy, the export
  in float32 (counted from the export's own tensor headers), the cache entry, the small files;
* now — every trial keeps its small files (metrics, samples, evaluation, logs); only ``keep_best`` trials (the
  preset's ``hydra.sweeper.keep``) keep their export and cache entry; checkpoints go when a trial ends (one step
  file per running trial while it trains: the peak, stated apart).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from dbexp import SWEEPS_DIR
from dbexp.console import format_bytes

#: The SD presets' disk settings.
DISK = [
    "callbacks.model_checkpoint.save_top_k=1",
    "reuse_trained=true",
    "export.enabled=true",
    "export.formats=[diffusers,single_file]",
]


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed; a hard-linked file counted once)."""
    seen, total = set(), 0
    for folder, _, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(folder, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def float32_bytes(folder: Path, skip: tuple[str, ...] = ()) -> int:
    """What the safetensors files under ``folder`` would take with every floating tensor in float32 (from their
    headers: shapes and dtypes), plus the folder's other files as they are."""
    from safetensors import safe_open

    total = 0
    for file in folder.rglob("*"):
        if not file.is_file() or file.name in skip:
            continue
        if file.suffix != ".safetensors":
            total += file.stat().st_size
            continue
        with safe_open(file, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no iterator)
                piece = f.get_slice(key)
                numel = 1
                for n in piece.get_shape():
                    numel *= n
                dtype = piece.get_dtype()
                total += numel * (4 if dtype in ("F16", "BF16", "F32") else {"I64": 8, "F64": 8}.get(dtype, 4))
    return total


def preset_sweeper(preset: str) -> dict:
    sweeper = OmegaConf.load(SWEEPS_DIR / f"{preset}.yaml").hydra.sweeper
    return {
        "n_trials": int(sweeper.n_trials),
        "keep": sweeper.get("keep", "all"),
        "keep_best": sweeper.get("keep_best", 3),
    }


def bench_disk(root: Path, overrides: list[str], preset: str) -> dict:
    from dbexp.bench_harness import SMALL_REAL_RUN, compose_config
    from dbexp.export import SINGLE_FILE, export_dtype
    from dbexp.train import run

    sweeper = preset_sweeper(preset)
    n, keep = sweeper["n_trials"], sweeper["keep"]
    k = n if keep == "all" else int(sweeper["keep_best"])  # front: counted as keep_best (its size is the sweep's)
    given = {o.split("=", 1)[0] for o in overrides}
    model_given = "model" in given  # another model: none of the SD1.5 trial's model keys
    trial = [
        o
        for o in ["model=sd15", *SMALL_REAL_RUN]
        if o.split("=", 1)[0] not in given and not (model_given and o.startswith("model"))
    ]
    cfg = compose_config(root, "trial", [f"paths.cache_dir={root / 'cache'}", *trial, *DISK, *overrides])
    run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    step_files = [f for f in (run_dir / "checkpoints").iterdir() if f.is_file() and not f.is_symlink()]
    sizes = {
        "step file (weights + optimizer)": sum(f.stat().st_size for f in step_files),
        f"export ({export_dtype(cfg.export, cfg.model)}, diffusers + single file)": tree_bytes(run_dir / "pipeline"),
        "trained-weights cache entry": tree_bytes(root / "cache" / "trained"),
    }
    small = tree_bytes(run_dir) - tree_bytes(run_dir / "checkpoints") - tree_bytes(run_dir / "pipeline")
    sizes["metrics, samples, evaluation, logs"] = small
    export32 = float32_bytes(run_dir / "pipeline", skip=tuple(SINGLE_FILE.values()))
    sizes["export as before (float32, diffusers)"] = export32
    ckpt, export, entry = (sizes[name] for name in list(sizes)[:3])
    before = n * (2 * ckpt + export32 + entry + small)
    now = n * small + k * (export + entry)
    print(
        f"\ndbexp bench disk — one trial of {cfg.model.name} (init={cfg.model.init}, {cfg.data.resolution} px, "
        f"{cfg.finetune.method}), preset {preset}: {n} trials, keep={keep} ({k} kept)"
    )
    for name, size in sizes.items():
        print(f"  {name:<44} {format_bytes(size):>12}")
    print(f"before: {n} × (2 × step file + float32 export + cache entry + small files) = {format_bytes(before)}")
    print(
        f"now:    {n} × small files + {k} × (export + cache entry) = {format_bytes(now)} "
        f"(+ {format_bytes(ckpt)} per trial while it trains)"
    )
    print(f"now ÷ before: {now / before:.4f} (goal ≤ 0.1)")
    return {"sizes": sizes, "trials": n, "kept": k, "before_bytes": before, "now_bytes": now, "ratio": now / before}
