"""What a sweep trial reports to the pruner: which value, how often, and which way is better."""

import pytest

from dbexp.errors import UserInputError
from dbexp.pruning import PruningCallback, Signal, pruning_metric, pruning_signals, report_every, report_sign
from dbexp.run import plan_run


def test_the_pruning_metric_defaults_to_the_first_objective_and_is_measured_where_it_is_logged(make_cfg):
    cfg = make_cfg("eval.val_every_n_steps=3", "eval.metrics_every_n_steps=2", "optimized_metric=[eval/dino,eval/pres]")
    assert pruning_metric(cfg) == "eval/dino" and report_every(cfg, "eval/dino") == 2
    assert report_every(cfg, "val/loss_prior") == 3
    assert report_every(cfg, "train/loss") == cfg.trainer.log_every_n_steps
    assert pruning_metric(make_cfg("pruning.metric=val/loss_prior")) == "val/loss_prior"


def test_a_loss_is_reported_negated_to_a_study_that_maximizes():
    assert report_sign("val/loss_prior", "maximize") == -1.0
    assert report_sign("val/loss_prior", "minimize") == 1.0
    assert report_sign("eval/score", "maximize") == 1.0
    assert report_sign("eval/pres", "maximize") == -1.0
    assert report_sign("another_apps/metric", "maximize") == 1.0  # no direction known: the study's


def test_a_pruning_metric_the_run_does_not_measure_during_training_is_one_line(make_cfg):
    plan_run(make_cfg("eval.val_every_n_steps=2", "pruning.metric=val/loss_prior"))
    with pytest.raises(UserInputError, match=r"pruning.metric=val/loss_prior: this run does not measure it"):
        plan_run(make_cfg("pruning.metric=val/loss_prior"))
    with pytest.raises(UserInputError, match=r"pruning.metric=eval/dino: .* measured during training: train/loss"):
        plan_run(make_cfg("pruning.metric=eval/dino"))  # evaluated after training only


def test_an_early_signal_is_reported_before_its_step_and_the_pruning_metric_from_there(make_cfg):
    """The pair docs/measurements.md tried on the toy sweep: the photos' validation loss (every 3 steps here,
    negated: a loss) before step 4, the fast subset's eval/score (every 2 steps) from step 4 on — each step
    reports one signal."""
    cfg = make_cfg(
        "eval.val_every_n_steps=3",
        "eval.metrics_every_n_steps=2",
        "optimized_metric=eval/score",
        "pruning.early_metric=val/loss_instance",
        "pruning.early_until=4",
    )
    signals = pruning_signals(cfg, "maximize")
    assert signals == [Signal("val/loss_instance", 3, -1.0, 4), Signal("eval/score", 2, 1.0, None)]
    callback = PruningCallback(None, signals)
    reports = {step: s.metric for step in range(1, 9) if (s := callback.signal_at(step))}
    assert reports == {3: "val/loss_instance", 4: "eval/score", 6: "eval/score", 8: "eval/score"}
    assert pruning_signals(make_cfg("eval.metrics_every_n_steps=2", "optimized_metric=eval/score"), "maximize") == [
        Signal("eval/score", 2, 1.0, None)
    ]


def test_an_early_pruning_metric_without_its_step_or_not_measured_is_one_line(make_cfg):
    with pytest.raises(UserInputError, match=r"pruning.early_metric=val/loss_instance needs pruning.early_until"):
        plan_run(make_cfg("eval.val_every_n_steps=2", "pruning.early_metric=val/loss_instance"))
    with pytest.raises(UserInputError, match=r"pruning.early_metric=val/loss_prior: this run does not measure it"):
        plan_run(make_cfg("pruning.early_metric=val/loss_prior", "pruning.early_until=4"))


def test_a_trial_is_pruned_before_its_last_step_and_never_at_it():
    """A pruner that always says "prune": training stops at a report before the end; at the last step the
    value is reported but the finished trial keeps its final evaluation."""
    from types import SimpleNamespace

    import optuna

    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    def trainer_at(step):
        metrics = {"val/loss_instance": 0.2}
        return SimpleNamespace(
            global_step=step, max_steps=4, is_global_zero=True, world_size=1, callback_metrics=metrics
        )

    for step, pruned in [(2, True), (4, False)]:
        trial = optuna.create_study(direction="maximize", pruner=Always()).ask()
        callback, trainer = PruningCallback(trial, [Signal("val/loss_instance", 2, -1.0)]), trainer_at(step)
        trainer.should_stop = False
        callback.on_train_batch_end(trainer, None, None, None, 0)
        assert trial.storage.get_trial(trial._trial_id).intermediate_values == {step: -0.2}
        assert (trainer.should_stop, callback.pruned_at) == ((True, 2) if pruned else (False, None))
