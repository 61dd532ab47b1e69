"""DreamBooth's effects, measured in the toy world: the default run (toy model, a toy subject, real
training, real losses) judged by the oracle. Margins were chosen from measurement (docs/toy-world.md, "The toy
world"); a loss with the prior term dropped fails (b), one that learns nothing fails (a) and (d).

(a) fine-tuning raises subject fidelity well above the base model's;
(b) without the prior loss the bare class prompt drifts toward the subject (PRES up), with it less;
(c) guidance scale moves prompt fidelity;
(d) a short sweep over lr × prior weight × guidance finds a trial clearly better than the worst:
    tests/test_toy_sweep.py (its own file, so it runs beside these on the other test worker).
"""

from __future__ import annotations

import pytest

from dbexp.train import run
from tests.conftest import compose_train

#: The default run as `make train` runs it, minus what only costs time here (no exported pipeline,
#: no intermediate grids), plus guidance 1 and 7.5 beside the default 3 for (c).
DEFAULT_RUN = [
    "export.enabled=false",
    "eval.every_n_steps=0",
    "callbacks.progress_bar=null",
    "eval.guidance_scales=[3.0,1.0,7.5]",
]


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("toy")
    return {
        name: run(compose_train(root, cache_dir, *DEFAULT_RUN, *extra, name=name))
        # (b) reads the second run's PRES at the default guidance only: no base model, no other scales
        for name, extra in {
            "prior": [],
            "no_prior": ["prior.weight=0", "eval.baseline=false", "eval.guidance_scales=[3.0]"],
        }.items()
    }


def test_a_fine_tuning_raises_subject_fidelity_well_above_the_base_model(toy_runs):
    metrics = toy_runs["prior"]
    assert metrics["base/subject_fidelity"] <= 0.05  # the base model never drew a checkered circle (measured 0)
    assert metrics["eval/subject_fidelity"] - metrics["base/subject_fidelity"] >= 0.3  # measured 0.48


def test_b_the_prior_loss_keeps_the_class_prompt_from_drifting_to_the_subject(toy_runs):
    with_prior, without = toy_runs["prior"]["eval/pres"], toy_runs["no_prior"]["eval/pres"]
    assert without >= 0.6  # "a photo of a circle" now draws the checkered one (measured 0.94)
    assert without - with_prior >= 0.5  # measured 0.94 vs 0.12


def test_c_guidance_scale_moves_prompt_fidelity(toy_runs):
    scales = toy_runs["prior"]["evaluation"]["guidance_scales"]
    fidelity = {scale: metrics["eval/prompt_fidelity"] for scale, metrics in scales.items()}
    assert fidelity["1"] < fidelity["3"] < fidelity["7.5"]  # measured 0.66 < 0.75 < 0.82
    assert fidelity["7.5"] - fidelity["1"] >= 0.1
