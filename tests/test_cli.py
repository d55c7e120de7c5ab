"""``python -m sllmx`` as a user runs it: Hydra's help, config printing, overrides, errors, a run."""

import json
import os
import subprocess
import sys

import pytest

from tests.common import FAST, FAST_RUN, ROOT


def sllmx(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "sllmx", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_help_lists_groups_and_plugin_options():
    proc = sllmx("--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for group, options in {"method": ["lora", "qlora", "dora", "prompt_tuning", "full"],
                           "trainer": ["sft", "dpo", "orpo", "kto"],
                           "model": ["tiny", "smollm2-135m"], "data": ["support_ko"],
                           "logger": ["wandb", "none"]}.items():
        assert f"{group}:" in out
        for option in options:
            assert option in out, (group, option)


def test_cfg_job_prints_the_composed_config_with_overrides():
    proc = sllmx("method=qlora", "trainer=dpo", "method.r=4", "trainer.beta=0.3", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "name: qlora" in proc.stdout and "r: 4" in proc.stdout
    assert "bnb_4bit_quant_type: nf4" in proc.stdout and "beta: 0.3" in proc.stdout


def test_unknown_option_gets_hydras_error_listing_the_available_ones():
    proc = sllmx("method=nope", "--cfg", "job")
    assert proc.returncode != 0
    assert "Could not find 'method/nope'" in proc.stderr
    assert "lora" in proc.stderr and "qlora" in proc.stderr


def test_unknown_key_fails_fast():
    proc = sllmx("method.rank=8", "--cfg", "job")
    assert proc.returncode != 0
    assert "rank" in proc.stderr


def test_bad_data_is_one_clear_message_and_nothing_written(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "ok"}\n{"prompt": "x", \n')
    run_dir = tmp_path / "run"
    proc = sllmx(*FAST_RUN, "data=files", f"data.path={bad}", "data.format=prompt_completion",
                 f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    msg = [line for line in proc.stderr.splitlines() if line.startswith("sllmx: error:")]
    assert len(msg) == 1 and str(bad) in msg[0] and "line 2" in msg[0]
    assert not (run_dir / "run.json").exists()


def test_incompatible_data_for_trainer_is_refused_before_loading(tmp_path):
    good = tmp_path / "sft.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(10)))
    proc = sllmx(*FAST_RUN, "trainer=dpo", "data=files", f"data.path={good}", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2
    assert "dpo" in proc.stderr and "chosen" in proc.stderr and "Traceback" not in proc.stderr


def test_a_run_from_the_command_line_writes_run_json(tmp_path):
    run_dir = tmp_path / "run"
    proc = sllmx(*FAST, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}", "seed=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dev metric eval_loss (lower is better; selects the checkpoint): before" in proc.stdout
    assert "task metric json_fields on the dev split (higher is better)" in proc.stdout
    assert "{'loss'" not in proc.stdout and "{'eval_loss'" not in proc.stdout  # no raw dicts
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "COMPLETE" and record["seed"] == 3
    assert record["schema_version"] == 4 and record["baseline"] is False and record["prompting"] == {}
    assert record["defaults"]["trainer.learning_rate"] == {"value": 1e-3, "source": record["defaults"][
        "trainer.learning_rate"]["source"]} and record["defaults"]["trainer.learning_rate"]["source"].startswith(
        "sft × adapter: measured on SmolLM2-135M")  # method-aware default, recorded with its source
    assert record["dev_metric"]["best"] is not None
    assert record["data"]["splits"]["train"]["sha256"]
    assert record["versions"]["trl"] and record["config"]["method"]["name"] == "lora"
    # the same directory again: refused, nothing overwritten
    again = sllmx(*FAST, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert json.loads((run_dir / "run.json").read_text()) == record


def test_multirun_with_the_basic_sweeper(tmp_path):
    proc = sllmx("--multirun", *FAST, "seed=1,2", f"hydra.sweep.dir={tmp_path}",
                 f"cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((tmp_path / job / "run.json").read_text())["status"] == "COMPLETE"


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]])
def test_fast_paths_do_not_import_torch(args):
    code = ("import sys, runpy; sys.argv=['sllmx', *%r]\n"
            "try:\n    runpy.run_module('sllmx', run_name='__main__')\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'trl' not in sys.modules, 'heavy import'\n") % (args,)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dpo_loss_type_ipo_composes_as_trls_list():
    proc = sllmx("trainer=dpo", "trainer.loss_type=[ipo]", "trainer.beta=0.05", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "loss_type:\n  - ipo" in proc.stdout and "beta: 0.05" in proc.stdout
