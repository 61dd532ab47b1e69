"""The Optuna sweeper plugin: grammar, a sweep with storage, resume, failures, multi-objective."""

import json
import re

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution

from dbexp import SWEEPS_DIR
from hydra_plugins.dbexp_optuna_sweeper.sweeper import distribution, grid_values, params_from_overrides
from tests.conftest import run_cli

FAST = [
    "debug=fast",
    "callbacks.progress_bar=null",
    "eval.metrics=none",
    "export.enabled=false",
    "hydra/sweeper=dbexp_optuna",
    "hydra.sweeper.n_jobs=1",
    "hydra.sweeper.heartbeat_interval=1",  # a worker with nothing left to ask waits for others' trials briefly
]


def _dist(line):
    return distribution(OverridesParser.create().parse_overrides([line])[0])


def test_hydra_optuna_sweeper_grammar():
    """Beyond that plugin's own cases (tests/hydra_optuna_sweeper/): range keeps its stop outside a grid
    (the docs' space reaches 5.5) and a grid walks Hydra's values; a mixed choice stays as written."""
    assert _dist("a=tag(log, interval(1e-7, 1e-5))") == FloatDistribution(1e-7, 1e-5, log=True)
    assert _dist("a=range(0, 2, step=0.5)") == FloatDistribution(0.0, 2.0, step=0.5)
    assert _dist("a=range(-5.5, 5.5, step=0.5)").high == 5.5
    shuffled = _dist("a=shuffle(range(1, 4))")
    assert isinstance(shuffled, CategoricalDistribution) and set(shuffled.choices) == {1, 2, 3}
    assert _dist("a=choice(3, 7.5, 10)") == CategoricalDistribution([3, 7.5, 10])
    assert _dist("a=5") is None
    assert grid_values(_dist("a=range(0, 2, step=0.5)")) == [0.0, 0.5, 1.0, 1.5]
    # A key given twice (params, then the command line): the later form wins, a sweep or a fixed value.
    assert params_from_overrides(["a=5", "a=choice(1, 2)"]) == ({"a": CategoricalDistribution([1, 2])}, {})
    assert params_from_overrides(["a=choice(1, 2)", "a=5", "~b"]) == ({}, {"a": "5", "~b": "null"})


def _study(tmp_path, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.slow
def test_running_the_same_sweep_again_continues_the_study(tmp_path, cache_dir):
    args = [
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=resume",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",
        "optimizer.lr=tag(log, interval(1e-6, 1e-3))",
    ]
    first = run_cli("dbexp.train", "--multirun", *args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(_study(tmp_path, "resume").trials) == 2
    again = run_cli("dbexp.train", "--multirun", *args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _study(tmp_path, "resume").trials
    assert len(trials) == 3  # one more, not three: finished trials are not rerun
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    results = OmegaConf.load(
        sorted((tmp_path / "outputs" / "debug" / "multiruns").glob("*/optimization_results.yaml"))[-1]
    )
    assert results.trials.COMPLETE == 3 and "optimizer.lr" in results.best_params
    assert results.name == "optuna"  # hydra-optuna-sweeper's keys (best_params, best_value; solutions)
    # n_trials_in_total=false (each command adds n_trials): tests/test_sweeper_compat.py


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, cache_dir):
    args = [
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=fails",
        "hydra.sweeper.n_trials=2",
        "optimizer.lr=choice(-1.0)",
    ]
    tolerant = run_cli("dbexp.train", "--multirun", *args, "hydra.sweeper.max_failure_rate=1.0", cwd=tmp_path)
    assert tolerant.returncode == 0, tolerant.stderr[-3000:]
    trials = _study(tmp_path, "fails").trials
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    assert "optimizer.lr=-1.0: the learning rate must be > 0" in trials[0].user_attrs["fail_reason"]
    strict = run_cli(
        "dbexp.train",
        "--multirun",
        *args[:-2],
        "hydra.sweeper.study_name=strict",
        "hydra.sweeper.n_trials=2",
        "optimizer.lr=choice(-1.0)",
        cwd=tmp_path,
    )
    assert strict.returncode != 0 and "more than max_failure_rate=0.0" in strict.stderr


@pytest.mark.slow
def test_multi_objective_sweep_writes_a_pareto_front(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train",
        "--multirun",
        *FAST,
        f"paths.cache_dir={cache_dir}",
        "eval.metrics=tiny",
        "eval.final=true",
        "optimized_metric=[eval/dino,eval/clip_t]",
        "hydra.sweeper.direction=[maximize,maximize]",
        "hydra/sweeper/sampler=nsgaii",
        "hydra.sweeper.n_trials=2",
        "prior.weight=interval(0, 2)",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = next((tmp_path / "outputs" / "debug" / "multiruns").glob("*/optimization_results.yaml"))
    results = OmegaConf.load(path)
    assert results.directions == ["maximize", "maximize"] and len(results.solutions) >= 1
    assert all(len(p["values"]) == 2 for p in results.solutions)
    assert re.search(r"sweep results: ", result.stderr + result.stdout)

    # The comparison report of this (in-memory) study, from its folder: the Pareto plot and front.
    from dbexp.compare import main
    from dbexp.run_collection import from_sweep_folder

    collection = from_sweep_folder(path.parent)
    assert [r.state for r in collection.runs] == ["COMPLETE", "COMPLETE"] and all(r.values for r in collection.runs)
    main([str(path.parent)])
    report = (path.parent / "report" / "report.html").read_text()
    assert (path.parent / "report" / "pareto.png").is_file() and "Pareto front: subject vs prompt fidelity" in report
    assert report.count('<tr class="best">') == len(results.solutions)


# A config written for hydra-optuna-sweeper (its own tests, lightning-hydra-template's search space):
# tests/hydra_optuna_sweeper/ and tests/test_sweeper_compat.py.


@pytest.mark.slow
def test_the_quick_cpu_preset_runs_with_lora_unchanged(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train",
        "--multirun",
        "--config-name",
        "quick_cpu",  # the shipped presets are on the search path (hydra_plugins/dbexp_sweeps)
        "finetune.method=lora",  # a LoRA sweep is the same sweep with one more override
        "hydra.sweeper.n_trials=2",
        "trainer.max_steps=4",
        "callbacks.progress_bar=null",
        f"paths.cache_dir={cache_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "outputs" / "sweep_quick_cpu.db").is_file()
    sweep = next((tmp_path / "outputs" / "sweep_quick_cpu").glob("multiruns/*/optimization_results.yaml")).parent
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.trials.COMPLETE == 2 and results.directions == ["maximize"]
    assert all((sweep / trial / "pipeline" / "pytorch_lora_weights.safetensors").is_file() for trial in ("0", "1"))


@pytest.mark.slow
def test_an_absurd_learning_rate_fails_its_trial_while_the_sweep_completes(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train",
        "--multirun",
        *FAST,
        f"paths.cache_dir={cache_dir}",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=absurd",
        "hydra.sweeper.max_failure_rate=1.0",
        "hydra/sweeper/sampler=grid",
        "optimizer=sgd",
        "trainer.gradient_clip_val=null",
        "trainer.max_steps=20",
        "optimizer.lr=choice(1e12, 1e-4)",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = {t.params["optimizer.lr"]: t for t in _study(tmp_path, "absurd").trials}
    assert trials[1e-4].state == optuna.trial.TrialState.COMPLETE
    assert trials[1e12].state == optuna.trial.TrialState.FAIL
    assert trials[1e12].user_attrs["fail_reason"].startswith("FloatingPointError: training loss is nan at step")


def _trial_dirs(tmp_path):
    return {int(p.name): p for p in (tmp_path / "outputs" / "debug" / "multiruns").glob("*/[0-9]*")}


@pytest.mark.slow
def test_a_trial_below_the_median_is_pruned_in_another_process(tmp_path, cache_dir):
    """The second sweep runs its trials through Hydra's joblib launcher (worker processes): they reach the
    trial through the storage, are pruned at their first report, and leave their partial runs."""
    args = [
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=prune",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "optimized_metric=train/loss",  # reported to the pruner each time it is logged:
        "trainer.log_every_n_steps=2",  # every 2 steps
        "eval.metrics=tiny",
        "eval.final=false",
        "eval.metrics_every_n_steps=2",
        "eval.subset_prompts=1",
        "trainer.max_steps=8",
    ]
    good = run_cli("dbexp.train", "--multirun", *args, "hydra.sweeper.n_trials=1", "optimizer.lr=1e-6", cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]
    bad = run_cli(
        "dbexp.train",
        "--multirun",
        *args[:-1],
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optimizer.lr=1.0",  # finite but absurd: the loss at step 2 is far above the first trial's
        cwd=tmp_path,
    )
    assert bad.returncode == 0, bad.stderr[-3000:]
    trials = _study(tmp_path, "prune").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.PRUNED] * 2
    assert sorted(trials[0].intermediate_values) == [2, 4, 6, 8]
    assert all(list(t.intermediate_values) == [2] for t in trials[1:])
    for number in (1, 2):
        partial = _trial_dirs(tmp_path)[number]
        metrics = json.loads((partial / "metrics.json").read_text())
        assert metrics["pruned_at_step"] == 2 and metrics["train/steps_run"] == 2  # stopped at once
        assert (partial / "csv" / "metrics.csv").is_file() and (partial / "debug.log").is_file()
    results = OmegaConf.load(next((tmp_path / "outputs").glob("*/multiruns/*/optimization_results.yaml")))
    assert results.best_trial == 0


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_retries_the_trial_it_left_running(tmp_path, cache_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "hydra.sweeper.study_name=killed",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",
        "trainer.max_steps=60",
        "optimizer.lr=tag(log, interval(1e-6, 1e-4))",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "dbexp.train", "--multirun", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        try:
            states = [t.state for t in _study(tmp_path, "killed").trials]
        except KeyError:
            states = []
        if states[1:2] == [optuna.trial.TrialState.RUNNING]:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # well inside trial 1's training (60 steps)
    first.send_signal(signal.SIGKILL)
    first.wait()
    left = _study(tmp_path, "killed").trials
    assert [t.state for t in left] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]

    again = run_cli("dbexp.train", "--multirun", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _study(tmp_path, "killed").trials
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3  # n_trials exactly
    assert trials[0].datetime_complete == left[0].datetime_complete  # the finished trial was not rerun
    assert trials[1].state == optuna.trial.TrialState.FAIL and trials[1].user_attrs["abandoned"]
    assert "no heartbeat" in trials[1].user_attrs["fail_reason"]
    assert len(trials) == 4


@pytest.mark.slow
def test_guidance_only_trials_reuse_the_trained_weights(tmp_path, cache_dir):
    result = run_cli(
        "dbexp.train",
        "--multirun",
        *FAST,
        f"paths.cache_dir={cache_dir}",
        "eval.metrics=tiny",
        "seed=21",
        "optimized_metric=eval/score",
        "hydra.sweeper.direction=maximize",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=3",
        "eval.guidance_scale=choice(2, 5, 9)",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {n: json.loads((d / "metrics.json").read_text()) for n, d in _trial_dirs(tmp_path).items()}
    assert sorted(r["train/steps_run"] for r in runs.values()) == [0, 0, 4]  # one trains, two only sample
    reused = [r for r in runs.values() if r["train/steps_run"] == 0]
    assert all(r["reused_weights"] for r in reused)
    scales = sorted(float(next(iter(r["evaluation"]["guidance_scales"]))) for r in runs.values())
    assert scales == [2.0, 5.0, 9.0]  # each trial evaluated at its own guidance


PRESETS = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_its_search_space_parses(preset):
    from hydra import compose, initialize_config_dir

    from hydra_plugins.dbexp_optuna_sweeper.sweeper import DbexpOptunaSweeper, check_directions
    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(SWEEPS_DIR), version_base="1.3"):
        cfg = compose(preset, overrides=[f"hydra.searchpath=[file://{CONF}]"], return_hydra_config=True)
        with_slurm = compose(
            preset,
            overrides=[f"hydra.searchpath=[file://{CONF}]", "hydra/launcher=slurm_one_gpu"],
            return_hydra_config=True,
        )
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("DbexpOptunaSweeper") and sweeper.storage.startswith("sqlite:///outputs/")
    fixed, space = DbexpOptunaSweeper(**{k: v for k, v in sweeper.items() if not k.startswith("_")}).search_space([])
    assert space and not fixed
    directions = sweeper.direction if isinstance(sweeper.direction, str) else list(sweeper.direction)
    assert (len(cfg.optimized_metric) if not isinstance(cfg.optimized_metric, str) else 1) == (
        1 if isinstance(directions, str) else len(directions)
    )
    check_directions(cfg.optimized_metric, [directions] if isinstance(directions, str) else directions)
    assert with_slurm.hydra.launcher.gpus_per_node == 1
    assert with_slurm.hydra.launcher._target_.endswith("SlurmLauncher")


PRUNER_OPTIONS = ["none", "median", "successive_halving", "hyperband", "halving_from_50", "median_after_3"]


@pytest.mark.parametrize("name", PRUNER_OPTIONS)
def test_every_pruner_option_builds_an_optuna_pruner(name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hydra/sweeper=dbexp_optuna", f"hydra/sweeper/pruner={name}"], return_hydra_config=True
        )
    assert isinstance(instantiate(cfg.hydra.sweeper.pruner), optuna.pruners.BasePruner)


def test_a_search_space_with_a_moved_key_names_the_new_one():
    from dbexp.errors import UserInputError
    from hydra_plugins.dbexp_optuna_sweeper.sweeper import DbexpOptunaSweeper

    sweeper = DbexpOptunaSweeper(None, "maximize", None, "s", 1, 1, 0.0, params={"model.lora.rank": "choice(4, 8)"})
    with pytest.raises(
        UserInputError, match=r"hydra.sweeper.params: model.lora.rank: this key is now finetune.lora.rank"
    ):
        sweeper.check_moved_keys()
    DbexpOptunaSweeper(
        None, "maximize", None, "s", 1, 1, 0.0, params={"finetune.lora.rank": "choice(4, 8)"}
    ).check_moved_keys()


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "nsgaii", "motpe", "qmc", "gp"])
def test_a_default_sampler_config_passes_nothing_optuna_deprecated(name):
    """Deprecation warnings as errors: building each sampler from its default config passes nothing Optuna
    deprecated (QMC's own ExperimentalWarning is Optuna's word on that sampler, not on our arguments)."""
    import warnings

    from hydra_plugins.dbexp_optuna_sweeper import config
    from hydra_plugins.dbexp_optuna_sweeper.sweeper import DbexpOptunaSweeper

    node = OmegaConf.structured(config.SAMPLERS[name])
    if name == "cmaes":
        pytest.importorskip("cmaes")
    sweeper = DbexpOptunaSweeper(node, "minimize", None, "s", 1, 1, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        sweeper.make_sampler({"x": FloatDistribution(0, 1)})


def test_search_space_runs_with_one_deprecation_warning_and_yields_to_params():
    import warnings

    from hydra_plugins.dbexp_optuna_sweeper.sweeper import DbexpOptunaSweeper

    typed = {"x": {"type": "float", "low": -5.5, "high": 5.5, "step": 0.5}}
    sweeper = DbexpOptunaSweeper(None, "minimize", None, "s", 1, 1, 0.0, search_space=typed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, space = sweeper.search_space(["y=choice(1, 2)"])
    assert [str(w.message).splitlines()[0] for w in caught] == [
        "`hydra.sweeper.search_space` is deprecated and will be removed in the next major release."
    ]
    assert space == {"x": FloatDistribution(-5.5, 5.5, step=0.5), "y": CategoricalDistribution([1, 2])}
    both = DbexpOptunaSweeper(None, "minimize", None, "s", 1, 1, 0.0, search_space=typed, params={"z": "choice(1)"})
    with pytest.warns(UserWarning, match="Both hydra.sweeper.params and hydra.sweeper.search_space"):
        assert set(both.search_space([])[1]) == {"z"}
