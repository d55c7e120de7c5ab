"""A third-party package adds a method with zero changes to sllmx: installed from tests/fixtures, then used."""

import json
import os
import subprocess
import sys

from tests.common import FAST, ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "sllmx_ia3_plugin"


def test_installed_plugin_is_listed_and_its_method_runs(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(FIXTURE)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}

    listing = subprocess.run([sys.executable, "-m", "sllmx.plugins"], env=env, capture_output=True, text=True,
                             check=True).stdout
    row = next(line.split() for line in listing.splitlines() if line.split()[:2] == ["method", "ia3"])
    assert row[2:4] == ["sllmx-ia3-plugin", "0.0.1"]

    help_text = subprocess.run([sys.executable, "-m", "sllmx", "--help"], env=env, cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert "ia3" in help_text

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "sllmx", *FAST, "method=ia3", "trainer.learning_rate=0.01",
                           f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}"],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "COMPLETE" and record["method"] == "ia3"
    assert record["config"]["method"]["target_modules"] == ["k_proj", "v_proj", "down_proj"]
    assert 0 < record["trainable_params"] < record["total_params"]
    adapter = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "IA3"
