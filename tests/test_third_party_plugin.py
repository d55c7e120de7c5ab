"""A third-party package does what a built-in does, with zero changes to sllmx: the example plugin of
docs/plugins.md (examples/sllmx-example-plugin: a method that needs the tokenizer, a metric with its own
input, a logger) is installed into a temporary folder, listed, and used in one tiny run."""

import json
import os
import subprocess
import sys

from tests.common import FAST, ROOT

EXAMPLE = ROOT / "examples" / "sllmx-example-plugin"


def test_the_example_plugin_is_listed_and_its_method_metric_and_logger_run(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(EXAMPLE)], check=True, capture_output=True)
    # beside it, a plugin whose observer hooks raise: warning lines, and the run's status and exit code stay
    info = site / "faulty_observer-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-observer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sllmx]\nfaulty = faulty_observer\n")
    (site / "faulty_observer.py").write_text(
        "from sllmx import hookimpl\n"
        "@hookimpl\ndef sllmx_after_evaluate(run, metrics):\n    raise ValueError(f'step {run.step}')\n"
        "@hookimpl\ndef sllmx_after_run(record):\n    raise RuntimeError(record.status)\n")
    env = {**os.environ, "PYTHONPATH": str(site)}

    listing = subprocess.run([sys.executable, "-m", "sllmx.plugins"], env=env, capture_output=True, text=True,
                             check=True).stdout
    rows = {tuple(line.split()[:2]): line.split()[2:4] for line in listing.splitlines()}
    for kind, name in (("method", "ln_tuning"), ("metric", "answer_logprob"), ("logger", "jsonl")):
        assert rows[(kind, name)] == ["sllmx-example-plugin", "0.1.0"], (kind, name)

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "sllmx", *FAST, "method=ln_tuning", "data.metric=answer_logprob",
                           "logger=jsonl", "save_model=false", f"hydra.run.dir={run_dir}",
                           f"cache_dir={tmp_path / 'cache'}"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ln_tuning: tokenizer TokenizersBackend with" in proc.stdout + proc.stderr  # wrap() was given the tokenizer
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("sllmx: warning: plugin faulty-observer")]
    assert warnings == [*(f"sllmx: warning: plugin faulty-observer: sllmx_after_evaluate raised ValueError: step {n}"
                          for n in (0, 2, 4)),
                        "sllmx: warning: plugin faulty-observer: sllmx_after_run raised RuntimeError: COMPLETE"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "COMPLETE" and record["method"] == "ln_tuning"
    assert record["config"]["method"]["target_modules"] == ["input_layernorm", "post_attention_layernorm"]
    # the adapter family's default (a method that declares no family is an adapter), recorded as such
    assert record["config"]["trainer"]["learning_rate"] == record["defaults"]["trainer.learning_rate"]["value"] == 1e-3
    assert 0 < record["trainable_params"] < record["total_params"]
    history = record["dev_metric"]["history"]
    assert len(history) == 3 and all(h["metrics"]["eval_answer_logprob"] < 0 for h in history)
    assert all("eval_perplexity" in h["metrics"] for h in history)  # the built-in metric computed from the loss
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["tokens"] > 0

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"start": "ln_tuning", "trainer": "sft"} and lines[-1]["status"] == "COMPLETE"
    evaluations = [x for x in lines if "eval_loss" in x]
    assert [x["step"] for x in evaluations] == [0, 2, 4]
    assert all(x["eval_answer_logprob"] == h["metrics"]["eval_answer_logprob"] for x, h in zip(evaluations, history))
    assert any("loss" in x and "learning_rate" in x for x in lines)  # the training logs
