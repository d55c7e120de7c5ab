"""benchmarks/gpu.py (GPU readiness): its FLOPs count and peaks, and what it does without a GPU."""

import importlib.util
import subprocess
import sys

import pytest

from common import ROOT


def _load_gpu_benchmark():
    """benchmarks/gpu.py, which imports benchmarks/common.py as ``common`` (tests have a ``common`` too)."""
    tests_common = sys.modules.pop("common", None)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("common", None)
        if tests_common is not None:
            sys.modules["common"] = tests_common


gpu = _load_gpu_benchmark()


def test_lora_flops_per_token_by_hand():
    # SmolLM2-135M with LoRA r=16 on all linear layers (4,884,480 adapter weights), tied head, 100-token rows:
    # forward + activation gradients 4 x 139,399,488 = 557,597,952; adapter weight gradients 9,768,960;
    # attention 12 x 30 layers x 576 x 100 = 20,736,000
    assert gpu.lora_flops_per_token(139_399_488, 0, 4_884_480, 30, 576, 100) == 588_102_912
    # an untied input embedding (a lookup) does no FLOPs: 4 x 28,311,552 fewer
    assert gpu.lora_flops_per_token(139_399_488, 28_311_552, 4_884_480, 30, 576, 100) == 474_856_704


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989.4), ("NVIDIA H100 80GB HBM3", 989.4),
                                        ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA L40S", 362.05), ("NVIDIA L4", 121.0), ("Tesla T4", None)])
def test_peaks_are_looked_up_by_the_longest_name(name, peak):
    assert gpu.peak_tflops(name) == peak


def test_without_a_gpu_it_measures_nothing_and_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 1
    assert "no CUDA device here; nothing measured" in proc.stderr
