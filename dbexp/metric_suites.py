"""The metric suites (``eval.metrics``), declared once: what each measures, which way is better, how it
scores by default, how its models load — and :func:`direction` for any metric a run logs.

Every reader asks here: ``dbexp.eval_protocol`` (names, the default ``eval/score``, the checks),
``dbexp.metric_models`` (loading), ``dbexp.compare`` (columns, the Pareto plot's axes, directions of
MLflow runs) and the sweeper (a ``hydra.sweeper.direction`` that contradicts the objective stops the sweep).

A suite's models object (what :meth:`MetricSuite.load` returns) has a ``description`` dict (``"suite"``,
``"summary"``, …, written to ``metrics.json``) and ``score(subject, class_images, real_images, prompts, k, n)
-> (values, per-prompt rows, real-photo reference)``, ``values`` keyed by the suite's metric names
(:class:`dbexp.metric_models.MetricModels`, :class:`dbexp.toy.judge.ToyJudge`).

Adding a suite: its loader (and scorer) in its own module, plus one ``register(MetricSuite(...))`` here.
Loaders are named by ``"module:function"`` so this module stays cheap to import (no torch, no transformers).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from dbexp.errors import UserInputError

Direction = Literal["maximize", "minimize"]
MAXIMIZE: Direction = "maximize"
MINIMIZE: Direction = "minimize"


@dataclass(frozen=True)
class Metric:
    """One measure a suite logs as ``eval/<name>``."""

    name: str
    label: str  # for people: axis labels, tables
    direction: Direction


class SuiteModels(Protocol):
    """What :meth:`MetricSuite.load` returns."""

    description: dict[str, Any]

    def score(self, subject, class_images, real_images, prompts, k: int, n: int) -> tuple[dict, list, dict]: ...


@dataclass(frozen=True)
class MetricSuite:
    name: str  # the ``eval.metrics`` value
    label: str  # for people
    metrics: tuple[Metric, ...] = ()
    default_score: Mapping[str, float] = field(default_factory=dict)  # ``eval/score`` when ``eval.score`` is null
    fidelity: tuple[str, str] | None = None  # (subject fidelity, prompt fidelity) metric names: the Pareto plot
    loader: str | None = None  # "module:function(eval_cfg, cache_dir, device) -> SuiteModels"
    folders: str | None = None  # "module:function(eval_cfg, cache_dir) -> (Path, ...)": weights there, cheaply

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    @property
    def evaluates(self) -> bool:
        return self.loader is not None

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def load(self, eval_cfg, cache_dir: str | Path, device: Any = "cpu") -> SuiteModels:
        """The suite's models (each loader keeps them once per process)."""
        if self.loader is None:
            raise ValueError(f"the {self.name} metric suite evaluates nothing: it has no models")
        return _resolve(self.loader)(eval_cfg, cache_dir, device)

    def model_folders(self, eval_cfg, cache_dir: str | Path) -> tuple[Path, ...]:
        """Local folders of the suite's weights — cheap: runs call it before the expensive work."""
        return tuple(_resolve(self.folders)(eval_cfg, cache_dir)) if self.folders else ()

    def fidelity_axes(self) -> tuple[str, str, str, str] | None:
        """(x, y, x label, y label) of the subject-vs-prompt fidelity plot, with ``eval/`` names."""
        if self.fidelity is None:
            return None
        labels = []
        for name, role in zip(self.fidelity, ("subject fidelity", "prompt fidelity"), strict=True):
            label = self.metric(name).label
            labels.append(f"{role} ({self.label})" if label == role else f"{label} ({role})")
        return (f"eval/{self.fidelity[0]}", f"eval/{self.fidelity[1]}", *labels)


#: ``eval/score``: the weighted sum of a suite's metrics (``eval.score``) — higher is better by definition.
SCORE = Metric("score", "score", MAXIMIZE)
#: What training logs (``DreamBoothModule.metric_names``); ``train/lr*`` has no better way, so no direction.
TRAINING = {
    "train/loss": Metric("train/loss", "training loss", MINIMIZE),
    "train/loss_instance": Metric("train/loss_instance", "instance loss", MINIMIZE),
    "train/loss_prior": Metric("train/loss_prior", "prior-preservation loss", MINIMIZE),
}
#: What the validation loss logs (``dbexp.validation``): the diffusion loss on fixed inputs.
VALIDATION = {
    "val/loss_instance": Metric("val/loss_instance", "validation loss, subject photos", MINIMIZE),
    "val/loss_prior": Metric("val/loss_prior", "validation loss, base model's class images", MINIMIZE),
    "val/loss": Metric("val/loss", "validation loss, subject photos + class images", MINIMIZE),
}
#: Prefixes under which a suite's metrics are logged: the run's (``eval/``), the base model's (``base/``),
#: the subject photos' own reference (``real/``).
PREFIXES = ("eval/", "base/", "real/")

_SUITES: dict[str, MetricSuite] = {}


def register(suite: MetricSuite) -> MetricSuite:
    """Add a suite; a metric name already declared by another suite must keep its direction."""
    if suite.name in _SUITES or suite.name == "auto":
        raise ValueError(f"metric suite {suite.name!r} is already registered (or reserved)")
    known = _metric_directions()
    for metric in suite.metrics:
        if metric.name == SCORE.name:
            raise ValueError(f"metric suite {suite.name}: 'score' is eval/score, not a suite's metric")
        if known.get(metric.name, metric.direction) != metric.direction:
            raise ValueError(f"metric suite {suite.name}: {metric.name} is {known[metric.name]} in another suite")
    if unknown := set(suite.default_score) - set(suite.metric_names):
        raise ValueError(
            f"metric suite {suite.name}: its default_score weighs {sorted(unknown)}, which it does not measure"
        )
    if suite.fidelity and not set(suite.fidelity) <= set(suite.metric_names):
        raise ValueError(f"metric suite {suite.name}: fidelity {suite.fidelity} names metrics it does not measure")
    _SUITES[suite.name] = suite
    return suite


def names() -> tuple[str, ...]:
    """The ``eval.metrics`` values (``auto`` aside), in registration order."""
    return tuple(_SUITES)


def get(name: str) -> MetricSuite:
    try:
        return _SUITES[name]
    except KeyError:
        raise UserInputError(
            f"metric suite {name!r} (eval.metrics, model.eval_metrics): unknown; use {', '.join(_SUITES)}"
        ) from None


def suites() -> tuple[MetricSuite, ...]:
    return tuple(_SUITES.values())


_SCALE = re.compile(r"_cfg[0-9.eE+-]+$")  # eval/<name>_cfg<scale>: one guidance scale of the final evaluation


def direction(metric_name: str) -> Direction | None:
    """Which way ``metric_name`` is better (``eval/<name>``, ``eval/<name>_cfg<scale>``, ``base/…``, ``real/…``,
    ``eval/score``, ``train/loss``, …), or None for a name no suite declares (another app's metric)."""
    name = _SCALE.sub("", str(metric_name))
    if name in TRAINING or name in VALIDATION:
        return (TRAINING | VALIDATION)[name].direction
    prefix = next((p for p in PREFIXES if name.startswith(p)), None)
    if prefix is None:
        return None
    short = name.removeprefix(prefix)
    if short == SCORE.name and prefix != "real/":
        return SCORE.direction
    return _metric_directions().get(short)


def report_metrics() -> tuple[str, ...]:
    """The columns of a comparison: ``eval/score``, every suite's own ``eval/<name>``, then those several suites
    measure (PRES, DIV), ``train/loss``."""
    measures = list(dict.fromkeys(s.metric_names for s in _SUITES.values() if s.metrics))  # tiny = dreambench's
    names = list(dict.fromkeys(n for metrics in measures for n in metrics))
    shared = [n for n in names if sum(n in metrics for metrics in measures) > 1]
    return (
        "eval/score",
        *(f"eval/{n}" for n in names if n not in shared),
        *(f"eval/{n}" for n in shared),
        "train/loss",
    )


def fidelity_axes() -> tuple[tuple[str, str, str, str], ...]:
    """Every suite's subject-vs-prompt fidelity axes (suites that measure the same share one entry)."""
    axes = (s.fidelity_axes() for s in _SUITES.values())
    return tuple(dict.fromkeys(a for a in axes if a is not None))


def _metric_directions() -> dict[str, Direction]:
    return {m.name: m.direction for s in _SUITES.values() for m in s.metrics}


def _resolve(reference: str):
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


# --- the suites -------------------------------------------------------------------------------------
#: The DreamBooth paper's protocol (``MetricModels.score``): DINO ViT-S/16 and CLIP embeddings.
DREAMBENCH = (
    Metric("dino", "DINO", MAXIMIZE),  # subject fidelity: DINO similarity to the subject's photos
    Metric("clip_i", "CLIP-I", MAXIMIZE),  # subject fidelity: CLIP image similarity to the photos
    Metric("clip_t", "CLIP-T", MAXIMIZE),  # prompt fidelity: CLIP image-text similarity
    Metric("pres", "PRES", MINIMIZE),  # the bare class prompt's images drifting toward the subject
    Metric("div", "DIV", MAXIMIZE),  # diversity between images of one prompt
)

_dreambench = register(
    MetricSuite(
        name="dreambench",
        label="DreamBench: DINO + CLIP",
        metrics=DREAMBENCH,
        default_score={"dino": 1.0, "clip_t": 1.0},
        fidelity=("dino", "clip_t"),
        loader="dbexp.metric_models:load_dreambench",
        folders="dbexp.metric_models:dreambench_folders",
    )
)
# The same protocol on small random embedders, for tests and offline runs.
register(
    replace(
        _dreambench,
        name="tiny",
        label="tiny random DINO + CLIP, for tests",
        loader="dbexp.metric_models:load_tiny",
        folders="dbexp.metric_models:tiny_folders",
    )
)
register(
    MetricSuite(
        name="toy",
        label="toy oracle",
        metrics=(
            Metric("subject_fidelity", "subject fidelity", MAXIMIZE),  # pictures that show the subject
            Metric("prompt_fidelity", "prompt fidelity", MAXIMIZE),  # asked attributes that are there
            Metric("pres", "PRES", MINIMIZE),  # class pictures with the subject's pattern
            Metric("div", "DIV", MAXIMIZE),  # 1 - the oracle features' similarity within a prompt
        ),
        default_score={"subject_fidelity": 1.0, "prompt_fidelity": 1.0},
        fidelity=("subject_fidelity", "prompt_fidelity"),
        loader="dbexp.toy.judge:load_judge",
        folders="dbexp.toy.judge:judge_folders",
    )
)
register(MetricSuite(name="none", label="no evaluation"))
