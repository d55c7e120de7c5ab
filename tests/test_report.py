"""python -m sllmx.report: aggregation against scipy.stats, formats, grouping, direction, bad records."""

import csv
import io
import json
import math

import numpy as np
import pytest
from scipy import stats

from sllmx.records import DevMetric, RunRecord
from sllmx.comparison import build_table, collect, summarize
from sllmx.report import main


def write_run(folder, method="lora", trainer="sft", seed=1, value=0.5, lr=2e-4, beta=None, r=16,
              higher=False, metric="eval_loss", status="COMPLETE", test=None):
    config = {"method": {"name": method, "r": r}, "trainer": {"name": trainer, "learning_rate": lr},
              "seed": seed, "output_dir": str(folder)}
    if beta is not None:
        config["trainer"]["beta"] = beta
    record = RunRecord(status=status, method=method, trainer=trainer, model={}, data={}, seed=seed, config=config,
                       dev_metric=DevMetric(name=metric, higher_is_better=higher, best=value), output_dir=str(folder),
                       trainable_params=100, total_params=1000, peak_rss_bytes=2 ** 30, train_tokens=5000,
                       wall_time_s=10.0, train_tokens_per_s=500.0, test_metrics=test or {})
    record.write(folder)
    return record


SEEDS = {"lora": [0.50, 0.46, 0.55], "dora": [0.40, 0.47, 0.44, 0.41]}


@pytest.fixture
def runs(tmp_path):
    for method, values in SEEDS.items():
        for seed, value in enumerate(values):
            write_run(tmp_path / f"{method}-{seed}", method=method, seed=seed, value=value)
    return tmp_path


@pytest.mark.parametrize("values", [[0.5, 0.46, 0.55], [0.4, 0.47, 0.44, 0.41], [1.0, 2.0]])
def test_aggregation_matches_scipy(values):
    s = summarize(values)
    sem = stats.sem(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sem)
    assert s["n"] == len(values)
    assert s["mean"] == pytest.approx(np.mean(values))
    assert s["std"] == pytest.approx(np.std(values, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((low, high))
    # the interval is mean ± t_{0.975, n-1} · s / sqrt(n)
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    assert s["ci_high"] - s["mean"] == pytest.approx(half)


def test_one_run_shows_n_and_no_interval():
    assert summarize([0.3]) == {"n": 1, "mean": 0.3, "std": None, "ci_low": None, "ci_high": None}


def test_groups_aggregate_over_seeds_and_best_comes_first_by_direction(runs):
    rows, meta = build_table(collect([runs]).records, ["method", "trainer"])
    assert [r["method"] for r in rows] == ["dora", "lora"]  # lower eval_loss is better
    dora = rows[0]
    assert dora["n"] == 4 and dora["eval_loss_mean"] == pytest.approx(np.mean(SEEDS["dora"]))
    assert dora["eval_loss_std"] == pytest.approx(np.std(SEEDS["dora"], ddof=1))
    assert dora["trainable_%"] == pytest.approx(10.0) and dora["peak_rss_gib"] == pytest.approx(1.0)
    assert meta == {"metric": "eval_loss", "higher_is_better": False, "by": ["method", "trainer"], "also": []}


def test_higher_is_better_picks_the_largest_mean(tmp_path):
    for seed, value in enumerate([0.6, 0.7]):
        write_run(tmp_path / f"a{seed}", method="lora", lr=1e-4, seed=seed, value=value, higher=True,
                  metric="eval_json_fields")
        write_run(tmp_path / f"b{seed}", method="lora", lr=3e-4, seed=seed, value=value - 0.3, higher=True,
                  metric="eval_json_fields")
    rows, meta = build_table(collect([tmp_path]).records, ["method"])
    assert meta["higher_is_better"] is True
    (row,) = rows
    assert row["configs"] == 2 and row["n"] == 2
    assert row["eval_json_fields_mean"] == pytest.approx(0.65)
    assert row["hyperparameters"] == {"trainer.learning_rate": 1e-4}


def test_grouping_by_an_arbitrary_key(tmp_path):
    for beta, values in {0.1: [0.6, 0.62], 0.5: [0.7, 0.71, 0.69]}.items():
        for seed, value in enumerate(values):
            write_run(tmp_path / f"b{beta}-{seed}", trainer="dpo", beta=beta, seed=seed, value=value)
    rows, _ = build_table(collect([tmp_path]).records, ["trainer.beta"])
    assert [(r["trainer.beta"], r["n"]) for r in rows] == [(0.1, 2), (0.5, 3)]
    assert rows[1]["eval_loss_mean"] == pytest.approx(0.7)


def test_a_sweep_row_is_its_best_trial_with_its_hyperparameters(tmp_path):
    for i, (lr, r, value) in enumerate([(1e-4, 8, 0.5), (3e-4, 16, 0.3), (1e-3, 8, 0.9)]):
        write_run(tmp_path / "multirun" / str(i), lr=lr, r=r, value=value, seed=42)
    rows, _ = build_table(collect([tmp_path]).records, ["method", "trainer"])
    (row,) = rows
    assert row["configs"] == 3 and row["n"] == 1 and row["eval_loss_std"] is None
    assert row["eval_loss_mean"] == 0.3
    assert row["hyperparameters"] == {"trainer.learning_rate": 3e-4, "method.r": 16}


def test_test_metrics_are_reported_beside_the_dev_metric(tmp_path):
    write_run(tmp_path / "a", value=0.4, test={"test_loss": 0.45, "test_runtime": 3.0})
    write_run(tmp_path / "b", value=0.5, seed=2, test={"test_loss": 0.55})
    (row,), _ = build_table(collect([tmp_path]).records, ["method"])
    assert row["test_loss_mean"] == pytest.approx(0.5) and "test_runtime_mean" not in row


def test_every_output_format(runs, tmp_path, capsys):
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dev metric eval_loss (lower is better)") and "| dora" in out and "skipped: 0" in out
    assert main([str(runs), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["method"] for r in rows] == ["dora", "lora"] and float(rows[1]["n"]) == 3
    assert main([str(runs), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "eval_loss" and doc["rows"][0]["eval_loss_mean"] == pytest.approx(np.mean(SEEDS["dora"]))
    assert main([str(runs), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "eval\\_loss (dev)" in tex and "$\\pm$" in tex and "(10.00\\%)" in tex
    out_file = tmp_path / "table.md"
    assert main([str(runs), "--out", str(out_file)]) == 0
    assert "| lora" in out_file.read_text()
    with pytest.raises(SystemExit) as exc:  # nothing is overwritten
        main([str(runs), "--out", str(out_file)])
    assert exc.value.code == 2 and "exists" in capsys.readouterr().err


def test_missing_partial_and_corrupt_records_are_skipped_with_a_warning(runs, capsys):
    (runs / "truncated").mkdir()
    (runs / "truncated" / "run.json").write_text('{"schema_version": 1, "status": "COMP')
    (runs / "not-a-record").mkdir()
    (runs / "not-a-record" / "run.json").write_text('{"schema_version": 1, "hello": 1}')
    write_run(runs / "killed", status="RUNNING")
    empty = runs.parent / "empty-run"
    empty.mkdir()
    assert main([str(runs), str(empty)]) == 0
    captured = capsys.readouterr()
    for name in ("truncated", "not-a-record", "killed", "empty-run"):
        assert f"skipped {runs.parent / name if name == 'empty-run' else runs / name}" in captured.err
    assert "skipped: 4 run(s)" in captured.out and "| dora" in captured.out


def test_mixed_dev_metrics_and_unknown_keys_are_one_line_errors(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(runs), "--by", "trainer.nope"])
    assert exc.value.code == 2 and "--by trainer.nope" in capsys.readouterr().err
    write_run(runs / "other", metric="eval_json_fields", higher=True)
    with pytest.raises(SystemExit):
        main([str(runs)])
    assert "different dev metrics" in capsys.readouterr().err


# -- figures and the HTML page --------------------------------------------------------------------------

@pytest.mark.parametrize("higher", [True, False])
def test_expected_validation_performance_is_the_exact_expectation(higher):
    import itertools

    from sllmx.plots import expected_best

    values = [0.3, 0.9, 0.5, 0.7]
    pick = max if higher else min
    for n in (1, 2, 3):
        draws = list(itertools.product(values, repeat=n))  # every equally likely draw with replacement
        exact = sum(pick(d) for d in draws) / len(draws)
        assert expected_best(values, n, higher) == pytest.approx(exact)
    assert expected_best(values, 1, higher) == pytest.approx(np.mean(values))


def test_plots_and_a_self_contained_html_page(runs, tmp_path, capsys):
    import optuna

    study_dir = runs / "multirun" / "s1"
    study_dir.mkdir(parents=True)
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    study = optuna.create_study(study_name="s1", storage=storage)
    for lr in (1e-4, 3e-4, 1e-3, 3e-3):
        trial = study.ask()
        trial.suggest_float("trainer.learning_rate", 1e-5, 1e-2, log=True)
        trial.suggest_int("method.r", 4, 64)
        study.tell(trial, lr * 100)
    (study_dir / "sweep.json").write_text(json.dumps({"study_name": "s1", "storage": storage}))
    plots, page = tmp_path / "figs", tmp_path / "report.html"
    assert main([str(runs), "--plots", str(plots), "--html", str(page)]) == 0
    names = {p.name for p in plots.iterdir()}
    for stem in ("metric_vs_learning_rate", "learning_curves", "expected_validation_performance", "s1-history",
                 "s1-importances"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names, stem
        assert (plots / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 5 and "<table" in text and "dora" in text
    assert "src=\"http" not in text  # nothing fetched from elsewhere


def test_the_report_goes_to_wandb_as_a_table_and_images(runs, tmp_path, monkeypatch, capsys):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert main([str(runs), "--wandb", "--wandb-group", "study-x"]) == 0
    wandb.teardown()  # flush the offline log
    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data = log.read_bytes()
    assert b"study-x" in data and b"table-file" in data and b"image-file" in data
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/report_*.table.json"))
    assert tables and "dora" in tables[0].read_text()
    assert "logged the report to W&B, group study-x" in capsys.readouterr().err


# -- sweep=compare: from a finished sweep to the paper table ---------------------------------------------

@pytest.mark.slow  # a sweep and its retraining on seeds (~1 minute)
def test_compare_retrains_each_groups_best_on_seeds_and_writes_the_report(tmp_path):
    import subprocess
    import sys

    from test_sweep import TINY

    cache = f"cache_dir={tmp_path / 'cache'}"
    study = subprocess.run(
        [sys.executable, "-m", "sllmx", "--multirun", *TINY, cache, "method=choice(lora, dora)",
         "trainer.learning_rate=choice(1e-3, 1e-2)", "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=nop",
         f"hydra.sweep.dir={tmp_path / 'study'}"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert study.returncode == 0, study.stderr[-3000:]
    swept = collect([tmp_path / "study"]).records
    best = {m: min((r for r in swept if r.method == m), key=lambda r: r.dev_metric.best) for m in ("lora", "dora")}
    compare = subprocess.run(
        [sys.executable, "-m", "sllmx", "--multirun", "sweep=compare", f"hydra.sweeper.sweeps=[{tmp_path / 'study'}]",
         "hydra.sweeper.seeds=[1,2]", f"hydra.sweep.dir={tmp_path / 'compare'}", cache],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert compare.returncode == 0, compare.stderr[-3000:]
    out = tmp_path / "compare"
    for name in ("report.md", "report.tex", "report.csv", "report.json", "report.html",
                 "figures/expected_validation_performance.png"):
        assert (out / name).exists(), name
    doc = json.loads((out / "report.json").read_text())
    assert {r["method"]: r["n"] for r in doc["rows"]} == {"lora": 2, "dora": 2}
    for record in collect([out]).records:  # the best configuration, re-trained on the new seeds, tested once
        assert record.seed in (1, 2) and record.trial is None and "test_loss" in record.test_metrics
        assert record.config["trainer"]["learning_rate"] == best[record.method].config["trainer"]["learning_rate"]
    assert "| lora" in compare.stdout and "report: " in compare.stdout


def test_a_repeated_configuration_and_seed_counts_once(tmp_path, capsys):
    write_run(tmp_path / "study-a" / "4", value=0.32, seed=42)
    write_run(tmp_path / "study-b" / "4", value=0.32, seed=42)
    write_run(tmp_path / "seed-7", value=0.40, seed=7)
    (row,), _ = build_table(collect([tmp_path]).records, ["method"])
    assert row["n"] == 2 and row["eval_loss_mean"] == pytest.approx(0.36)
    assert "repeat a configuration and seed" in capsys.readouterr().err


def test_atomic_write_gives_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os

    from sllmx.atomic import write_text_atomic

    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "report.md", "x\n")
    finally:
        os.umask(old)
    assert path.read_text() == "x\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left behind


def test_further_dev_metrics_come_from_each_runs_best_step_and_do_not_choose(tmp_path, capsys):
    import dataclasses

    # two seeds; json_fields at the best step (step 8) is 0.5 and 0.7; at step 4 it was higher but is not read
    for seed, (fields_best, value) in enumerate([(0.5, 0.3), (0.7, 0.32)], start=1):
        record = write_run(tmp_path / f"r{seed}", seed=seed, value=value)
        history = [{"step": 4, "value": 0.9, "metrics": {"eval_loss": 0.9, "eval_json_fields": 0.99}},
                   {"step": 8, "value": value, "metrics": {"eval_loss": value, "eval_json_fields": fields_best}}]
        dev = dataclasses.replace(record.dev_metric, history=history, best_step=8)
        dataclasses.replace(record, dev_metric=dev).write(tmp_path / f"r{seed}")
    assert RunRecord.read(tmp_path / "r1" / "run.json").dev_metric.best_step == 8
    (row,), meta = build_table(collect([tmp_path]).records, ["method"], ["eval_json_fields"])
    assert row["eval_json_fields_mean"] == pytest.approx(0.6)
    assert row["eval_json_fields_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert meta["also"] == ["eval_json_fields"]
    assert main([str(tmp_path), "--metrics", "eval_json_fields"]) == 0
    assert "eval_json_fields (dev)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--metrics", "eval_rouge"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "--metrics eval_rouge" in err and "available: eval_json_fields, eval_loss" in err


def test_a_multi_objective_sweep_marks_its_front_and_draws_it(tmp_path, capsys):
    """The report reads the sweeper's pareto_front from sweep.json: a column naming each group's front trials
    and a front plot (no study storage needed)."""
    sweep = tmp_path / "sweep"
    trials = []
    for number, (method, loss, memory) in enumerate([("lora", 0.5, 3.0), ("qlora", 0.6, 1.0), ("dora", 0.7, 4.0)]):
        record = write_run(sweep / str(number), method=method, value=loss)
        record.trial = {"study_name": "mo", "number": number, "storage": "sqlite:///x"}
        record.write(sweep / str(number))
        trials.append({"number": number, "state": "COMPLETE", "params": {"method": method}, "value": None,
                       "values": [loss, memory]})
    front = [{"number": n, "values": {"eval_loss": t["values"][0], "peak_memory": t["values"][1]},
              "params": t["params"]} for n, t in enumerate(trials[:2])]
    (sweep / "sweep.json").write_text(json.dumps({
        "study_name": "mo", "storage": "sqlite:///x", "objectives": ["eval_loss", "peak_memory"],
        "directions": ["minimize", "minimize"], "trials": trials, "best_trial": None, "pareto_front": front}))
    assert main([str(sweep), "--format", "csv", "--plots", str(tmp_path / "plots")]) == 0
    rows = {r["method"]: r["pareto_front"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows == {"lora": "0", "qlora": "1", "dora": ""}
    assert (tmp_path / "plots" / "mo-pareto_front.png").stat().st_size > 0
    assert main([str(sweep)]) == 0 and "Pareto front trials" in capsys.readouterr().out
