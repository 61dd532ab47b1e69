"""Which finished sweep trials keep their weights (``hydra.sweeper.keep``): a sweep of 40 SD1.5 full fine-tunes
would otherwise leave 40 exports and 40 trained-weights cache entries behind (3.4 GB fp32 each).

* ``all``: every trial keeps its export and cache entry.
* ``best``: the ``keep_best`` best complete trials (one objective; several: the first objective decides).
* ``front``: the Pareto front (several objectives; one objective: the best trial).

A trial that is not kept — never was, or dropped out as better ones finished — loses ``pipeline/`` and the
trained-weights cache entry it stored itself (not one it reused, nor one a kept trial uses); it keeps
``metrics.json``, samples, the evaluation, logs, and so its row in the comparison report. Pruned and failed
trials have no export or entry to lose. The sweeper calls :func:`apply` after each batch of trials; a trial's
folder comes from its ``run_dir`` attribute, so any worker with the folder on its file system tidies it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)
KEEP = ("all", "best", "front")
RUN_DIR = "run_dir"  # the trial attribute the sweeper sets before it records the result


def check_keep(keep: str, keep_best: int) -> None:
    from dbexp.errors import UserInputError

    if keep not in KEEP:
        raise UserInputError(f"hydra.sweeper.keep={keep}: use one of {', '.join(KEEP)}")
    if keep_best < 1:
        raise UserInputError(f"hydra.sweeper.keep_best={keep_best}: must be >= 1")


def kept(study, keep: str, keep_best: int) -> set[int]:
    """Numbers of the complete trials that keep their weights."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if keep == "all":
        return {t.number for t in complete}
    if keep == "front" and len(study.directions) > 1:
        return {t.number for t in study.best_trials}
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    ranked = sorted(complete, key=lambda t: (sign * t.values[0], t.number))
    return {t.number for t in ranked[: 1 if keep == "front" else keep_best]}


def entry_of(run_dir: Path) -> tuple[Path | None, bool]:
    """The trained-weights cache entry a run used (``metrics.json``), and whether it stored it."""
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None, False
    used = json.loads(metrics.read_text()).get("trained_weights") or {}
    return (Path(used["entry"]), bool(used.get("stored_here"))) if used.get("entry") else (None, False)


def release(run_dir: Path, protected: set[Path]) -> int:
    """Remove a dropped trial's export and the cache entry it stored (unless ``protected``); bytes freed."""
    freed = 0
    entry, stored_here = entry_of(run_dir)
    targets = [run_dir / "pipeline"] + ([entry] if entry and stored_here and entry not in protected else [])
    for target in targets:
        if target.is_dir():
            freed += sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
            shutil.rmtree(target)
    return freed


def apply(study, keep: str, keep_best: int) -> int:
    """Release every finished trial that is not kept (again: a released one has nothing left); bytes freed."""
    from optuna.trial import TrialState

    if keep == "all":
        return 0
    keep_numbers = kept(study, keep, keep_best)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    protected = {e for t in trials if t.number in keep_numbers and (e := _entry(t)) is not None}
    freed = 0
    for trial in trials:
        folder = trial.user_attrs.get(RUN_DIR)
        if trial.number in keep_numbers or not folder or not Path(folder).is_dir():
            continue
        released = release(Path(folder), protected)  # nothing left to free: released before
        if released:
            log.info("trial %d is not among the kept (%s): its export and trained weights released", trial.number, keep)
        freed += released
    return freed


def _entry(trial) -> Path | None:
    folder = trial.user_attrs.get(RUN_DIR)
    return entry_of(Path(folder))[0] if folder else None
