"""Resume and honest ends: a killed run continues from its last checkpoint with the same result; SIGINT,
SIGTERM, a non-finite loss and a full disk each leave a record that tells the truth; a refused run touches
nothing in an existing folder; the console shows a bar and readable evaluation lines."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from sllmx import hookimpl
from sllmx.plugins import registry
from sllmx.run import run
from tests.common import ROOT, compose_config

#: 24 steps of the tiny model over 3 epochs of 64 rows, a dev evaluation and a checkpoint every 4 steps
RUN = ["model=tiny", "logger=none", "trainer.max_steps=24", "eval.eval_steps=4", "trainer.logging_steps=3",
       "data.n_train=64", "data.n_dev=8", "data.n_test=8", "eval.max_new_tokens=8", "trainer.precision=fp32",
       "eval.early_stopping_patience=null"]


def sllmx(*args, cwd=ROOT, **kw):
    """``python -m sllmx ARGS`` as a child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "sllmx", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def stop_at_checkpoint(proc, run_dir: Path, step: int, sig: int) -> None:
    """Send ``sig`` once ``checkpoint-<step>`` is complete (its trainer_state.json written)."""
    mark = run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.time() + 240
    while not mark.exists():
        assert proc.poll() is None, f"the run ended before checkpoint-{step}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no checkpoint in 240 s"
        time.sleep(0.02)
    proc.send_signal(sig)


def history(run_dir: Path) -> list[tuple[int, float]]:
    record = json.loads((run_dir / "run.json").read_text())
    return [(h["step"], h["value"]) for h in record["dev_metric"]["history"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    rc, out, err = finish(sllmx(*RUN, f"hydra.run.dir={run_dir}"))
    assert rc == 0, err[-2000:]
    return run_dir


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = sllmx(*RUN, f"hydra.run.dir={run_dir}")
    stop_at_checkpoint(proc, run_dir, 8, signal.SIGKILL)
    proc.wait(timeout=60)
    killed = json.loads((run_dir / "run.json").read_text())
    assert killed["status"] == "RUNNING"  # what a kill -9 leaves: the evaluations so far are in it
    assert [h["step"] for h in killed["dev_metric"]["history"]][:3] == [0, 4, 8]

    # the same command is refused, and says how to continue
    rc, _, err = finish(sllmx(*RUN, f"hydra.run.dir={run_dir}"))
    assert rc == 2 and f"resume={run_dir}" in err and "Traceback" not in err

    rc, out, err = finish(sllmx(f"resume={run_dir}"))  # the run's own overrides come from .hydra/
    assert rc == 0, err[-2000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "COMPLETE" and record["global_steps"] == 24
    resumed = record["resumed"][0]
    assert resumed["previous_status"] == "RUNNING" and resumed["step"] >= 8
    assert resumed["checkpoint"] == f"checkpoints/checkpoint-{resumed['step']}"
    # data order, RNG, optimizer and scheduler restored: every dev evaluation equals the uninterrupted run's
    assert history(run_dir) == history(uninterrupted)
    whole = json.loads((uninterrupted / "run.json").read_text())
    assert record["metrics"]["train_loss"] == pytest.approx(whole["metrics"]["train_loss"], rel=1e-6)
    assert not (run_dir / "checkpoints").exists()


def test_sigterm_records_interrupted_keeps_a_checkpoint_and_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = sllmx(*RUN, f"hydra.run.dir={run_dir}")
    stop_at_checkpoint(proc, run_dir, 4, signal.SIGTERM)
    rc, out, err = finish(proc)
    assert rc == 128 + signal.SIGTERM
    record = json.loads((run_dir / "run.json").read_text())
    step = record["global_steps"]
    assert record["status"] == "INTERRUPTED" and record["error"] == f"SIGTERM at step {step}"
    assert record["dev_metric"]["best"] is not None  # the best dev metric so far
    assert (run_dir / "checkpoints" / f"checkpoint-{step}" / "optimizer.pt").is_file()  # saved at the stop
    lines = [line for line in err.splitlines() if line.startswith("sllmx:")]
    assert lines == [f"sllmx: SIGTERM: run stopped at step {step}; {run_dir}/run.json says INTERRUPTED; "
                     f"continue it with: python -m sllmx resume={run_dir}"]
    assert "Traceback" not in err

    rc, out, err = finish(sllmx(f"resume={run_dir}"))
    assert rc == 0, err[-2000:]
    assert history(run_dir) == history(uninterrupted)


def test_sigint_records_interrupted_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = sllmx(*RUN, f"hydra.run.dir={run_dir}")
    stop_at_checkpoint(proc, run_dir, 4, signal.SIGINT)
    rc, out, err = finish(proc)
    assert rc == 130 and "Traceback" not in err
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "INTERRUPTED" and record["error"].startswith("SIGINT at step ")
    assert [line for line in err.splitlines() if line.startswith("sllmx:")][0].startswith("sllmx: SIGINT: run stopped")


class NaNAt:
    """A plugin that puts a NaN into a trainable weight before step ``step``."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def sllmx_callbacks(self, run):
        step = self.step

        class Poison(TrainerCallback):
            def on_step_begin(self, args, state, control, model=None, **kwargs):
                if state.global_step + 1 == step:
                    import torch

                    weight = next(p for p in model.parameters() if p.requires_grad)
                    with torch.no_grad():
                        weight.view(-1)[0] = float("nan")

        return [Poison()]


def test_a_non_finite_loss_stops_training_at_its_step(tmp_path):
    plugin = NaNAt(step=7)
    registry().pm.register(plugin)
    try:
        cfg = compose_config([*RUN, "trainer.max_steps=40"], tmp_path / "run", tmp_path / "cache")
        with pytest.raises(FloatingPointError, match="not finite at step 7"):
            run(cfg)
    finally:
        registry().pm.unregister(plugin)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "FAIL" and record["global_steps"] == 6
    assert record["error"] == "FloatingPointError: loss or gradients not finite at step 7"
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-4").is_dir()  # the last good state, for resume=


@pytest.fixture
def small_disk(tmp_path):
    """A 1.6 MiB tmpfs: room for run.json and the data report, not for the checkpoints."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_ends_with_one_line_and_a_fail_record(small_disk):
    run_dir = small_disk / "run"
    rc, out, err = finish(sllmx(*RUN, f"hydra.run.dir={run_dir}"))
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"sllmx: error: no space left on device under {run_dir}")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "FAIL" and "No space left on device" in record["error"]
    assert not (run_dir / ".run.json.reserve").exists()


def test_a_refused_run_touches_nothing_in_the_existing_folder(uninterrupted):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in uninterrupted.rglob("*") if p.is_file()}
    rc, _, err = finish(sllmx(*RUN, "trainer.learning_rate=1e-3", f"hydra.run.dir={uninterrupted}"))
    assert rc == 2 and "already exists" in err and "Traceback" not in err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in uninterrupted.rglob("*") if p.is_file()}
    assert after == before  # .hydra/config.yaml and overrides.yaml included


def test_resume_refuses_a_finished_run_and_a_changed_config(tmp_path, uninterrupted):
    rc, _, err = finish(sllmx(f"resume={uninterrupted}"))
    assert rc == 2 and "the run's status is COMPLETE" in err
    record = json.loads((uninterrupted / "run.json").read_text())
    unfinished = tmp_path / "run"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "overrides.yaml").write_text((uninterrupted / ".hydra" / "overrides.yaml").read_text())
    (unfinished / "run.json").write_text(json.dumps({**record, "status": "FAIL", "pid": None}))
    rc, _, err = finish(sllmx(f"resume={unfinished}", "trainer.learning_rate=0.01"))
    assert rc == 2 and "trainer.learning_rate: 0.001 in the run, 0.01 now" in err
    assert json.loads((unfinished / "run.json").read_text())["status"] == "FAIL"  # untouched


def test_resume_auto_finds_the_unfinished_run_with_the_same_overrides(tmp_path):
    from sllmx.resume import find_unfinished, prepare_argv

    runs = tmp_path / "outputs" / "2026-12-02"
    # as Hydra stores them: resume=auto among the overrides
    for name, status, overrides in (("10-00-00-lora-sft", "FAIL", ["model=tiny", "resume=auto"]),
                                    ("11-00-00-lora-sft", "COMPLETE", ["model=tiny", "resume=auto"]),
                                    ("12-00-00-lora-sft", "INTERRUPTED", ["model=tiny", "seed=2", "resume=auto"])):
        (runs / name / ".hydra").mkdir(parents=True)
        (runs / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (runs / name / "run.json").write_text(json.dumps({"status": status}))
    assert find_unfinished(tmp_path / "outputs", ["model=tiny"]) == runs / "10-00-00-lora-sft"
    assert find_unfinished(tmp_path / "outputs", ["model=tiny", "seed=2"]) == runs / "12-00-00-lora-sft"
    assert find_unfinished(tmp_path / "outputs", ["model=tiny", "seed=3"]) is None
    target = runs / "10-00-00-lora-sft"
    assert prepare_argv([f"resume={target}", "logger=none"]) == [
        "model=tiny", f"resume={target}", "logger=none", f"hydra.run.dir={target}", "hydra.output_subdir=null"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # the same command again, as a requeued job would run it
        assert prepare_argv(["model=tiny", "resume=auto"]) == [
            "model=tiny", f"resume={Path('outputs/2026-12-02/10-00-00-lora-sft')}",
            "hydra.run.dir=outputs/2026-12-02/10-00-00-lora-sft", "hydra.output_subdir=null"]
    finally:
        os.chdir(cwd)


def test_a_model_directory_with_remote_code_or_pickled_weights_is_refused_before_loading(tmp_path):
    from omegaconf import OmegaConf

    source = registry().get("model", "hf")
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    cfg = OmegaConf.create({"source": "hf", "name_or_path": str(tmp_path), "trust_remote_code": False,
                            "revision": None})
    assert "needs its own code (model_type None, AutoModelForCausalLM in config.json auto_map)" in source.check(cfg)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3", "auto_map": {"AutoConfig": "x.Y"}}))
    assert "pickle files" in source.check(cfg)  # a built-in model_type: transformers' own code, auto_map or not
    cfg.trust_remote_code = True
    assert "weights only as pickle files (pytorch_model.bin)" in source.check(cfg)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert source.check(cfg) is None


def test_the_console_shows_evaluation_lines_not_raw_dicts(uninterrupted):
    log = (uninterrupted / "sllmx.log").read_text()
    lines = [line for line in log.splitlines() if "eval step" in line or "eval baseline" in line]
    assert len(lines) == 7  # the baseline and the evaluations at steps 4, 8, ..., 24
    assert "eval step 24/24: eval_loss " in lines[-1] and "(lower is better; best " in lines[-1]
    assert "{'loss'" not in log and "{'eval_loss'" not in log


def test_evaluation_line_formats_numbers_as_numbers():
    from sllmx.progress import evaluation_line
    from sllmx.records import DevMetric

    dev = DevMetric(name="eval_json_exact", higher_is_better=True)
    dev.add(20, {"eval_json_exact": 0.125})
    line = evaluation_line(20, 80, {"eval_json_exact": 0.125, "eval_loss": 0.90221234, "eval_runtime": 3.2,
                                    "eval_empty_answers": 0.0}, dev)
    assert line == ("eval step 20/80: eval_json_exact 0.125 (higher is better; best 0.125 at step 20) | "
                    "eval_empty_answers 0 | eval_loss 0.9022")


def test_a_diverged_run_ends_with_one_line_and_a_fail_record(tmp_path):
    run_dir = tmp_path / "run"
    rc, out, err = finish(sllmx(*RUN, "trainer.learning_rate=1e30", f"hydra.run.dir={run_dir}"))
    record = json.loads((run_dir / "run.json").read_text())
    assert rc == 1 and "Traceback" not in err
    step = record["global_steps"] + 1
    assert record["status"] == "FAIL" and record["error"] == (
        f"FloatingPointError: loss or gradients not finite at step {step}")
    assert err.strip().splitlines()[-1] == (f"sllmx: error: training diverged: loss or gradients not finite at step "
                                            f"{step}; {run_dir}/run.json records FAIL (a lower "
                                            f"trainer.learning_rate may help)")


def test_a_signal_a_library_swallows_still_ends_the_run_interrupted():
    """``datasets`` catches everything while it fingerprints a transform (bare ``except:``), so the Interrupted a
    SIGTERM raises there can vanish; GracefulStop.check raises it again (the runner calls it at train begin and
    when the work returns)."""
    import os
    import signal

    from sllmx.errors import Interrupted
    from sllmx.stops import GracefulStop

    with GracefulStop() as stop:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except:  # noqa: E722 - what datasets' fingerprinting does
            pass
        with pytest.raises(Interrupted) as err:
            stop.check()
    assert err.value.signal == "SIGTERM"
    with GracefulStop() as quiet:
        quiet.check()  # no signal: nothing raised
