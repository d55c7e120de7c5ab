"""The decision under the report's table: sllmx.paired.paired_comparison against direct scipy calls and in every
direction, and python -m sllmx.report on synthetic run folders (baselines, a fine-tuned group, generation files)."""

import json
import warnings

import numpy as np
import pytest
from scipy import stats

from sllmx.comparison import add_verdicts, build_table, collect
from sllmx.paired import paired_comparison
from sllmx.report import main
from sllmx.tables import render
from test_report import write_run

# -- paired_comparison ----------------------------------------------------------------------------------------


def quarters(rng, n):
    """Per-example scores as json_fields gives them: a share of 4 fields."""
    return rng.integers(0, 5, n) / 4


def test_the_interval_and_p_value_are_scipys():
    rng = np.random.default_rng(7)
    base = quarters(rng, 40)
    cand = np.clip(base + rng.choice([-0.25, 0, 0.25, 0.5], 40), 0, 1)
    result = paired_comparison(cand, base, seed=3)
    diff = cand - base
    ci = stats.bootstrap((diff,), np.mean, n_resamples=10000, confidence_level=0.95, method="BCa",
                         rng=np.random.default_rng(3)).confidence_interval
    better, worse = int(np.sum(diff > 0)), int(np.sum(diff < 0))
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert result.sign_test_p == pytest.approx(stats.binomtest(better, better + worse, 0.5).pvalue, rel=1e-12)
    assert (result.better, result.worse, result.equal) == (better, worse, int(np.sum(diff == 0)))
    assert result.n == 40 and result.mean_difference == pytest.approx(np.mean(diff)) and result.interval == "BCa"
    assert result.better + result.worse + result.equal == 40
    # the seed is the only randomness: the same seed repeats the interval, another moves it a little
    assert paired_comparison(cand, base, seed=3) == result
    other = paired_comparison(cand, base, seed=4)
    assert (other.ci_low, other.ci_high) != (result.ci_low, result.ci_high)
    assert other.ci_low == pytest.approx(result.ci_low, abs=0.03)


def test_a_clear_gain():
    rng = np.random.default_rng(1)
    base = quarters(rng, 32)
    cand = np.minimum(base + rng.choice([0, 0.25, 0.5], 32, p=[0.3, 0.4, 0.3]), 1)
    result = paired_comparison(cand, base)
    assert result.verdict == "clear gain"
    assert 0 < result.ci_low < result.mean_difference < result.ci_high
    assert result.worse == 0 and result.better > 10 and result.sign_test_p < 1e-3
    assert result.sign_test_p == pytest.approx(2 * 0.5 ** result.better)  # all untied pairs better: 2 · 2^-k


def test_noise_around_zero_is_no_clear_gain():
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 0.2, 30)
    base = rng.uniform(0.2, 0.8, 60)
    cand = base + np.concatenate([noise, -noise])  # the differences are symmetric: mean 0
    result = paired_comparison(cand, base)
    assert result.verdict == "no clear gain"
    assert result.ci_low < 0 < result.ci_high and abs(result.mean_difference) < 1e-12
    assert result.better == result.worse == 30 and result.sign_test_p == pytest.approx(1.0)


def test_lower_is_better_turns_the_direction():
    rng = np.random.default_rng(3)
    base = rng.uniform(1.0, 2.0, 50)
    cand = base - rng.uniform(-0.05, 0.3, 50)  # mostly lower losses
    lower = paired_comparison(cand, base, higher_is_better=False)
    assert lower.mean_difference < 0 and lower.ci_high < 0 and lower.verdict == "clear gain"
    assert lower.better > lower.worse > 0 and not lower.higher_is_better
    higher = paired_comparison(cand, base, higher_is_better=True)  # the same numbers read the other way
    assert higher.verdict == "no clear gain"
    assert (higher.better, higher.worse) == (lower.worse, lower.better)
    assert (higher.ci_low, higher.ci_high, higher.sign_test_p) == (lower.ci_low, lower.ci_high, lower.sign_test_p)


def test_all_ties_and_a_constant_difference_have_the_value_as_interval():
    scores = [0.5, 0.25, 1.0, 0.0, 0.75]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DegenerateDataWarning, no NaN
        tie = paired_comparison(scores, scores)
        shifted = paired_comparison([s + 0.25 for s in scores], scores)
    assert (tie.n, tie.equal, tie.better, tie.worse) == (5, 5, 0, 0)
    assert (tie.mean_difference, tie.ci_low, tie.ci_high, tie.sign_test_p) == (0.0, 0.0, 0.0, 1.0)
    assert tie.verdict == "no clear gain" and tie.interval.startswith("none")
    assert (shifted.ci_low, shifted.ci_high) == pytest.approx((0.25, 0.25))
    assert shifted.better == 5 and shifted.sign_test_p == pytest.approx(stats.binomtest(5, 5).pvalue)  # 0.0625
    assert shifted.verdict == "no clear gain"  # an interval of width 0 over 5 examples is no evidence
    few = paired_comparison([1.0] * 3 + [0.5] * 29, [0.0] * 3 + [0.5] * 29)  # 3 better, 29 tied: pass/fail metrics
    assert few.ci_low > 0 and few.sign_test_p == pytest.approx(0.25) and few.verdict == "no clear gain"
    many = paired_comparison([1.0] * 9 + [0.5] * 23, [0.0] * 9 + [0.5] * 23)
    assert many.sign_test_p < 0.05 and many.verdict == "clear gain"
    # a mean over seeds such as (0.1 + 0.7) / 2 is a tie with 0.4, not a loss by 5.6e-17
    assert paired_comparison([(0.1 + 0.7) / 2], [0.4]).equal == 1


@pytest.mark.parametrize("candidate, baseline, message", [
    ([0.1, 0.2, 0.3], [0.1, 0.2], "3 candidate scores vs 2 baseline scores"),
    ([], [], "n = 0"),
    ([0.1, float("nan")], [0.1, 0.2], "NaN"),
])
def test_bad_input_is_a_clear_error(candidate, baseline, message):
    with pytest.raises(ValueError, match=message):
        paired_comparison(candidate, baseline)


def test_the_statistics_need_only_numpy_and_scipy():
    """sllmx.paired is a library module: the standard library, numpy and scipy, nothing of sllmx's runs."""
    import ast
    import sys

    import sllmx.paired

    tree = ast.parse(open(sllmx.paired.__file__, encoding="utf-8").read())
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert imported - set(sys.stdlib_module_names) - {"__future__"} <= {"numpy", "scipy"}


# -- the report ----------------------------------------------------------------------------------------------

N = 32
REFS = [json.dumps({"intent": f"i{i}", "order_id": str(1000 + i)}) for i in range(N)]


def write_generations(folder, scores, name="generations-test.jsonl", refs=REFS, key="json_fields"):
    rows = [{"input": [{"role": "user", "content": f"prompt {i}"}], "reference": ref, "prediction": "{}",
             "truncated": False, "scores": {key: float(s), "json_valid": 1.0}}
            for i, (ref, s) in enumerate(zip(refs, scores))]
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(folder, method, value, seed=1, baseline=False):
    record = write_run(folder, method=method, seed=seed, value=value, higher=True, metric="eval_json_fields")
    record.baseline = baseline
    record.write(folder)
    return folder


@pytest.fixture
def study(tmp_path):
    """Two prompting baselines (few_shot the better by dev metric) and LoRA on two seeds, all tested on 32
    examples."""
    rng = np.random.default_rng(0)
    few = quarters(rng, N)
    zero = np.maximum(few - 0.5, 0)
    lora = [np.minimum(few + rng.choice([0, 0.25, 0.5], N), 1) for _ in range(2)]
    write_generations(run(tmp_path / "zero", "zero_shot", 0.20, baseline=True), zero)
    write_generations(run(tmp_path / "few", "few_shot", 0.45, baseline=True), few)
    for seed, scores in enumerate(lora, start=1):
        write_generations(run(tmp_path / f"lora-{seed}", "lora", 0.80 + seed / 100, seed=seed), scores)
    return tmp_path, few, (lora[0] + lora[1]) / 2


def test_the_report_states_the_decision_against_the_best_baseline(study, capsys):
    root, few, lora = study
    expected = paired_comparison(lora, few)
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if " vs " in x]
    assert line.startswith("- lora × sft vs few_shot × sft (best baseline), test json_fields over 32 paired "
                           f"examples: {expected.mean_difference:+.3g} (95% CI {expected.ci_low:+.3g} to "
                           f"{expected.ci_high:+.3g}, paired bootstrap, BCa), sign test p=")
    assert line.endswith(f"({expected.better} better, {expected.worse} worse, {expected.equal} equal): clear gain")
    assert out.index("| lora") < out.index(line) < out.index("skipped: 0")  # under the table
    assert main([str(root), "--format", "json"]) == 0
    (verdict,) = json.loads(capsys.readouterr().out)["verdicts"]
    assert verdict["candidate"] == {"method": "lora", "trainer": "sft"}
    assert verdict["baseline"] == {"method": "few_shot", "trainer": "sft"}
    assert verdict["split"] == "test" and verdict["metric"] == "json_fields" and verdict["verdict"] == "clear gain"
    assert verdict["mean_difference"] == pytest.approx(expected.mean_difference)
    assert (verdict["ci_low"], verdict["ci_high"]) == pytest.approx((expected.ci_low, expected.ci_high))
    assert verdict["sign_test_p"] == pytest.approx(expected.sign_test_p) and len(verdict["candidate_runs"]) == 2
    assert main([str(root), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "lora $\\times$ sft vs few\\_shot $\\times$ sft (best baseline), test json\\_fields" in tex
    assert tex.index("\\bottomrule") < tex.index("clear gain") < tex.index("\\end{table}")
    assert main([str(root), "--format", "csv"]) == 0
    assert "best baseline" not in capsys.readouterr().out


def test_without_test_files_the_dev_files_are_compared(study, capsys):
    root, few, lora = study
    (root / "lora-2" / "generations-test.jsonl").rename(root / "lora-2" / "generations.jsonl")
    for name in ("few", "lora-1"):  # the others' dev files: an evaluation-only run's, a training run's
        (root / name / "generations-test.jsonl").rename(
            root / name / ("generations-eval.jsonl" if name == "few" else "generations.jsonl"))
    rows, meta = build_table(collect([root]).records, ["method", "trainer"])
    (verdict,) = add_verdicts(rows, meta, collect([root]))
    assert verdict["split"] == "dev" and verdict["line"].startswith("lora × sft vs few_shot × sft (best baseline), "
                                                                     "dev json_fields over 32 paired examples: ")
    assert verdict["mean_difference"] == pytest.approx(paired_comparison(lora, few).mean_difference)
    html = render(rows, meta, "html")
    assert html.index("</table>") < html.index("<li>lora × sft vs few_shot × sft (best baseline), dev json_fields")


def test_examples_that_do_not_pair_are_named_instead_of_a_verdict(study, capsys):
    root, few, _ = study
    write_generations(root / "few", few[:30], refs=REFS[:30])
    rows, meta = build_table(collect([root]).records, ["method", "trainer"])
    (verdict,) = add_verdicts(rows, meta, collect([root]))
    assert verdict["verdict"] is None and verdict["reason"] == "not paired: 32 vs 30 examples"
    assert verdict["line"] == ("lora × sft vs few_shot × sft (best baseline), test json_fields: "
                               "not paired: 32 vs 30 examples")
    write_generations(root / "few", few, refs=[*REFS[:5], "something else", *REFS[6:]])
    assert main([str(root)]) == 0
    assert "test json_fields: not paired: the references differ at example 6\n" in capsys.readouterr().out
    write_generations(root / "few", few, key="json_exact")  # scores without the dev metric's key
    (verdict,) = add_verdicts(rows, meta, collect([root]))
    assert verdict["reason"] == f"{root / 'few' / 'generations-test.jsonl'} has no per-example json_fields scores"


def test_without_a_baseline_row_nothing_changes(study, capsys):
    root, _, _ = study
    run(root / "zero", "zero_shot", 0.20)  # the same runs, with baseline: false
    run(root / "few", "few_shot", 0.45)
    assert main([str(root), "--format", "json"]) == 0
    assert "verdicts" not in json.loads(capsys.readouterr().out)
    assert main([str(root)]) == 0
    assert " vs " not in capsys.readouterr().out


def test_with_the_loss_as_dev_metric_the_verdict_compares_the_datas_generation_metric(tmp_path, capsys):
    """The loss has no per-example scores: the verdict takes data.metric's first key (json_fields), and the best
    baseline is the one best by that key on dev, not by the loss (zero_shot here has the lower loss)."""
    rng = np.random.default_rng(1)
    few = quarters(rng, N)
    lora = np.minimum(few + 0.25, 1)
    for name, method, loss, fields, scores in (("zero", "zero_shot", 1.0, 0.1, few * 0), ("few", "few_shot", 1.5, 0.4, few),
                                               ("lora", "lora", 0.5, 0.7, lora)):
        record = write_run(tmp_path / name, method=method, value=loss, metric="eval_loss")
        record.baseline = method != "lora"
        record.config["data"] = {"metric": "json_fields"}
        record.dev_metric.best_step = 0
        record.dev_metric.history = [{"step": 0, "value": loss, "metrics": {"eval_loss": loss, "eval_json_fields": fields}}]
        record.write(tmp_path / name)
        write_generations(tmp_path / name, scores)
    assert main([str(tmp_path)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if " vs " in x]
    expected = paired_comparison(lora, few)
    assert line.startswith("- lora × sft vs few_shot × sft (best baseline), test json_fields over 32 paired examples: "
                           f"{expected.mean_difference:+.3g}") and line.endswith(": clear gain")
    assert main([str(tmp_path), "--verdict-metric", "json_valid", "--format", "json"]) == 0
    (verdict,) = json.loads(capsys.readouterr().out)["verdicts"]
    assert verdict["metric"] == "json_valid" and verdict["verdict"] == "no clear gain"  # every json_valid is 1
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), "--verdict-metric", "bleu"])
    assert stop.value.code == 2
    assert "--verdict-metric bleu: not a per-example metric of these runs" in capsys.readouterr().err
