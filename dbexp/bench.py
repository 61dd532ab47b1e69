"""``python -m dbexp.bench prior|cache|reuse|pruning|replay|signals|train|disk …``: speed, memory, signals, disk.

* ``prior``: the prior stage (class images for one key) of a second run ÷ the first, in a fresh
  cache: the first run generates every image, the second reuses them (goal ≤ 0.01).
* ``cache``: median training-step time with the latent and text-embedding caches ÷ without
  (goal ≤ 0.7), measured in full Lightning runs, alternating the two settings; plus the same
  ratio from counted FLOPs (``--flops-only``: just that, for any model, e.g. ``model=sd15``).
* ``pruning``: the toy sweep (``sweeps/toy_lr_prior_guidance.yaml``, ``--trials`` trials, TPE with a
  fixed seed) without a pruner and with the preset's: training steps spent and the best objective of
  each (goal: ≤ 0.5 of the steps at a best objective within 2 %), each best trial re-evaluated on fresh
  seeds with more pictures, and how the validation losses rank the unpruned sweep's trials.
* ``replay``: Optuna's pruners replayed on recorded unpruned sweeps (the files ``pruning --json`` writes;
  ``docs/data/`` keeps measured ones), in place of overrides: :mod:`dbexp.bench_replay`.
* ``signals``: one toy sweep without pruning that measures the fast evaluation subset and the validation
  loss every ``--every`` steps: how well each in-training signal, at each step, ranks the trials as their
  final values do (Spearman), and what one measurement costs — the choice of a pruning signal.
* ``reuse``: a sweep trial that differs from a finished one in guidance only (it reuses the trained
  weights and samples + evaluates) ÷ a trial that trains (goal ≤ 0.1). Both are whole runs after a
  warm-up run has filled the caches a sweep's later trials find (model, class images, metric models).

* ``train``: step time, peak memory and MFU per fine-tuning mode × memory preset, and dbexp's training
  step ÷ a bare PyTorch + diffusers loop run step by step in turn with it (goal ≤ 1.03): :mod:`dbexp.bench_train`.

* ``disk``: what a sweep preset (``--preset``, default ``lr_prior_guidance``) leaves on disk, before and now,
  from the files one real-architecture trial leaves (goal ≤ 0.1): :mod:`dbexp.bench_disk`.
Overrides are the training config's (default ``model=toy``), e.g. ``prior.num_class_images=200``.
"""

from __future__ import annotations

import argparse
import json
import signal as signals
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dbexp.config import check_moved_keys
from dbexp.console import announce, quiet_known_noise
from dbexp.errors import exit_on_user_error


def bench_prior(root: Path, overrides: list[str]) -> dict:
    from dbexp.bench_harness import compose_config, device_description
    from dbexp.datamodule import resolve_subject
    from dbexp.model_loading import load_model
    from dbexp.prior_cache import class_images, class_prompt

    cfg = compose_config(root, "prior", [f"paths.cache_dir={root / 'cache'}", *overrides])
    parts = load_model(cfg.model, cfg.paths.cache_dir)
    prompt = class_prompt(cfg.prior, resolve_subject(cfg.data).class_noun)
    rows = []
    for run_name in ("first", "second"):
        start = time.perf_counter()
        result = class_images(cfg.prior, parts, prompt, cfg.data.resolution, cfg.paths.cache_dir)
        rows.append((run_name, result.generated, result.reused, time.perf_counter() - start))
    ratio = rows[1][3] / rows[0][3]
    print(
        f"\ndbexp bench prior — model={cfg.model.name}, {cfg.prior.num_class_images} class images, "
        f"{cfg.prior.num_inference_steps} sampler steps, {cfg.data.resolution} px, {device_description()}"
    )
    print(f"{'run':<8} {'generated':>9} {'reused':>7} {'seconds':>9}")
    for name, generated, reused, seconds in rows:
        print(f"{name:<8} {generated:>9} {reused:>7} {seconds:>9.3f}")
    print(f"prior stage, second run ÷ first: {ratio:.4f}  (goal ≤ 0.01)")
    return {"first_s": rows[0][3], "second_s": rows[1][3], "ratio": ratio}


def bench_cache(root: Path, overrides: list[str], steps: int = 100, warmup: int = 10, rounds: int = 2) -> dict:
    from dbexp.bench_harness import QUIET, compose_config, device_description
    from dbexp.train import run

    settings = {
        "without caches": ["data.cache_latents=false", "data.cache_text_embeddings=false"],
        "with caches": ["data.cache_latents=true", "data.cache_text_embeddings=true"],
    }
    quiet = [*QUIET, f"trainer.max_steps={warmup + steps + 1}"]
    times: dict[str, list[float]] = {name: [] for name in settings}
    for round_ in range(rounds):
        for name, switches in settings.items():
            out = root / f"steps-{round_}-{name.replace(' ', '_')}.json"
            timer = f"+callbacks.timer={{_target_: dbexp.bench_harness.StepTimer, out: '{out}'}}"
            run(compose_config(root, f"{round_}-{name.replace(' ', '_')}", [*quiet, *switches, *overrides, timer]))
            times[name] += json.loads(out.read_text())["steps"][warmup:]
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["with caches"] / medians["without caches"]
    print(
        f"\ndbexp bench cache — {len(times['with caches'])} timed steps per setting ({rounds} alternating rounds "
        f"of {steps} after {warmup} warm-up), {device_description()}"
    )
    print(f"{'setting':<16} {'median ms/step':>15} {'p90 ms/step':>12}")
    for name, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:<16} {medians[name] * 1e3:>15.2f} {p90 * 1e3:>12.2f}")
    print(f"training step with caches ÷ without: {ratio:.3f}  (goal ≤ 0.7)")
    cfg = compose_config(root, "flops", overrides)
    counted = print_flops(cfg.model, cfg.data.resolution)
    return {
        "ms_without": medians["without caches"] * 1e3,
        "ms_with": medians["with caches"] * 1e3,
        "ratio": ratio,
        "counted_ratio": counted,
    }


def bench_reuse(root: Path, overrides: list[str]) -> dict:
    from dbexp.bench_harness import compose_config, device_description
    from dbexp.train import run

    cache = f"paths.cache_dir={root / 'cache'}"
    settings = {
        "warm-up (fills the caches)": ["seed=1"],
        "trains (new training config)": ["seed=2"],
        "guidance only (reuses weights)": ["seed=2", "eval.guidance_scale=3"],
    }
    rows = []
    for i, (label, extra) in enumerate(settings.items()):
        cfg = compose_config(root, f"trial_{i}", [cache, "reuse_trained=true", *overrides, *extra])
        start = time.perf_counter()
        metrics = run(cfg)
        evaluation = metrics.get("evaluation", {}).get("seconds", 0.0)
        rows.append((label, int(metrics["train/steps_run"]), time.perf_counter() - start, evaluation))
    ratio = rows[2][2] / rows[1][2]
    print(
        f"\ndbexp bench reuse — model={cfg.model.name}, {cfg.trainer.max_steps} steps, "
        f"evaluation {cfg.eval.metrics}: {device_description()}"
    )
    print(f"{'trial':<32} {'steps run':>9} {'seconds':>9} {'of which evaluation':>20}")
    for label, steps, seconds, evaluation in rows:
        print(f"{label:<32} {steps:>9} {seconds:>9.2f} {evaluation:>20.2f}")
    print(f"guidance-only trial ÷ training trial: {ratio:.3f} (goal ≤ 0.1)")
    beside = (rows[2][2] - rows[2][3]) / rows[1][2]
    print(f"guidance-only trial without its evaluation ÷ training trial: {beside:.3f}")
    return {"train_seconds": rows[1][2], "reuse_seconds": rows[2][2], "ratio": ratio, "ratio_beside_eval": beside}


NO_PRUNING = ["hydra/sweeper/pruner=none"]


def toy_sweep(root: Path, name: str, trials: int, overrides: list[str]) -> tuple[Path, str, float]:
    """The toy sweep preset into ``root/name`` (its folder, storage URL and wall seconds); its own pruner
    unless ``overrides`` choose another (``hydra/sweeper/pruner=none``)."""
    folder, storage = root / name, f"sqlite:///{root / name}.db"
    command = [
        sys.executable,
        "-m",
        "dbexp.train",
        "--multirun",
        "--config-name=toy_lr_prior_guidance",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.n_trials={trials}",
        f"paths.root_dir={folder}",
        f"paths.log_dir={folder}",
        f"paths.runs_dir={folder / 'runs'}",
        f"paths.cache_dir={root / 'cache'}",  # shared: class images made once
        "reuse_trained=false",  # the same proposals must train again, not reuse another sweep's weights
        "callbacks.progress_bar=null",
        *overrides,
    ]
    announce(f"sweep {name}: {trials} trials into {folder}")
    start = time.perf_counter()
    run_child(command)
    return folder, storage, time.perf_counter() - start


def run_child(command: list[str]) -> None:
    """Run ``command`` to its end; a bench that is stopped (Ctrl-C, ``kill``) stops it too."""
    child = subprocess.Popen(command)
    try:
        if child.wait():
            raise subprocess.CalledProcessError(child.returncode, command)
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _stop(signum, frame) -> None:
    """SIGTERM ends the bench as Ctrl-C does: its sweep stops and its temporary folder goes."""
    raise SystemExit(128 + signum)


def trial_metrics(folder: Path) -> list[dict]:
    """Each trial's metrics.json of a sweep folder, in trial order."""
    files = sorted(folder.glob("**/multiruns/*/*/metrics.json"), key=lambda m: int(m.parent.name))
    return [json.loads(m.read_text()) for m in files]


#: (in-training signal, the final value it should predict): the validation losses against what each stands
#: for, the fast evaluation subset against its own final value, and each against the sweep's objective.
SIGNAL_PAIRS = [
    ("val/loss_prior", "eval/pres"),
    ("val/loss_instance", "eval/subject_fidelity"),
    ("eval/subject_fidelity", "eval/subject_fidelity"),
    ("eval/prompt_fidelity", "eval/prompt_fidelity"),
    ("eval/pres", "eval/pres"),
    ("eval/score", "eval/score"),
    ("val/loss_prior", "eval/score"),
    ("val/loss_instance", "eval/score"),
    ("val/loss", "eval/score"),
]


def signal_table(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per ``SIGNAL_PAIRS`` row and evaluation step (step 0, the base model, aside): the Spearman rank
    correlation, over the runs (``metrics.json`` contents with ``in_training``), of the signal at that step
    with the run's final value; at least 3 runs measured, else no entry."""
    import warnings

    from scipy.stats import ConstantInputWarning, spearmanr

    steps = sorted({int(s) for m in runs for s in m.get("in_training", {})} - {0})
    table: dict[str, dict[str, float]] = {}
    for signal, final in SIGNAL_PAIRS:
        row = {}
        for step in steps:
            pairs = [
                (m["in_training"][str(step)][signal], m[final])
                for m in runs
                if signal in m.get("in_training", {}).get(str(step), {}) and final in m
            ]
            if len(pairs) >= 3:
                with warnings.catch_warnings():  # a signal every run shares ranks nothing: NaN
                    warnings.simplefilter("ignore", ConstantInputWarning)
                    row[str(step)] = float(spearmanr(*zip(*pairs, strict=True)).statistic)
        table[f"{signal} ~ final {final}"] = row
    return table


def bench_signals(root: Path, overrides: list[str], trials: int = 20, every: int = 50) -> dict:
    """One toy sweep without pruning, measuring the fast subset and the validation loss every ``every``
    steps: :func:`signal_table` of its trials, and what one measurement of each costs. A signal that ranks
    trials as their final values do can prune them early."""
    from dbexp.bench_harness import device_description

    during = [f"eval.metrics_every_n_steps={every}", f"eval.val_every_n_steps={every}"]
    folder, _, seconds = toy_sweep(root, "signals", trials, [*NO_PRUNING, *during, *overrides])
    runs = [m for m in trial_metrics(folder) if "in_training" in m]
    table = signal_table(runs)
    steps = sorted({int(s) for row in table.values() for s in row})
    costs = {
        name: statistics.mean(v[name] for m in runs for s, v in m["in_training"].items() if name in v and s != "0")
        for name in ("eval/seconds", "val/seconds")
    }
    heading = f"dbexp bench signals — toy sweep, {len(runs)} trials, no pruning, every {every} steps"
    print(f"\n{heading}: {device_description()}")
    print("Spearman rank correlation over trials (±1: ranks trials as the final value does; a loss predicts")
    print("a metric that is better higher with a negative sign)")
    width = max(len(k) for k in table)
    print(f"{'signal at step':<{width}} " + " ".join(f"{s:>6}" for s in steps))
    for name, row in table.items():
        print(f"{name:<{width}} " + " ".join(f"{row[str(s)]:>+6.2f}" if str(s) in row else f"{'—':>6}" for s in steps))
    print(
        f"cost of one measurement: fast evaluation subset {costs['eval/seconds']:.2f} s, validation loss "
        f"{costs['val/seconds']:.2f} s; sweep {seconds:.0f} s"
    )
    return {"spearman": table, "seconds_per_measurement": costs, "trials": len(runs), "sweep_seconds": seconds}


#: The re-evaluation of a sweep's best trial: fresh seeds and 4× (PRES 8×) the images of the preset's final
#: evaluation, whose eval/score varies by ~0.1–0.2 between two trials of the same setting (8 PRES images:
#: each one moves the score by 0.125) — more than the 2 % by which two sweeps' best trials are compared.
REEVALUATION = ["eval.metric_seed=1", "eval.images_per_prompt=16", "eval.pres_images=64"]


def reevaluate_best(root: Path, name: str, study, folder: Path, overrides: list[str]) -> float:
    """The eval/score of ``study``'s best trial, trained again to its best step (deterministic, and the toy
    preset's learning rate is constant: the same weights) and evaluated with :data:`REEVALUATION` — what the
    setting is worth, less the luck of its draw."""
    best = study.best_trial
    step = _best_step(folder, best.number)
    out = root / "reevaluation" / name
    command = [
        sys.executable,
        "-m",
        "dbexp.train",
        "--config-name=toy_lr_prior_guidance",
        *[f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in best.params.items()],
        f"trainer.max_steps={step}",
        "objective_at=last",
        "eval.metrics_every_n_steps=0",
        *REEVALUATION,
        f"paths.root_dir={out}",
        f"paths.log_dir={out}",
        f"paths.runs_dir={out / 'runs'}",
        f"paths.cache_dir={root / 'cache'}",
        "reuse_trained=false",
        "callbacks.progress_bar=null",
        *overrides,
        "pruning.metric=null",  # one run, no study: nothing reports to a pruner (nor measures eval/* in training)
    ]
    announce(f"re-evaluating {name}'s best trial {best.number} (to its best step {step}) into {out}")
    run_child(command)
    (metrics_file,) = (out / "runs").glob("*/metrics.json")
    return float(json.loads(metrics_file.read_text())["eval/score"])


def trial_records(study, folder: Path) -> list[dict]:
    """Per trial of a sweep: its parameters, state, objective, what it reported to the pruner, steps run, best
    step, the in-training signals (``eval/*``, ``val/*``) and the final metrics — what a replay of other pruners
    on a recorded sweep needs (``--json`` keeps them; ``docs/data/`` holds measured ones)."""
    records = []
    for trial in study.trials:
        files = list(folder.glob(f"**/multiruns/*/{trial.number}/metrics.json"))
        metrics = json.loads(files[0].read_text()) if files else {}
        records.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "params": trial.params,
                "value": trial.value,
                "intermediate": {str(k): v for k, v in trial.intermediate_values.items()},
                "steps_run": metrics.get("train/steps_run"),
                "best_step": metrics.get("best_step"),
                "final": {k: v for k, v in metrics.items() if k.startswith(("eval/", "val/")) and isinstance(v, float)},
                "in_training": {
                    step: {k: round(v, 6) for k, v in values.items() if not k.endswith("seconds")}
                    for step, values in metrics.get("in_training", {}).items()
                },
            }
        )
    return records


def _best_step(folder: Path, number: int) -> int:
    """The step whose weights trial ``number`` of a sweep folder kept (``metrics.json``'s ``best_step``)."""
    (metrics_file,) = folder.glob(f"**/multiruns/*/{number}/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    return int(metrics.get("best_step") or metrics["step"])


def bench_pruning(root: Path, overrides: list[str], trials: int = 20, pruned: list[str] | None = None) -> dict:
    """Two sweeps with the same sampler seed, one without a pruner and one with the preset's (``pruned``:
    overrides for that sweep only, e.g. the pruner's settings or ``pruning.metric``); and how well each
    validation loss of the unpruned sweep, at each step, ranks its trials as their objective does."""
    import optuna

    from dbexp.bench_harness import device_description

    results, ranks = {}, {}
    for name, extra in (("none", NO_PRUNING), ("pruned", pruned or [])):
        folder, storage, seconds = toy_sweep(root, name, trials, [*overrides, *extra])
        study = optuna.load_study(study_name="toy_lr_prior_guidance", storage=storage)
        runs = trial_metrics(folder)
        states = [t.state.name for t in study.trials]
        results[name] = {
            "steps": int(sum(m.get("train/steps_run", 0) for m in runs)),
            "best": study.best_value,
            "best_params": study.best_params,
            "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"),
            "seconds": seconds,
            "trials": trial_records(study, folder),
        }
        results[name]["best_reevaluated"] = reevaluate_best(root, name, study, folder, [*overrides, *extra])
        if name == "none":
            ranks = {
                k: v for k, v in signal_table(runs).items() if v and k.startswith("val/") and k.endswith("eval/score")
            }
    none, with_pruner = results["none"], results["pruned"]
    seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.sweeper.sampler.seed=")), "0")
    print(f"\ndbexp bench pruning — toy sweep, {trials} trials each, TPE seed {seed}: {device_description()}")
    if pruned:
        print(f"pruned sweep only: {' '.join(pruned)}")
    print(f"{'sweep':<8} {'steps':>7} {'best eval/score':>16} {'complete':>9} {'pruned':>7} {'seconds':>8}")
    for name, r in results.items():
        print(f"{name:<8} {r['steps']:>7} {r['best']:>16.4f} {r['complete']:>9} {r['pruned']:>7} {r['seconds']:>8.0f}")
    steps_ratio = with_pruner["steps"] / none["steps"]
    gap = (none["best"] - with_pruner["best"]) / abs(none["best"])
    print(f"steps with pruning ÷ without: {steps_ratio:.3f} (goal ≤ 0.5)")
    print(f"best objective with pruning vs without: {-gap:+.2%} (goal: within 2 %)")
    again = [results[n]["best_reevaluated"] for n in ("none", "pruned")]
    regap = (again[0] - again[1]) / abs(again[0])
    print(
        f"each best trial re-evaluated ({' '.join(REEVALUATION)}): without {again[0]:.4f}, "
        f"with pruning {again[1]:.4f} ({-regap:+.2%})"
    )
    if ranks:
        print("Spearman over the unpruned sweep's trials, signal at step ~ final eval/score:")
        for name, row in ranks.items():
            print(f"  {name.split(' ~ ')[0]:<18} " + " ".join(f"{s}: {v:+.2f}" for s, v in row.items()))
    return {
        **results,
        "steps_ratio": steps_ratio,
        "best_gap": gap,
        "reevaluated_gap": regap,
        "spearman_unpruned": ranks,
    }


def print_flops(model_cfg, resolution: int) -> float:
    from dbexp.bench_harness import counted_flops

    flops = counted_flops(model_cfg, resolution)
    uncached = flops["vae_encode"] + flops["text_encoder"] + 3 * flops["unet_forward"]  # UNet: forward + backward
    ratio = 3 * flops["unet_forward"] / uncached
    print(
        f"counted TFLOP per sample, model={model_cfg.name} at {resolution} px: VAE encode {flops['vae_encode']:.4f}, "
        f"text encoder {flops['text_encoder']:.4f}, UNet forward {flops['unet_forward']:.4f} (backward ≈ 2×)"
    )
    print(f"training-step compute with caches ÷ without (counted): {ratio:.3f}")
    return ratio


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dbexp.bench", description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["prior", "cache", "reuse", "pruning", "replay", "signals", "train", "disk"])
    ap.add_argument("overrides", nargs="*", help="training-config overrides, e.g. model=tiny prior.num_class_images=50")
    ap.add_argument("--steps", type=int, default=100, help="cache, train: timed steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="cache, train: untimed steps before them")
    ap.add_argument("--rounds", type=int, default=2, help="cache, train: alternating rounds of the settings")
    ap.add_argument("--presets", default="default,24gb,16gb,12gb", help="train: memory presets (comma-separated)")
    ap.add_argument("--finetune", default="full,lora", help="train: fine-tuning modes (comma-separated)")
    ap.add_argument("--no-bare", action="store_true", help="train: no bare-loop reference (peak memory only)")
    ap.add_argument("--peak-tflops", type=float, help="train: the GPU's dense bf16 peak for MFU (else from its name)")
    ap.add_argument("--trials", type=int, default=20, help="pruning, signals: trials per sweep")
    ap.add_argument("--pruned", action="append", help="pruning: an override for the pruned sweep only (repeatable)")
    ap.add_argument("--preset", default="lr_prior_guidance", help="disk: the sweep preset whose trials are counted")
    ap.add_argument("--every", type=int, default=50, help="signals: steps between in-training measurements")
    ap.add_argument("--json", type=Path, help="also write the numbers to this file")
    ap.add_argument("--flops-only", action="store_true", help="cache: only the counted FLOP ratio (any model, no run)")
    args = ap.parse_intermixed_args(argv)
    check_moved_keys(args.overrides)
    quiet_known_noise()
    signals.signal(signals.SIGTERM, _stop)
    with exit_on_user_error(), tempfile.TemporaryDirectory(prefix="dbexp-bench-") as tmp:
        root = Path(tmp)
        if args.what == "prior":
            numbers = bench_prior(root, args.overrides)
        elif args.what == "reuse":
            numbers = bench_reuse(root, args.overrides)
        elif args.what == "pruning":
            numbers = bench_pruning(root, args.overrides, args.trials, args.pruned)
        elif args.what == "replay":  # the arguments are recorded sweeps, not overrides
            from dbexp.bench_replay import bench_replay

            numbers = bench_replay([Path(a) for a in args.overrides])
        elif args.what == "signals":
            numbers = bench_signals(root, args.overrides, args.trials, args.every)
        elif args.what == "disk":
            from dbexp.bench_disk import bench_disk

            numbers = bench_disk(root, args.overrides, args.preset)
        elif args.what == "train":
            from dbexp.bench_train import bench_train

            numbers = bench_train(
                root,
                args.overrides,
                presets=args.presets.split(","),
                finetunes=args.finetune.split(","),
                steps=args.steps,
                warmup=args.warmup,
                rounds=args.rounds,
                peak_tflops=args.peak_tflops,
                bare=not args.no_bare,
            )
        elif args.flops_only:
            from dbexp.bench_harness import compose_config

            cfg = compose_config(root, "flops", args.overrides)
            numbers = {"counted_ratio": print_flops(cfg.model, cfg.data.resolution)}
        else:
            numbers = bench_cache(root, args.overrides, steps=args.steps, warmup=args.warmup, rounds=args.rounds)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
        announce(f"numbers written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
