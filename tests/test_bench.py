"""The benchmark command runs and prints its tables (benchmarks measure; tests never assert timings)."""

import json

import pytest

from dbexp.bench import main
from dbexp.bench_harness import counted_flops
from tests.conftest import compose_train


def test_bench_prior_and_cache_print_their_tables(tmp_path, capsys):
    main(["prior", "prior.num_class_images=3", "prior.num_inference_steps=2", "--json", str(tmp_path / "p.json")])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines() if line.startswith(("first", "second"))}
    assert rows == {"first": ["3", "0"], "second": ["0", "3"]}
    assert "prior stage, second run ÷ first:" in out
    assert json.loads((tmp_path / "p.json").read_text())["ratio"] > 0

    main(["cache", "--steps", "3", "--rounds", "1", "prior.num_class_images=2", "prior.num_inference_steps=2"])
    out = capsys.readouterr().out
    assert "without caches" in out and "with caches" in out and "training step with caches ÷ without" in out
    assert "counted TFLOP per sample, model=toy" in out


def test_counted_flops_match_the_reference_figure_for_sd15(tmp_path):
    """REFERENCE.md: one SD1.5 UNet forward at 64×64 latents ≈ 0.8 TFLOP."""
    cfg = compose_train(tmp_path, tmp_path / "cache", "model=sd15")
    flops = counted_flops(cfg.model, 512)
    assert flops["unet_forward"] == pytest.approx(0.8, rel=0.05)
    assert flops["vae_encode"] > flops["unet_forward"] > flops["text_encoder"] > 0


def test_bench_reuse_prints_its_table(capsys):
    main(["reuse", "debug=fast", "callbacks.progress_bar=null", "export.enabled=false"])
    out = capsys.readouterr().out
    steps = [line.split()[-3] for line in out.splitlines() if line.startswith(("warm-up", "trains", "guidance only"))]
    assert steps == ["4", "4", "0"]  # the guidance-only trial runs no training step
    assert "guidance-only trial ÷ training trial:" in out


def test_bench_pruning_runs_both_sweeps_and_prints_steps_and_best(capsys, tmp_path):
    smoke = ["debug=fast", "trainer.max_steps=4", "eval.metrics_every_n_steps=2", "eval.subset_prompts=1"]
    smoke += ["eval.num_prompts=1", "eval.images_per_prompt=2", "eval.pres_images=2"]  # also the re-evaluation's
    main(["pruning", "--trials", "2", *smoke, "--json", str(tmp_path / "p.json")])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("none ", "pruned "))}
    assert set(rows) == {"none", "pruned"} and int(rows["none"][0]) == 8  # 2 trials × 4 steps, nothing pruned
    numbers = json.loads((tmp_path / "p.json").read_text())
    assert numbers["none"]["complete"] == 2 and "steps with pruning ÷ without" in out
    recorded = numbers["none"]["trials"]  # per trial, for replaying other pruners on the recorded sweep
    assert [t["number"] for t in recorded] == [0, 1] and all(t["in_training"] and t["final"] for t in recorded)
    assert numbers["pruned"]["steps"] == 8  # the second sweep trains again (no reuse of the first's weights)
    assert "each best trial re-evaluated" in out  # trained again to its best step, evaluated on fresh seeds
    assert numbers["none"]["best_reevaluated"] == numbers["pruned"]["best_reevaluated"]  # same setting, same value


def test_the_signal_table_ranks_each_signal_at_each_step_against_the_final_value():
    """``bench signals``' table on made-up trials (its sweep is ``bench pruning``'s, tested above)."""
    from dbexp.bench import SIGNAL_PAIRS, signal_table

    runs = [
        {
            "eval/score": score,
            "eval/pres": 0.1,
            "in_training": {"0": {"val/loss_prior": 0.5}, "50": {"val/loss_prior": loss}, "100": {}},
        }
        for score, loss in [(1.0, 0.1), (0.8, 0.2), (0.5, 0.3), (0.2, 0.25)]
    ]
    table = signal_table(runs)
    assert list(table) == [f"{a} ~ final {b}" for a, b in SIGNAL_PAIRS]
    assert table["val/loss_prior ~ final eval/score"] == {"50": pytest.approx(-0.8)}  # ranks 1,2,4,3 vs 4,3,2,1
    assert table["eval/score ~ final eval/score"] == {}  # never measured in training
    assert table["val/loss_prior ~ final eval/pres"]["50"] != table["val/loss_prior ~ final eval/pres"]["50"]  # NaN


def test_bench_train_prints_step_time_memory_and_the_bare_loop_ratio(tmp_path, capsys):
    main(
        ["train", "model=tiny", "--steps", "3", "--warmup", "1", "--rounds", "1", "--presets", "default,16gb"]
        + ["--finetune", "lora", "--json", str(tmp_path / "t.json")]
    )
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("lora ")]
    assert [(r[1], r[2]) for r in rows] == [("default", "32-true"), ("16gb", "bf16-mixed")]
    assert all(r[-1] == "—" for r in rows)  # no MFU on a CPU
    assert "peak memory: peak RSS" in out
    assert "dbexp step ÷ bare PyTorch + diffusers loop (lora, memory=default), step by step in turn:" in out
    numbers = json.loads((tmp_path / "t.json").read_text())
    assert [r["memory"] for r in numbers["rows"]] == ["default", "16gb"]
    assert all(r["median_ms"] > 0 and r["peak_mib"] > 100 and r["tflop_per_step"] > 0 for r in numbers["rows"])
    assert numbers["dbexp_vs_bare"]["lora"]["ratio"] > 0 and len(numbers["dbexp_vs_bare"]["lora"]["round_ratios"]) == 1


def test_train_step_flops_count_the_passes_that_train(tmp_path):
    from dbexp.bench_train import step_flops

    full = compose_train(tmp_path, tmp_path / "cache", "model=sd15")
    lora = compose_train(tmp_path, tmp_path / "cache", "model=sd15", "finetune.method=lora")
    unet = counted_flops(full.model, 512)["unet_forward"]
    assert step_flops(full) == pytest.approx(3 * unet * 2)  # forward + backward, instance + class sample
    assert step_flops(lora) == pytest.approx(2 * unet * 2)  # frozen weights: no weight gradients
    # SDXL: its UNet with the added conditioning, both text encoders; ~6.8 TFLOP a 1024 px sample
    xl = counted_flops(compose_train(tmp_path, tmp_path / "cache", "model=sdxl").model, 1024)
    assert 6.5 < xl["unet_forward"] < 7.0 and xl["text_encoder"] > 5 * counted_flops(full.model, 512)["text_encoder"]


def test_a_stopped_bench_stops_its_sweep(tmp_path):
    """``kill`` of a bench (SIGTERM) ends the sweep it started, not only the bench."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    child = f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(120)"
    bench = (
        "import signal, sys; from dbexp.bench import _stop, run_child; signal.signal(signal.SIGTERM, _stop); "
        f"run_child([sys.executable, '-c', {child!r}])"
    )
    parent = subprocess.Popen([sys.executable, "-c", bench])
    for _ in range(600):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    sweep_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # the child has been stopped and reaped
        os.kill(sweep_pid, 0)


def test_bench_disk_counts_a_preset_from_one_trial(tmp_path, capsys):
    main(["disk", "model=tiny", "trainer.max_steps=2", "--json", str(tmp_path / "d.json")])
    out = capsys.readouterr().out
    numbers = json.loads((tmp_path / "d.json").read_text())
    sizes = numbers["sizes"]
    assert (numbers["trials"], numbers["kept"]) == (40, 3)  # lr_prior_guidance: 40 trials, keep the best 3
    step, export, entry, small = list(sizes.values())[:4]
    assert step > entry > 0 and export > entry and 0 < small < entry  # tiny: the export is float32 + a single file
    assert numbers["before_bytes"] == 40 * (2 * step + sizes["export as before (float32, diffusers)"] + entry + small)
    assert numbers["now_bytes"] == 40 * small + 3 * (export + entry)
    assert "now ÷ before:" in out


def test_replay_counts_what_a_pruner_would_have_spent_and_kept(tmp_path, capsys):
    """``bench replay`` on a made-up record: a trial whose loss stays high is stopped at its first report."""
    import optuna

    from dbexp.bench_replay import replay

    def trial(number, loss_at_50, score_at_100, value):
        losses = {"0": 0.5, "50": loss_at_50, "100": loss_at_50 - 0.01, "150": loss_at_50 - 0.02}
        in_training = {s: {"val/loss_instance": v} for s, v in losses.items()}
        in_training["100"]["eval/score"] = score_at_100  # the fast subset, every 100 steps
        return {"number": number, "state": "COMPLETE", "value": value, "steps_run": 200, "in_training": in_training}

    trials = [trial(0, 0.20, 1.0, 1.0), trial(1, 0.22, 0.9, 0.9), trial(2, 0.40, 0.8, 0.8), trial(3, 0.19, 0.5, 1.2)]
    halving = lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=50, reduction_factor=2)  # noqa: E731
    result = replay(trials, halving, "val/loss_instance")  # a loss: lower is better, in a study that maximizes
    # trial 0 is promoted (first at its rung); 1 is worse than 0 at step 50 (of 2: keep 1), 2 worse still; 3 the best
    assert result == {"steps": (200 + 50 + 50 + 200) / 800, "gap": 0.0, "finished": 2}
    assert replay(trials, lambda: optuna.pruners.NopPruner(), "val/loss_instance")["steps"] == 1.0
    # the loss at step 50, then the score from its first step (100): trial 3 passes step 50 (0.19, best) and is
    # stopped at step 100 (0.5 < 1.0 of trial 0, keep 1 of 2) — the sweep's best is lost
    mixed = replay(trials, halving, "eval/score", early="val/loss_instance")
    assert mixed == {"steps": (200 + 50 + 50 + 100) / 800, "gap": pytest.approx((1.0 - 1.2) / 1.2), "finished": 1}

    record = tmp_path / "sweep.json"
    record.write_text(json.dumps({"sweep": "none", "trials": trials}))
    main(["replay", str(record), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "val/loss_instance" in out and "candidates meet the goal" in out
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert {r["signal"] for r in rows} >= {"val/loss_instance", "eval/score", "val/loss_instance → eval/score"} and all(
        len(r["records"]) == 1 for r in rows
    )


def test_replay_of_a_file_that_is_no_record_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit) as stopped:
        main(["replay", str(tmp_path / "other.json")])
    assert stopped.value.code == 2
    assert "other.json: not a recorded sweep" in capsys.readouterr().err
