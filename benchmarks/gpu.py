"""GPU readiness (issue 14): the speed workload on one CUDA device in bf16, with LoRA and with QLoRA.

    python benchmarks/gpu.py                         # LoRA and QLoRA, 40 steps each; benchmarks/results/gpu.json
    python benchmarks/gpu.py --only lora --steps 20 --peak-tflops 989.4
    python benchmarks/gpu.py --device cpu --steps 4  # the same pipeline on the CPU (a check of the script)

The workload is benchmarks/common.py's (SmolLM2-135M-Instruct, LoRA r=16 on all linear layers, batch 8,
512 Korean chat rows) with ``trainer.precision=bf16`` (QLoRA: NF4 weights, bf16 compute).  Each job is
one ``python -m sllmx`` run; its run.json gives the real (non-padding) training tokens per second
(without the dev evaluations), the peak GPU memory allocated by torch (``peak_gpu_bytes``) and the
parameter counts.

Model FLOPs utilisation (MFU; Chowdhery et al., 2022, "PaLM", appendix B) is the model FLOPs of the
tokens trained per second over the device's peak dense bf16 FLOP/s.  Per token, a LoRA step computes
the forward pass (2 N), the gradients of the activations through the frozen weights (2 N) and the
weight gradients of the trainable parameters only (2 N_trainable), plus attention 12 L d T (forward
and backward of QK^T and AV for a sequence of T tokens); N counts every weight that multiplies
activations: all parameters but an untied input embedding (a lookup); a tied embedding is the output
head and counts.  Full fine-tuning would be
PaLM's 6 N + 12 L d T.  The peak comes from ``--peak-tflops`` or, for the GPUs listed in PEAK_TFLOPS,
NVIDIA's data sheets; for another device MFU is left empty.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, measured, model_dir, save, table, write_workload  # noqa: E402

#: dense bf16 tensor-core peak, TFLOP/s (no sparsity), from NVIDIA's data sheets
PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4,  # "H100 80GB HBM3" is SXM5
               "A100": 312.0, "L40S": 362.05, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2}
JOBS = {"lora": ["method=lora"], "qlora": ["method=qlora"]}


def peak_tflops(device_name: str) -> Optional[float]:
    """The dense bf16 peak of a GPU from :data:`PEAK_TFLOPS` by name (longest match first), else None."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_TFLOPS[key]
    return None


def lora_flops_per_token(params: int, embedding_params: int, trainable: int, layers: int, hidden: int,
                         seq_len: float) -> float:
    """Model FLOPs of one trained token of a LoRA step (see the module docstring).

    Args:
        params: every parameter of the wrapped model (base + adapters).
        embedding_params: the parameters of an input embedding that is not tied to the output head
            (a lookup, no FLOPs); 0 with tied embeddings (that matrix is the head, counted once).
        trainable: the trainable (adapter) parameters.
        layers, hidden: decoder layers and model width (for the attention term).
        seq_len: tokens per sequence.
    """
    n = params - embedding_params
    return 4.0 * n + 2.0 * trainable + 12.0 * layers * hidden * seq_len


def model_shape(model_dir: str) -> dict[str, int]:
    """``{"layers", "hidden", "vocab", "tied"}`` of the model's config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    return {"layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"], "vocab": cfg["vocab_size"],
            "tied": int(bool(cfg.get("tie_word_embeddings", True)))}


def job(name: str, overrides: list[str], train: Path, dev: Path, work: Path, steps: int, device: str) -> dict[str, Any]:
    """One ``python -m sllmx`` run of the workload in bf16 (on the CPU: ``trainer.precision=auto``); the
    numbers from its run.json."""
    out = work / name
    precision = "bf16" if device == "cuda" else "auto"
    cmd = [sys.executable, "-m", "sllmx", "model=smollm2-135m", "data=files", f"data.path={train}", f"data.dev={dev}",
           "logger=none", "save_model=false", "eval.before_training=false", f"trainer.precision={precision}",
           f"trainer.max_steps={steps}", f"eval.eval_steps={steps}", "seed=0", f"hydra.run.dir={out}", *overrides]
    env = {"CUDA_VISIBLE_DEVICES": "0" if device == "cuda" else ""}
    m = measured(cmd, work / f"{name}.log", env=env, cwd=ROOT)
    rec = json.loads((out / "run.json").read_text())
    return {**m, "device": rec["device"], "precision": rec["precision"], "train_tokens": rec["train_tokens"],
            "tokens_per_s": rec["train_tokens_per_s"], "peak_gpu_bytes": rec["peak_gpu_bytes"],
            "peak_rss_bytes_run": rec["peak_rss_bytes"], "trainable_params": rec["trainable_params"],
            "total_params": rec["total_params"], "steps": rec["global_steps"],
            "global_batch_size": rec["global_batch_size"], "eval_loss": rec["dev_metric"]["final"],
            "overrides": overrides}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=list(JOBS), help="jobs to run (default: lora and qlora)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from PEAK_TFLOPS)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu runs the same pipeline on the CPU, to check the script where there is no GPU")
    p.add_argument("--name", default="gpu", help="results file: benchmarks/results/<name>.json")
    a = p.parse_args()
    import tempfile

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device here; nothing measured (--device cpu checks the script)")
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    peak = a.peak_tflops or (peak_tflops(name) if a.device == "cuda" else None)
    work = Path(tempfile.mkdtemp(prefix="sllmx-gpu-"))
    train, dev = write_workload(work / "data")
    shape = model_shape(model_dir())
    rows = []
    for jname in a.only or list(JOBS):
        print(f"== {jname} on {name}", flush=True)
        r = {"job": jname, **job(jname, JOBS[jname], train, dev, work, a.steps, a.device)}
        seq = r["train_tokens"] / max(1, r["steps"] * r["global_batch_size"])
        embedding = 0 if shape["tied"] else shape["vocab"] * shape["hidden"]
        flops = lora_flops_per_token(r["total_params"], embedding, r["trainable_params"], shape["layers"],
                                     shape["hidden"], seq)
        r.update(flops_per_token=flops, achieved_tflops=round(flops * r["tokens_per_s"] / 1e12, 3),
                 peak_tflops=peak, mfu=round(flops * r["tokens_per_s"] / (peak * 1e12), 4) if peak else None,
                 peak_gpu_gib=round(r["peak_gpu_bytes"] / 2**30, 2) if r["peak_gpu_bytes"] else None)
        print(json.dumps(r), flush=True)
        rows.append(r)
    print(table(rows, [("job", "job", "{}"), ("tokens_per_s", "real tokens/s", "{:.1f}"),
                       ("peak_gpu_gib", "peak GPU GiB", "{:.2f}"), ("achieved_tflops", "TFLOP/s", "{:.2f}"),
                       ("mfu", "MFU", "{:.2%}"), ("eval_loss", "dev loss", "{:.4f}")]))
    path = save(a.name, {"machine": {**machine(), "device": name}, "steps": a.steps,
                         "command": " ".join(["python", "benchmarks/gpu.py", *sys.argv[1:]]), "jobs": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
