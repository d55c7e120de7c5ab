"""Several processes, one run: ``torchrun --nproc_per_node 2 -m sllmx`` on the gloo backend (model=tiny).

Marked ``multiprocess`` (select them alone with ``python -m pytest -m multiprocess``).  Each rank runs
with one torch thread; a rank-probe plugin (tests/fixtures/sllmx_rank_probe) saves what each rank
trained, so the ranks can be compared.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import ROOT

pytestmark = pytest.mark.multiprocess

PROBE = ROOT / "tests" / "fixtures" / "sllmx_rank_probe"
#: 6 steps of global batch 8 on 48 rows; the dev split (12 rows) in batches of 6, so that with 2 ranks each
#: rank evaluates one whole batch, the batch one process would evaluate (SFT's eval_loss is a mean of batch means)
TINY = ["model=tiny", "logger=none", "data=support_ko", "data.n_train=48", "data.n_dev=12", "data.n_test=6",
        "trainer.max_steps=6", "eval.eval_steps=3", "trainer.per_device_eval_batch_size=6", "trainer.logging_steps=2",
        "eval.max_new_tokens=8", "eval.early_stopping_patience=null", "trainer.precision=fp32"]


def torchrun() -> list[str]:
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun is not installed")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def probe_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("probe-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(PROBE)], check=True, capture_output=True)
    return site


def sllmx(tmp_path, launcher, *overrides, probe=None, site=None, cwd=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if probe is not None:
        probe.mkdir(parents=True, exist_ok=True)
        env.update(SLLMX_RANK_PROBE=str(probe), PYTHONPATH=os.pathsep.join(filter(None, [str(site),
                                                                                          env.get("PYTHONPATH")])))
    cmd = [*launcher, "-m", "sllmx", *TINY, f"cache_dir={tmp_path.parent / 'cache'}", *overrides]
    return subprocess.run(cmd, cwd=cwd or tmp_path, capture_output=True, text=True, timeout=timeout, env=env)


def one_process():
    return [sys.executable]


def history(record):
    return [(h["step"], h["value"]) for h in record["dev_metric"]["history"]]


def ranks(probe):
    import torch

    return [torch.load(probe / f"rank{r}.pt") for r in (0, 1)]


# DPO's case (~26 s) checks the same data-parallel path with a preference objective: -m slow runs it
@pytest.mark.parametrize("trainer", ["sft", pytest.param("dpo", marks=pytest.mark.slow)])
def test_two_processes_are_one_run_equal_to_one_process(tmp_path, probe_site, trainer):
    import torch

    objective = [f"trainer={trainer}"] + (["trainer.learning_rate=1e-3"] if trainer == "dpo" else [])
    single_dir = tmp_path / "single"
    single = sllmx(tmp_path, one_process(), *objective, "trainer.per_device_train_batch_size=8",
                   f"hydra.run.dir={single_dir}")
    assert single.returncode == 0, single.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    two = sllmx(tmp_path, torchrun(), *objective, "trainer.per_device_train_batch_size=4",
                probe=tmp_path / "probe", site=probe_site, cwd=work)
    assert two.returncode == 0, two.stderr[-3000:]

    # one run folder (Hydra's default, named by the main process's clock), written by the main process only
    assert [p.name for p in work.iterdir()] == ["outputs"]
    (run_dir,) = [p.parent for p in work.glob("outputs/*/*/run.json")]
    assert len(list(work.glob("outputs/*/*"))) == 1
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "data_check.json", "generations.jsonl", "model",
                                                          "run.json", "sllmx.log"]
    assert two.stdout.count("status: COMPLETE") == 1  # the main process speaks for the run
    record = json.loads((run_dir / "run.json").read_text())
    alone = json.loads((single_dir / "run.json").read_text())
    assert record["status"] == "COMPLETE" and record["world_size"] == 2 and record["backend"] == "gloo"
    assert record["global_batch_size"] == alone["global_batch_size"] == 8 and alone["world_size"] == 1
    assert record["precision"]["dtype"] == "fp32"

    # the same run as one process with the same global batch: dev loss at every evaluation, and train loss
    assert [s for s, _ in history(record)] == [s for s, _ in history(alone)] == [0, 3, 6]
    for (_, a), (_, b) in zip(history(record), history(alone)):
        assert a == pytest.approx(b, rel=1e-4)
    assert record["metrics"]["train_loss"] == pytest.approx(alone["metrics"]["train_loss"], rel=1e-4)
    assert record["train_tokens"] == alone["train_tokens"]  # every rank's tokens are counted

    # both ranks ended with the same trainable weights, the ones the main process saved
    r0, r1 = ranks(tmp_path / "probe")
    assert r0["event"] == r1["event"] == "train_end" and r0["step"] == r1["step"] == 6
    assert r0["weights"].keys() == r1["weights"].keys() and r0["weights"]
    for name in r0["weights"]:
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
    from safetensors.torch import load_file

    saved = load_file(run_dir / "model" / "adapter_model.safetensors")
    assert len(saved) == len(r0["weights"])
    for key, value in saved.items():
        match = [w for n, w in r0["weights"].items() if n.replace(".default", "") == key]
        assert match and torch.equal(match[0], value), key


@pytest.mark.slow  # a 2-process trial (~20 s); two processes as one run stays in the default suite
def test_a_pruned_trial_stops_every_rank_at_the_same_step(tmp_path, probe_site):
    import optuna

    from sllmx.study import PRUNER_ATTR

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.set_user_attr(PRUNER_ATTR, {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1})
    for i in range(3):  # finished trials whose dev loss no tiny model reaches
        t = study.ask()
        for step in (3, 6):
            t.report(0.1 - 0.01 * step, step)
        study.tell(t, 0.05)
    number = study.ask().number
    proc = sllmx(tmp_path, torchrun(), "trainer.per_device_train_batch_size=4", f"hydra.run.dir={tmp_path / 'run'}",
                 "trial.study_name=s", f"trial.storage={storage}", f"trial.number={number}",
                 probe=tmp_path / "probe", site=probe_site, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "PRUNED" and "pruned at step 3" in record["pruned"]
    assert record["global_steps"] == 3 and record["world_size"] == 2
    r0, r1 = ranks(tmp_path / "probe")
    # the probe's callbacks come after the trial reporter: the last thing both ranks did was step 3
    assert r0["step"] == r1["step"] == 3 and r0["evaluated"] == r1["evaluated"] == [0]
    trial = optuna.load_study(study_name="s", storage=storage).trials[number]
    assert trial.intermediate_values == {3: pytest.approx(record["dev_metric"]["final"])}  # reported once


def test_bad_input_stops_every_rank_with_one_line(tmp_path):
    import optuna

    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    # lines: one per rank once the process group exists; found before it (by every rank alike), rank 0's alone
    for overrides, message, lines in [
            (["trainer.precision=fp16"], "trainer.precision=fp16 needs a CUDA GPU", 2),
            (["--multirun"], "--multirun under a launcher of 2 processes", 1),
            (["+trainer.args.fsdp=full_shard"], "data.metric=json_fields with FSDP: each rank holds a shard", 2),
            # found by the main process alone (only it opens the trial's storage), then sent to the other rank
            (["trial.study_name=s", f"trial.storage=sqlite:///{tmp_path / 'optuna.db'}", "trial.number=3"],
             "trial.number=3: no such trial in study s", 2)]:
        proc = sllmx(tmp_path, torchrun(), *overrides, f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("sllmx: error: ")]
        assert len(errors) == lines and all(message in line for line in errors), proc.stderr[-3000:]
        assert "exitcode  : 2" in proc.stderr  # torchrun's report of its workers (torchrun itself exits 1)
        assert "/sllmx/" not in proc.stderr  # no traceback through sllmx (torchrun prints its own)
        assert not (tmp_path / "run" / "run.json").exists() and not (tmp_path / "multirun").exists()
