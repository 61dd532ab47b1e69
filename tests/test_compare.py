"""The comparison report on a collection built in memory: signals over steps, the best step marked and named."""

from dbexp.compare import write_report
from dbexp.run_collection import Collection, RunRecord, _measured_history


def _run(number: int, score: float, best_step: int | None, history: dict) -> RunRecord:
    metrics = {"eval/score": score} | ({"best_step": best_step} if best_step is not None else {})
    return RunRecord(f"trial {number}", "COMPLETE", {"optimizer.lr": 1e-4 * number}, metrics, [score], 10.0, history)


def test_the_report_names_the_best_trial_with_its_best_step_and_plots_the_signals(tmp_path):
    history = _measured_history(
        {"in_training": {"0": {"val/loss_prior": 0.3}, "100": {"val/loss_prior": 0.2, "eval/score": 0.9}}}
    )
    assert history == {"val/loss_prior": [(0, 0.3), (100, 0.2)], "eval/score": [(100, 0.9)]}
    runs = [
        _run(0, 0.8, None, {"val/loss_prior": [(0, 0.3), (50, 0.35), (100, 0.4)]}),
        _run(1, 1.1, 50, {"val/loss_prior": [(0, 0.3), (50, 0.25), (100, 0.3)]}),
    ]
    assert [r.label for r in runs] == ["trial 0", "trial 1, step 50"]
    page = write_report(Collection("sweep x", "here", ["maximize"], ["eval/score"], runs), tmp_path).read_text()
    assert "the best run: trial 1, step 50." in page
    assert '<tr class="best"><td>trial 1, step 50</td>' in page
    assert (tmp_path / "curves.png").stat().st_size > 0
