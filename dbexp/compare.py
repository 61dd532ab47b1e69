"""``python -m dbexp.compare <sweep folder | MLflow experiment name>``: one self-contained HTML report of runs.

The report (``report.html``, every picture embedded, the PNGs also beside it) holds: a table of runs
(parameters that vary, metrics, state, duration) with the best run — or the Pareto front of a
multi-objective sweep — highlighted; parallel coordinates of parameters → objective; the DINO vs
CLIP-T Pareto plot for multi-objective sweeps; metric-vs-step curves; and the final samples of the
same prompt and seed side by side across runs.

A sweep folder (``outputs/<task>/multiruns/<time>``) is read with its Optuna study and its trial folders;
an experiment name is read from MLflow (``--tracking-uri``, default the embedded store in ``outputs/``):
``dbexp.run_collection``.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dbexp import metric_suites  # noqa: E402
from dbexp.console import announce  # noqa: E402
from dbexp.errors import exit_on_user_error  # noqa: E402
from dbexp.run_collection import CURVES, Collection, RunRecord, from_mlflow, from_sweep_folder  # noqa: E402

# The metric columns and the Pareto plot's subject-vs-prompt fidelity axes come from the metric suites
# (dbexp.metric_suites.report_metrics, fidelity_axes).


# --- the best runs ----------------------------------------------------------------------------------
def best_runs(collection: Collection) -> set[str]:
    """The best run (one objective) or the Pareto front (several), among complete runs."""
    done = [r for r in collection.runs if r.state == "COMPLETE" and r.values]
    signs = [1 if d == "maximize" else -1 for d in collection.directions]
    if not done:
        return set()
    if len(signs) == 1:
        return {max(done, key=lambda r: signs[0] * r.values[0]).name}

    def dominates(a: RunRecord, b: RunRecord) -> bool:
        pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values, strict=True)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return {r.name for r in done if not any(dominates(o, r) for o in done if o is not r)}


# --- the pictures -----------------------------------------------------------------------------------
def plot_parallel_coordinates(collection: Collection, path: Path) -> Path | None:
    names = sorted({k for r in collection.runs for k, v in r.params.items() if isinstance(v, int | float)})
    runs = [r for r in collection.runs if r.values]
    if not names or not runs:
        return None
    axes = [*names, *collection.objectives]

    def column(name: str) -> list[float]:
        if name in collection.objectives:
            return [r.values[collection.objectives.index(name)] for r in runs]
        return [float(r.params.get(name, math.nan)) for r in runs]

    columns = {}
    for name in axes:
        values = column(name)
        finite = [v for v in values if math.isfinite(v)]
        log = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20
        scaled = [math.log10(v) if log and v > 0 else v for v in values]
        lo, hi = min(scaled), max(scaled)
        columns[name] = ([(v - lo) / (hi - lo) if hi > lo else 0.5 for v in scaled], values, log)
    colour = column(collection.objectives[0])
    lo, hi = min(colour), max(colour)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(axes)), 4.5))
    for i, run in enumerate(runs):
        ys = [columns[name][0][i] for name in axes]
        style = {"color": cmap((colour[i] - lo) / (hi - lo) if hi > lo else 0.5), "alpha": 0.85, "linewidth": 1.6}
        if run.state != "COMPLETE":
            style |= {"color": "0.6", "linestyle": "--", "linewidth": 1.0}
        ax.plot(range(len(axes)), ys, **style)
    for x, name in enumerate(axes):
        ax.axvline(x, color="0.3", linewidth=0.8)
        _, raw, log = columns[name]
        ax.text(x, -0.06, f"{min(raw):.3g}", ha="center", va="top", fontsize=8)
        ax.text(x, 1.04, f"{max(raw):.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(axes)), [f"{a}\n(log)" if columns[a][2] else a for a in axes], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.1)
    ax.set_title(f"parameters → {collection.objectives[0]} (colour; dashed: pruned / failed)", fontsize=10)
    return _save(fig, path)


def plot_pareto(collection: Collection, best: set[str], path: Path) -> Path | None:
    if len(collection.directions) < 2:
        return None
    axes = [
        a
        for a in metric_suites.fidelity_axes()
        if any(a[0] in r.metrics and a[1] in r.metrics for r in collection.runs)
    ]
    if not axes:
        return None
    x, y, x_label, y_label = axes[0]
    runs = [r for r in collection.runs if x in r.metrics and y in r.metrics]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    front = sorted((r for r in runs if r.name in best), key=lambda r: r.metrics[x])
    others = [r for r in runs if r.name not in best]
    ax.scatter([r.metrics[x] for r in others], [r.metrics[y] for r in others], c="0.6", label="trials")
    ax.plot([r.metrics[x] for r in front], [r.metrics[y] for r in front], "o-", c="tab:red", label="Pareto front")
    for r in front:
        ax.annotate(r.name, (r.metrics[x], r.metrics[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(collection: Collection, path: Path) -> Path | None:
    names = [n for n in CURVES if any(n in r.history and len(r.history[n]) > 1 for r in collection.runs)]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for run in collection.runs:
            if run.history.get(name):
                steps, values = zip(*sorted(run.history[name]), strict=True)
                line = ax.plot(steps, values, label=run.name, linestyle="-" if run.state == "COMPLETE" else "--")[0]
                if run.best_step in steps:  # the step whose weights are the run's
                    value = values[steps.index(run.best_step)]
                    ax.plot([run.best_step], [value], marker="*", markersize=11, color=line.get_color())
        ax.set_xlabel("step (★: a run's best step)")
        ax.set_ylabel(name)
        if name == "train/loss":
            ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the page -----------------------------------------------------------------------------------------
def write_report(collection: Collection, out: Path, max_runs: int = 12, max_samples: int = 8) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    best = best_runs(collection)
    ranked = rank(collection)
    figures = [
        ("Parameters → objective", plot_parallel_coordinates(collection, out / "parallel_coordinates.png")),
        ("Pareto front: subject vs prompt fidelity", plot_pareto(collection, best, out / "pareto.png")),
        ("Metrics over training steps", plot_curves(collection, out / "curves.png")),
    ]
    params = sorted({k for r in collection.runs for k in r.params})
    metrics = [
        m
        for m in dict.fromkeys([*collection.objectives, *metric_suites.report_metrics()])
        if any(m in r.metrics for r in collection.runs)
    ]
    rows = []
    for run in ranked:
        cells = [run.label, run.state, _duration(run.seconds)]
        cells += [_fmt(run.params.get(p)) for p in params] + [_fmt(run.metrics.get(m)) for m in metrics]
        css = "best" if run.name in best else run.state.lower()
        rows.append(f'<tr class="{css}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in ["run", "state", "duration", *params, *metrics])
    shown = [r for r in ranked if r.samples][:max_runs]
    keys = list(dict.fromkeys(k for r in shown for k in r.samples))[:max_samples]
    sample_rows = []
    for prompt, seed in keys:
        cells = "".join(
            f"<td>{_img(r.samples[(prompt, seed)], r.name) if (prompt, seed) in r.samples else ''}</td>" for r in shown
        )
        sample_rows.append(f"<tr><th>{html.escape(prompt)}<br><small>seed {seed}</small></th>{cells}</tr>")
    sample_header = "<th></th>" + "".join(f"<th>{html.escape(r.name)}</th>" for r in shown)
    if len(collection.directions) > 1:
        what = "Pareto front"
    else:
        what = "best run" + "".join(f": {r.label}" for r in ranked if r.name in best)
    objective = ", ".join(f"{m} ({d})" for m, d in zip(collection.objectives, collection.directions, strict=True))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dbexp compare — {html.escape(collection.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
th {{ background: #f3f3f3; }}
tr.best td {{ background: #d9f2d9; font-weight: 600; }}
tr.pruned td {{ color: #888; }} tr.fail td {{ color: #b33; }}
table.samples td, table.samples th {{ text-align: center; vertical-align: middle; }}
table.samples img {{ width: 128px; height: 128px; image-rendering: pixelated; }}
figure img {{ max-width: 100%; }}
</style></head><body data-runs="{len(ranked)}">
<h1>{html.escape(collection.title)}</h1>
<p>{len(ranked)} runs from <code>{html.escape(collection.source)}</code>; objective: {html.escape(objective)};
highlighted: the {what}. States: {html.escape(_states(ranked))}.</p>
<h2>Runs</h2>
<table class="runs"><thead><tr>{header}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
{"".join(f"<h2>{html.escape(t)}</h2><figure>{_img(p, t)}</figure>" for t, p in figures if p)}
<h2>Samples: the same prompt and seed across runs (best first)</h2>
<table class="samples"><thead><tr>{sample_header}</tr></thead><tbody>
{chr(10).join(sample_rows)}
</tbody></table>
<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = images.length;
}});
</script>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path


def rank(collection: Collection) -> list[RunRecord]:
    sign = 1 if collection.directions[0] == "maximize" else -1
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}
    return sorted(
        collection.runs,
        key=lambda r: (order.get(r.state, 4), -sign * r.values[0] if r.values else math.inf, r.name),
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _states(runs: list[RunRecord]) -> str:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.state] = counts.get(r.state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dbexp.compare", description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a sweep folder (outputs/<task>/multiruns/<time>) or an MLflow experiment name")
    ap.add_argument("--out", type=Path, help="report folder (default: <sweep folder>/report or outputs/compare/<name>)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or outputs/mlflow.db)")
    ap.add_argument("--max-runs", type=int, default=12, help="runs shown side by side in the samples table")
    args = ap.parse_args(argv)
    with exit_on_user_error():
        source = Path(args.source).expanduser()
        if source.is_dir():
            collection = from_sweep_folder(source)
            out = args.out or source / "report"
        else:
            from dbexp.sweep_tracking import default_mlflow_uri

            uri = args.tracking_uri or default_mlflow_uri("outputs")
            out = args.out or Path("outputs") / "compare" / args.source
            collection = from_mlflow(args.source, uri, out / "artifacts")
        path = write_report(collection, out, max_runs=args.max_runs)
    announce(f"report: {path} ({len(collection.runs)} runs; PNGs beside it)")


if __name__ == "__main__":
    sys.exit(main())
