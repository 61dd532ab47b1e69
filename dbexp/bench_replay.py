"""``python -m dbexp.bench replay <record.json> …``: Optuna's pruners replayed on recorded unpruned sweeps.

A record is the ``none`` sweep's ``trials`` of ``python -m dbexp.bench pruning --json`` (``docs/data/`` keeps
measured ones): per trial its parameters, objective and every in-training value. The replay feeds each
finished trial's values, in trial order and at the steps they were measured, to a fresh study with the pruner,
and counts what that pruner would have spent and kept: the fraction of the training steps, the best objective
among the trials it lets finish against the sweep's best, and how many finish. It ignores that TPE proposes
differently once trials are pruned, so it ranks candidates; a real pruned sweep (``bench pruning``) decides.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from dbexp.errors import UserInputError
from dbexp.pruning import report_sign

#: What a replay tries: the signals the toy preset measures in training (``val/*`` every 50 steps, the fast
#: subset's ``eval/*`` every 100) and the pruners ``hydra/sweeper/pruner`` offers, over their warm-up settings.
SIGNALS = ("eval/score", "eval/subject_fidelity", "val/loss", "val/loss_instance", "val/loss_prior")
#: The early signal each ``eval/*`` one is also tried behind (``pruning.early_metric``): reported before the
#: fast subset's first evaluation, which the replay finds in the record.
EARLY = "val/loss_instance"


def signals() -> Iterator[tuple[str, str | None, str]]:
    """(label, early metric or None, metric) for every signal a replay tries."""
    for metric in SIGNALS:
        yield metric, None, metric
    for metric in (m for m in SIGNALS if m.startswith("eval/")):
        yield f"{EARLY} → {metric}", EARLY, metric


def pruners(length: int) -> Iterator[tuple[str, Callable]]:
    """(label, factory of a fresh pruner) for every candidate; ``length``: a trial's training steps."""
    import optuna

    p = optuna.pruners
    for startup in (2, 3, 4, 5):
        for warmup in (0, 50, 100):
            yield f"median after {startup}, from {warmup}", lambda s=startup, w=warmup: p.MedianPruner(s, w)
            yield (
                f"top 25 % after {startup}, from {warmup}",
                lambda s=startup, w=warmup: p.PercentilePruner(25.0, n_startup_trials=s, n_warmup_steps=w),
            )
    for first in (50, 100):
        for eta in (2, 3, 4):
            yield (
                f"successive halving from {first}, η {eta}",
                lambda f=first, e=eta: p.SuccessiveHalvingPruner(min_resource=f, reduction_factor=e),
            )
        for eta in (2, 3):
            yield (
                f"hyperband from {first}, η {eta}",
                lambda f=first, e=eta: p.HyperbandPruner(min_resource=f, max_resource=length, reduction_factor=e),
            )


def load_record(path: Path) -> list[dict]:
    """The finished trials of a recorded sweep (``{"trials": [...]}`` or a bench ``--json`` with ``none``)."""
    try:
        data = json.loads(Path(path).read_text())
        trials = data["none"]["trials"] if "none" in data else data["trials"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserInputError(
            f"{path}: not a recorded sweep ({type(err).__name__}: {err}); give a file that "
            "python -m dbexp.bench pruning --json wrote, or one in docs/data/"
        ) from None
    finished = [t for t in trials if t["state"] == "COMPLETE" and t.get("in_training")]
    if not finished:
        raise UserInputError(
            f"{path}: no finished trial with in-training values to replay (an unpruned sweep's record)"
        )
    return finished


def trial_length(trials: list[dict]) -> int:
    """The training steps of a recorded sweep's finished trials."""
    return max(int(t["steps_run"] or max(map(int, t["in_training"]))) for t in trials)


def replay(
    trials: list[dict], make_pruner: Callable, signal: str, study_direction: str = "maximize", early: str | None = None
) -> dict:
    """``make_pruner()`` replayed on ``trials`` with ``signal`` (and ``early`` before the first step any trial
    measured ``signal`` at, as ``pruning.early_metric``): steps spent ÷ all, best kept ÷ best, finished."""
    import optuna

    length = trial_length(trials)
    measured = [int(s) for t in trials for s, values in t["in_training"].items() if signal in values and int(s) > 0]
    until = min(measured, default=length) if early else 0
    study = optuna.create_study(direction=study_direction, pruner=make_pruner())
    spent, kept = 0, []
    for record in trials:
        trial = study.ask()
        stopped = None
        for step in sorted(int(s) for s in record["in_training"]):
            name = early if early and step < until else signal
            value = record["in_training"][str(step)].get(name)
            if value is None or not 0 < step < length:
                continue
            trial.report(report_sign(name, study_direction) * value, step)  # a loss: negated to a study that maximizes
            if trial.should_prune():
                stopped = step
                break
        if stopped is None:
            study.tell(trial, record["value"])
            kept.append(record["value"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        spent += length if stopped is None else stopped
    pick = max if study_direction == "maximize" else min
    best = pick(t["value"] for t in trials)
    return {"steps": spent / (length * len(trials)), "gap": (pick(kept) - best) / abs(best), "finished": len(kept)}


def bench_replay(records: list[Path], goal_steps: float = 0.5, goal_gap: float = 0.02, shown: int = 15) -> dict:
    """Every candidate pruner × signal on every record; prints those that meet both goals on all records, then
    the ``shown`` cheapest of the others (``--json`` keeps every row)."""
    import optuna

    if not records:
        raise UserInputError(
            "bench replay: name one or more recorded sweeps, e.g. docs/data/toy_sweep_tpe1_unpruned.json"
        )
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sweeps = [load_record(p) for p in records]
    rows = []
    length = max(trial_length(trials) for trials in sweeps)
    for signal, early, metric in signals():
        for label, factory in pruners(length):
            results = [replay(trials, factory, metric, early=early) for trials in sweeps]
            meets = all(r["steps"] <= goal_steps and r["gap"] >= -goal_gap for r in results)
            rows.append({"signal": signal, "pruner": label, "meets": meets, "records": results})
    rows.sort(key=lambda r: (not r["meets"], max(x["steps"] for x in r["records"])))
    print(f"\ndbexp bench replay — {len(records)} recorded sweep(s): {', '.join(str(p) for p in records)}")
    print(f"goal: ≤ {goal_steps} of the steps with the best within {goal_gap:.0%} on every record (✓)")
    print(f"  {'signal':<42} {'pruner':<34} " + "  ".join(f"{'steps':>5} {'best':>7} {'done':>4}" for _ in records))
    met = sum(r["meets"] for r in rows)
    for row in rows[: met + shown]:
        cells = "  ".join(f"{r['steps']:>5.3f} {r['gap']:>+7.1%} {r['finished']:>4}" for r in row["records"])
        print(f"{'✓' if row['meets'] else ' '} {row['signal']:<42} {row['pruner']:<34} {cells}")
    print(
        f"{met} of {len(rows)} candidates meet the goal; {max(len(rows) - met - shown, 0)} more not shown (--json: all)"
    )
    return {"rows": rows}
