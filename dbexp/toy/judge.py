"""Judgments of generated toy-world pictures by the oracle: exact, fast, and the same in every run.

- prompt fidelity: the share of the attributes a prompt names that the picture shows;
- subject fidelity: the share of pictures that show the subject (its shape, colour and pattern);
- PRES: the share of the bare class prompt's pictures that show the subject's pattern — the base
  model never draws patterns, so any is drift toward the subject;
- DIV: 1 − mean cosine similarity of the oracle's features between pictures of one prompt (as
  DreamBench's DIV with DINO features).

:class:`ToyJudge` is the ``toy`` metric suite (``eval.metrics=toy``, the toy model's own; declared in
``dbexp.metric_suites``, loaded by :func:`load_judge`): it scores like
:class:`dbexp.metric_models.MetricModels` and needs nothing but the shipped oracle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
from PIL import Image

from dbexp import asset
from dbexp.errors import UserInputError
from dbexp.metrics import diversity as feature_diversity
from dbexp.toy import oracle as oracle_lib
from dbexp.toy.world import parse_caption

ASSETS = asset("toy")
#: What makes a picture the subject: the attributes a subject keeps in every photo.
SUBJECT_ATTRIBUTES = ("shape", "color", "pattern")


def oracle_folder() -> Path:
    if not (ASSETS / oracle_lib.WEIGHTS).is_file():
        raise UserInputError(
            f"{ASSETS / oracle_lib.WEIGHTS} is missing: reinstall dbexp, or rebuild it with "
            f"python -m dbexp.toy.oracle --out {ASSETS}"
        )
    return ASSETS


@cache
def shipped_oracle() -> oracle_lib.ToyOracle:
    """The oracle shipped in the package (``dbexp/assets/toy/oracle.safetensors``), loaded once."""
    return oracle_lib.load(oracle_folder())


def read(images: Sequence[Image.Image]) -> list[dict[str, str]]:
    """What each picture shows."""
    return read_and_embed(images)[0]


def read_and_embed(images: Sequence[Image.Image]) -> tuple[list[dict[str, str]], torch.Tensor]:
    """What each picture shows and the oracle's features of it (one pass), in batches of 256."""
    readings, features = [], []
    for begin in range(0, len(images), 256):
        labels, hidden = shipped_oracle().read_and_embed(images[begin : begin + 256])
        readings += labels
        features.append(hidden)
    return readings, torch.cat(features)


def prompt_fidelity(readings: Sequence[dict[str, str]], prompts: Sequence[str]) -> float:
    """Mean over pictures of the share of their prompt's named attributes that they show (NaN when no
    prompt names any attribute of the toy world)."""
    shares = []
    for labels, prompt in zip(readings, prompts, strict=True):
        asked = parse_caption(prompt)
        if asked:
            shares.append(sum(labels[a] == v for a, v in asked.items()) / len(asked))
    return sum(shares) / len(shares) if shares else float("nan")


def attribute_accuracy(readings: Sequence[dict[str, str]], prompts: Sequence[str]) -> dict[str, float]:
    """Per attribute: the share of pictures whose prompt names it that show it."""
    hits: dict[str, list[bool]] = {}
    for labels, prompt in zip(readings, prompts, strict=True):
        for attribute, value in parse_caption(prompt).items():
            hits.setdefault(attribute, []).append(labels[attribute] == value)
    return {a: sum(h) / len(h) for a, h in sorted(hits.items())}


def is_subject(labels: dict[str, str], subject: dict[str, str]) -> bool:
    return all(labels[a] == subject[a] for a in SUBJECT_ATTRIBUTES)


def subject_fidelity(readings: Sequence[dict[str, str]], subject: dict[str, str]) -> float:
    return sum(is_subject(labels, subject) for labels in readings) / len(readings)


def pattern_drift(readings: Sequence[dict[str, str]], subject: dict[str, str]) -> float:
    """PRES: the share of class-prompt pictures that carry the subject's pattern."""
    return sum(labels["pattern"] == subject["pattern"] for labels in readings) / len(readings)


def identity(readings: Sequence[dict[str, str]]) -> dict[str, str]:
    """The subject as its photos show it: the most common reading of each subject attribute."""
    return {a: Counter(labels[a] for labels in readings).most_common(1)[0][0] for a in SUBJECT_ATTRIBUTES}


class ToyJudge:
    """The ``toy`` metric suite: what the oracle reads in the pictures, against the subject's photos."""

    description = {
        "suite": "toy",
        "oracle": str(ASSETS / oracle_lib.WEIGHTS),
        "summary": "toy oracle: subject = the photos' shape + colour + pattern; PRES = class pictures with its pattern",
    }

    def score(self, subject: list[Image.Image], class_images: list[Image.Image], real_images, prompts, k: int, n: int):
        """Subject fidelity, prompt fidelity, PRES and DIV of ``k`` prompts × ``n`` pictures (prompt-major)
        → (metrics, per-prompt rows, how consistently the photos themselves read as the subject)."""
        real = read(real_images)
        who = identity(real)
        readings, features = read_and_embed(subject)
        asked = [prompts.prompts[p] for p in range(k) for _ in range(n)]
        values = {
            "subject_fidelity": subject_fidelity(readings, who),
            "prompt_fidelity": prompt_fidelity(readings, asked),
            "pres": pattern_drift(read(class_images), who),
            "div": feature_diversity([features[p * n : (p + 1) * n] for p in range(k)]),
        }
        rows = []
        for p in range(k):
            part = slice(p * n, (p + 1) * n)
            rows.append(
                {
                    "prompt": prompts.prompts[p],
                    "subject_fidelity": subject_fidelity(readings[part], who),
                    "prompt_fidelity": prompt_fidelity(readings[part], asked[part]),
                    "div": feature_diversity([features[part]]),
                }
            )
        return values, rows, {"real/subject_fidelity": subject_fidelity(real, who)}


def load_judge(eval_cfg, cache_dir, device=None) -> ToyJudge:
    """The ``toy`` suite's models (``dbexp.metric_suites``): the shipped oracle, on the CPU."""
    return ToyJudge()


def judge_folders(eval_cfg, cache_dir) -> tuple[Path]:
    """Where the toy suite's weights lie (one line when the shipped oracle is missing)."""
    return (oracle_folder(),)
