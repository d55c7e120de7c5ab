"""sllmx.runtime in one process: the precision decision, the launch checks, and the rank helpers."""

import subprocess
import sys

import pytest

from sllmx import runtime
from sllmx.errors import SllmxError
from sllmx.launch import check_launch
from sllmx.runtime import Runtime, decide_precision, gather, map_batches


@pytest.mark.parametrize("flags, requested, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, "auto", ("bf16", "native bf16 (avx512_bf16)")),
    ({"avx2", "amx_bf16", "amx_tile"}, "auto", ("bf16", "native bf16 (amx_bf16)")),
    ({"avx2"}, "auto", ("fp32", "no native bf16")),
    ({"avx2", "avx512f"}, "auto", ("fp32", "no native bf16")),
    ({"avx2", "avx512f"}, "bf16", ("bf16", "emulated")),
    ({"avx2", "avx512_bf16"}, "fp32", ("fp32", "trainer.precision=fp32")),
])
def test_precision_follows_the_cpu_flags(monkeypatch, flags, requested, expected):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(flags))
    chosen, reason = decide_precision(requested, "cpu")
    assert chosen == expected[0] and expected[1] in reason


@pytest.mark.parametrize("flags, requested, message", [
    ({"avx2"}, "bf16", "neither native bf16"),
    ({"avx2", "avx512_bf16"}, "fp16", "needs a CUDA GPU"),
    ({"avx2"}, "half", "trainer.precision=half: use one of auto, fp32, bf16, fp16"),
])
def test_precisions_that_cannot_run_are_refused(monkeypatch, flags, requested, message):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(flags))
    with pytest.raises(SllmxError, match=message):
        decide_precision(requested, "cpu")


def test_this_machines_flags_are_read():
    flags = runtime.cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    chosen, reason = decide_precision("auto", "cpu")
    assert chosen == ("bf16" if flags & set(runtime.CPU_BF16_FLAGS) else "fp32"), reason


def test_one_process_helpers_need_no_process_group():
    one = Runtime()
    assert one.is_main and one.world_size == 1 and one.accelerator == "cpu"
    assert map_batches(lambda batch: [x * 10 for x in batch], list(range(7)), 3, one) == [0, 10, 20, 30, 40, 50, 60]
    assert map_batches(lambda batch: batch, [], 4, one) == []
    assert gather(1.5, one) == [1.5]
    assert Runtime(device="cuda:1", precision="bf16").accelerator == "cuda"
    assert Runtime(precision="bf16").record() == {"dtype": "bf16", "reason": ""}


def test_map_batches_deals_batches_to_ranks(monkeypatch):
    """What rank 1 of 2 computes: every second batch, each the batch one process would compute."""
    seen = []
    rank1 = Runtime(world_size=2, rank=1)
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: [(0, ["a", "b"]), (4, ["e"])] + mine)
    out = map_batches(lambda batch: seen.append(list(batch)) or [x.upper() for x in batch], list("abcde"), 2, rank1)
    assert seen == [["c", "d"]]  # batch 1 of [ab, cd, e]
    assert out == ["a", "b", "C", "D", "e"]


def test_non_main_ranks_get_overrides_that_write_nothing(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    argv = check_launch(["model=tiny", "hydra.run.dir=/tmp/x"])
    assert argv == ["model=tiny", "hydra.run.dir=/tmp/x", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    monkeypatch.setenv("RANK", "0")
    assert check_launch(["model=tiny"]) == ["model=tiny"]
    with pytest.raises(SllmxError, match="--multirun under a launcher of 2 processes"):
        check_launch(["--multirun", "sweep=sft_lora"])


def test_a_launcher_that_is_not_installed_is_refused(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_ray") else real(name, *a))
    with pytest.raises(SllmxError, match=r"hydra/launcher=ray is not installed; pip install 'sllmx\[ray\]'"):
        check_launch(["--multirun", "hydra/launcher=ray"])
    assert check_launch(["hydra/launcher=basic"]) == ["hydra/launcher=basic"]


def test_the_command_line_refuses_a_missing_launcher_in_one_line(tmp_path):
    """End to end, with the Ray launcher's module hidden from this interpreter."""
    code = ("import sys, importlib.util as u; real = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n == 'hydra_plugins.hydra_ray_launcher' else real(n, *a); "
            "sys.argv = ['sllmx', '--multirun', 'model=tiny', 'hydra/launcher=ray', 'seed=1,2']; "
            "from sllmx.__main__ import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sllmx: error: hydra/launcher=ray is not installed; pip install 'sllmx[ray]'"]
    assert not (tmp_path / "multirun").exists()
