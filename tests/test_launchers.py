"""Sweeps whose trials run in other processes through Hydra's launchers: submitit (its local executor,
the code path of submitit_slurm) and Ray (a local Ray instance), each with pruning and with a kill and a
rerun; and a trial that is itself a 2-process run (hydra/launcher=submitit_local_ddp).

Marked ``multiprocess`` (``python -m pytest -m multiprocess``).  Each test skips when its launcher is
not installed (``pip install 'sllmx[submitit]'`` / ``'sllmx[ray]'``).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_sweep import TINY, run_json, sweep_json

# a sweep per test, each trial its own process (2 minutes together on 2 cores): under -m slow to keep the default
# suite short; the joblib launcher (tests/test_sweep.py) keeps a multi-process sweep in it
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

#: a seeded grid of 6 learning rates, 2 trials at a time: the seeded grid gives the first batch 1e-2 and 3e-2,
#: which set the bar, and the percentile pruner at 0 (with 2 start-up trials) stops the tiny rates that
#: follow (3e-7 and 1e-7, then 1e-6 and 2e-6) at their first report
SWEEP = ["trainer.learning_rate=choice(1e-6, 3e-7, 3e-2, 1e-7, 2e-6, 1e-2)", "hydra/sweeper/sampler=grid",
         "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2", "hydra/sweeper/pruner=percentile",
         "hydra.sweeper.pruner.percentile=0", "hydra.sweeper.pruner.n_startup_trials=2",
         "hydra.sweeper.heartbeat_interval=1"]
LAUNCHERS = {
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", ["hydra/launcher=submitit_local"]),
    "ray": ("hydra_plugins.hydra_ray_launcher", ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                                                 "+hydra.launcher.ray.init.include_dashboard=false"]),
}


def command(tmp_path, *overrides):
    return [sys.executable, "-m", "sllmx", "--multirun", *TINY, f"cache_dir={tmp_path.parent / 'cache'}", *overrides]


def kill_tree(pid):
    """SIGKILL a process and everything it started (submitit's job processes, Ray's workers and servers)."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = parent.children(recursive=True) + [parent]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def runs(tmp_path):
    return {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("multirun/*/[0-9]*/run.json")}


# Ray's case is slow (a Ray cluster starts: ~40 s) and checks the same loop as submitit's: -m slow runs it
@pytest.mark.parametrize("launcher", [pytest.param(name, marks=pytest.mark.slow) if name == "ray" else name
                                      for name in LAUNCHERS])
def test_a_sweep_on_a_launcher_prunes_and_resumes_after_a_kill(tmp_path, launcher):
    module, overrides = LAUNCHERS[launcher]
    pytest.importorskip(module)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command(tmp_path, *overrides, *SWEEP), cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while time.time() < deadline:  # kill while the second batch trains, after the first one finished
            done = runs(tmp_path)
            finished = [n for n, r in done.items() if r["status"] in ("COMPLETE", "PRUNED")]
            if len(finished) >= 2 and any(r["status"] == "RUNNING" for r in done.values()):
                break
            if first.poll() is not None:
                pytest.fail(f"the sweep ended before it could be killed (exit {first.returncode})")
            time.sleep(0.2)
        else:
            pytest.fail("the sweep never reached its second batch")
    finally:
        kill_tree(first.pid)
    before = {n: r for n, r in runs(tmp_path).items() if r["status"] in ("COMPLETE", "PRUNED")}

    again = subprocess.Popen(command(tmp_path, *overrides, *SWEEP), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = again.communicate(timeout=900)
    finally:
        kill_tree(again.pid)  # Ray's servers, if the sweep left them
    assert again.returncode == 0, stderr[-3000:]
    doc = sweep_json(tmp_path)
    assert doc["counts"]["COMPLETE"] + doc["counts"]["PRUNED"] == 6, doc["counts"]  # sweep.json complete
    assert doc["counts"]["PRUNED"] >= 1 and doc["counts"]["COMPLETE"] >= 2
    for name, record in before.items():  # no finished trial was run again
        assert runs(tmp_path)[name] == record
    killed = [t for t in doc["trials"] if t["state"] == "FAIL"]
    assert killed and all("stale heartbeat" in t["error"] for t in killed)
    retried = {t["retry_of"] for t in doc["trials"] if t["retry_of"] is not None}
    assert retried == {t["number"] for t in killed}
    records = {t["number"]: run_json(t) for t in doc["trials"] if t["state"] != "FAIL"}
    for t in doc["trials"]:
        if t["state"] == "FAIL":
            continue
        record = records[t["number"]]
        assert record["status"] == t["state"] and record["trial"]["number"] == t["number"]
        if t["state"] == "PRUNED":
            assert "pruned at step" in record["pruned"] and record["global_steps"] < 12
    pids = {r["pid"] for r in records.values()}
    assert len(pids) >= 2 and again.pid not in pids  # the launcher's processes ran the trials, not the sweeper
    # (submitit starts a process per trial; Ray reuses its worker processes for later tasks)


def test_a_trial_can_be_a_two_process_run(tmp_path):
    """hydra/launcher=submitit_local_ddp: each trial is a job of 2 tasks that sllmx joins into one DDP run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = subprocess.run(command(tmp_path, "hydra/launcher=submitit_local_ddp",
                                  # the seeded grid runs 1e-2 first; 1e-7 is then pruned at its first report
                                  "trainer.learning_rate=choice(1e-7, 1e-2)", "hydra/sweeper/sampler=grid",
                                  "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=percentile",
                                  "hydra.sweeper.pruner.percentile=0",
                                  "hydra.sweeper.pruner.n_startup_trials=1",
                                  "trainer.per_device_train_batch_size=2"),
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = sweep_json(tmp_path)
    assert sorted(t["state"] for t in doc["trials"]) == ["COMPLETE", "PRUNED"]
    for t in doc["trials"]:
        record = run_json(t)
        assert record["world_size"] == 2 and record["backend"] == "gloo" and record["global_batch_size"] == 4
        assert record["status"] == t["state"]
        if t["state"] == "PRUNED":  # reported once, by rank 0; both tasks stopped (the job returned)
            assert list(t["intermediate_values"]) == ["3"] and record["global_steps"] == 3
