"""The metric-suite registry: every suite's names, directions and default score, and its readers
(compare's directions and columns, the sweeper's direction check). Cheap: no model loads."""

import pytest
from omegaconf import OmegaConf

from dbexp import metric_suites
from dbexp.errors import UserInputError
from dbexp.metric_suites import MAXIMIZE, MINIMIZE, Metric, MetricSuite, direction
from hydra_plugins.dbexp_optuna_sweeper.sweeper import check_directions


@pytest.mark.parametrize("suite", metric_suites.suites(), ids=lambda s: s.name)
def test_every_suite_declares_a_direction_for_each_metric_and_scores_only_what_it_measures(suite):
    assert suite.label and suite.name in metric_suites.names()
    for metric in suite.metrics:
        assert metric.direction in (MAXIMIZE, MINIMIZE) and metric.label
        assert direction(f"eval/{metric.name}") == metric.direction
    assert set(suite.default_score) <= set(suite.metric_names)
    assert bool(suite.default_score) == bool(suite.metrics)  # a suite that measures has an eval/score
    if suite.fidelity:
        assert set(suite.fidelity) <= set(suite.metric_names)
    assert suite.evaluates == bool(suite.metrics)


def test_the_suites_and_their_defaults():
    assert metric_suites.names() == ("dreambench", "tiny", "toy", "none")
    assert dict(metric_suites.get("dreambench").default_score) == {"dino": 1.0, "clip_t": 1.0}
    assert dict(metric_suites.get("toy").default_score) == {"subject_fidelity": 1.0, "prompt_fidelity": 1.0}
    assert metric_suites.get("tiny").metric_names == ("dino", "clip_i", "clip_t", "pres", "div")
    assert metric_suites.get("none").metric_names == () and not metric_suites.get("none").evaluates
    with pytest.raises(UserInputError, match="unknown; use dreambench, tiny, toy, none"):
        metric_suites.get("dreambnech")
    with pytest.raises(ValueError, match="evaluates nothing"):
        metric_suites.get("none").load(None, ".")


def test_direction_answers_for_every_metric_a_run_logs():
    assert direction("eval/score") == MAXIMIZE
    assert direction("eval/pres") == MINIMIZE  # leakage of the subject into the bare class
    assert direction("train/loss") == MINIMIZE and direction("train/loss_prior") == MINIMIZE
    assert direction("eval/dino_cfg7.5") == MAXIMIZE and direction("eval/pres_cfg12") == MINIMIZE
    assert direction("base/clip_t") == MAXIMIZE and direction("eval/subject_fidelity") == MAXIMIZE
    assert direction("eval/div") == MAXIMIZE and direction("eval/clip_i") == MAXIMIZE
    for unknown in ("val/acc", "eval/accuracy", "train/lr", "eval/seconds", "score", "dino"):
        assert direction(unknown) is None, unknown


def test_a_metric_keeps_one_direction_across_suites(monkeypatch):
    monkeypatch.setattr(metric_suites, "_SUITES", dict(metric_suites._SUITES))
    with pytest.raises(ValueError, match="pres is minimize in another suite"):
        metric_suites.register(MetricSuite("bad", "bad", (Metric("pres", "PRES", MAXIMIZE),)))
    with pytest.raises(ValueError, match="does not measure"):
        metric_suites.register(MetricSuite("bad", "bad", (Metric("a", "A", MAXIMIZE),), default_score={"b": 1.0}))
    with pytest.raises(ValueError, match="already registered"):
        metric_suites.register(MetricSuite("toy", "again"))


def test_compare_takes_directions_columns_and_axes_from_the_registry(monkeypatch):
    from dbexp import run_collection

    assert run_collection.objective_directions(["eval/score", "eval/pres", "train/loss", "eval/dino"]) == [
        MAXIMIZE,
        MINIMIZE,
        MINIMIZE,
        MAXIMIZE,
    ]
    # A suite added to the registry reaches the report without touching the report's code.
    monkeypatch.setattr(metric_suites, "_SUITES", dict(metric_suites._SUITES))
    metric_suites.register(
        MetricSuite(
            "probe",
            "probe",
            (Metric("likeness", "likeness", MAXIMIZE), Metric("obedience", "obedience", MAXIMIZE)),
            default_score={"likeness": 1.0},
            fidelity=("likeness", "obedience"),
        )
    )
    metric_suites.register(MetricSuite("leaky", "leaky", (Metric("leak", "leak", MINIMIZE),), {"leak": -1.0}))
    assert run_collection.objective_directions(["eval/leak", "eval/likeness_cfg3"]) == [MINIMIZE, MAXIMIZE]
    assert {"eval/likeness", "eval/leak"} <= set(metric_suites.report_metrics())
    assert ("eval/likeness", "eval/obedience", "likeness (subject fidelity)", "obedience (prompt fidelity)") in (
        metric_suites.fidelity_axes()
    )
    assert metric_suites.fidelity_axes()[0] == (
        "eval/dino",
        "eval/clip_t",
        "DINO (subject fidelity)",
        "CLIP-T (prompt fidelity)",
    )


def test_the_sweeper_stops_a_direction_that_contradicts_the_objective():
    with pytest.raises(UserInputError) as err:
        check_directions("eval/score", ["minimize"])
    assert str(err.value) == (
        "hydra.sweeper.direction=minimize contradicts optimized_metric=eval/score (eval/score: higher is better): "
        "set hydra.sweeper.direction=maximize"
    )
    with pytest.raises(UserInputError, match=r"eval/pres: lower is better.*direction=\[maximize,minimize\]$"):
        check_directions(OmegaConf.create({"m": ["eval/dino", "eval/pres"]}).m, ["maximize", "maximize"])
    with pytest.raises(UserInputError, match=r"direction=maximize$"):
        check_directions("base/dino_cfg7.5", ["minimize"])
    with pytest.raises(UserInputError, match=r"direction=minimize$"):
        check_directions("train/loss", ["maximize"])


def test_the_sweeper_leaves_what_the_registry_does_not_know():
    check_directions("eval/score", ["maximize"])
    check_directions("train/loss", ["minimize"])  # train.yaml's default with the sweeper's default
    check_directions(["eval/dino", "eval/clip_t"], ("maximize", "maximize"))
    check_directions("val_accuracy", ["maximize"])  # another app's metric, either way
    check_directions("val_accuracy", ["minimize"])
    check_directions(["val_accuracy", "eval/pres"], ["maximize", "minimize"])
    check_directions(None, ["maximize"])  # an app without optimized_metric
    check_directions(["eval/score", "eval/pres"], ["minimize"])  # a count mismatch is the trials' to report
