"""Training throughput of sllmx against its peers on one CPU workload (issue 7).

    python benchmarks/throughput.py                  # every job below, one at a time (~30 min)
    python benchmarks/throughput.py --only sllmx trl # some of them
    python benchmarks/throughput.py --only trl sllmx-trl-settings sllmx --repeat 2   # interleaved, medians
    LF_VENV=/path/to/venv python benchmarks/throughput.py --only llamafactory

The workload is in benchmarks/common.py (SmolLM2-135M, LoRA r=16 all-linear, batch 8, fp32,
2 threads, 512 Korean chat rows as messages).  Each job trains ``--max-steps`` optimizer steps
and evaluates the dev set once at the end.  "real tokens/s" is non-padding training tokens
(``num_input_tokens_seen`` with ``non_padding``) over the training loop's time without the
dev evaluation; "wall s" is the whole process (imports, loading, data, training, evaluation).

Jobs:
  sllmx                 sllmx's defaults
  sllmx-trl-settings    sllmx set as the TRL script's defaults (checkpointing, token metrics,
                        random order, lora_dropout 0.05): the framework's own overhead
  sllmx-before          sllmx's defaults before issue 7 (no checkpointing; token metrics,
                        random order, lora_dropout 0.05), then one change at a time:
  sllmx-lean-loss       + the model's own loss on the full logits (trainer.token_metrics=false,
                        trainer.label_positions_only=false)
  sllmx-label-positions + the output head only at the label positions (label_positions_only=true)
  sllmx-no-dropout      + lora_dropout 0.0 (random order still)
  sllmx-fp32            sllmx's defaults in fp32 (trainer.precision=fp32)      \  issue 14: precision
  sllmx-bf16            sllmx's defaults in bf16 (trainer.precision=bf16)      /  on this CPU
  sllmx-fp32-avx512     fp32 with oneDNN limited to AVX-512 without its bf16 instructions
  sllmx-bf16-avx512     bf16 the same way: what bf16 costs on a CPU without native bf16
                        (ONEDNN_MAX_CPU_ISA=AVX512_CORE)
  sllmx-ddp2            fp32, 2 processes x 1 thread (torchrun, gloo), per-device batch 4: the same
                        global batch; against sllmx-fp32 (1 process x 2 threads)
  trl                   the hand-written TRL script (benchmarks/peers/trl_sft.py), TRL's defaults
  trl-sllmx-settings    the TRL script without checkpointing, grouped by length, lora_dropout 0
  llamafactory          LLaMA-Factory from its own venv (LF_VENV), its defaults
  llamafactory-no-gc    LLaMA-Factory with disable_gradient_checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, measured, model_dir, save, table, write_workload  # noqa: E402

TRL_DEFAULTS = ["trainer.gradient_checkpointing=true", "trainer.token_metrics=true",
                "trainer.train_sampling_strategy=random", "method.lora_dropout=0.05"]
BEFORE = ["trainer.token_metrics=true", "trainer.train_sampling_strategy=random", "method.lora_dropout=0.05"]
SLLMX_JOBS = {
    "sllmx": [],
    "sllmx-trl-settings": TRL_DEFAULTS,
    "sllmx-before": BEFORE,
    "sllmx-lean-loss": ["trainer.label_positions_only=false", "trainer.train_sampling_strategy=random",
                        "method.lora_dropout=0.05"],
    "sllmx-label-positions": ["trainer.train_sampling_strategy=random", "method.lora_dropout=0.05"],
    "sllmx-no-dropout": ["trainer.train_sampling_strategy=random"],
    "sllmx-fp32": ["trainer.precision=fp32"],
    "sllmx-bf16": ["trainer.precision=bf16"],
    "sllmx-fp32-avx512": ["trainer.precision=fp32"],
    "sllmx-bf16-avx512": ["trainer.precision=bf16"],
    "sllmx-ddp2": ["trainer.precision=fp32", "trainer.per_device_train_batch_size=4"],
}
#: environment of some jobs (oneDNN's instruction set: a CPU without native bf16)
JOB_ENV = {"sllmx-fp32-avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
           "sllmx-bf16-avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
           "sllmx-ddp2": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
#: jobs that run as several processes (torchrun)
JOB_PROCESSES = {"sllmx-ddp2": 2}
TRL_JOBS = {"trl": ["--lora-dropout", "0.05"],
            "trl-sllmx-settings": ["--lora-dropout", "0", "--no-gradient-checkpointing", "--group-by-length"]}
LF_JOBS = {"llamafactory": {}, "llamafactory-no-gc": {"disable_gradient_checkpointing": True}}
ORDER = ["sllmx", "sllmx-trl-settings", "trl", "trl-sllmx-settings", "sllmx-before", "sllmx-lean-loss",
         "sllmx-label-positions", "sllmx-no-dropout", "llamafactory", "llamafactory-no-gc",
         "sllmx-fp32", "sllmx-bf16", "sllmx-fp32-avx512", "sllmx-bf16-avx512", "sllmx-ddp2"]


def sllmx_job(name: str, extra: list[str], train: Path, dev: Path, work: Path, steps: int, seed: int,
              env: Optional[dict[str, str]] = None, processes: int = 1) -> dict:
    """One ``python -m sllmx`` run (under torchrun with ``processes`` > 1); numbers from its run.json
    (with several processes, peak RSS is the main process's, from run.json)."""
    out = work / name
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    cmd = [*launcher, "-m", "sllmx", "model=smollm2-135m", "data=files", f"data.path={train}",
           f"data.dev={dev}", "logger=none", "save_model=false", "eval.before_training=false",
           f"trainer.max_steps={steps}", f"eval.eval_steps={steps}", f"seed={seed}", f"hydra.run.dir={out}",
           # the workload is fp32 (as the peers' runs), unless the job is about precision
           *([] if any(e.startswith("trainer.precision=") for e in extra) else ["trainer.precision=fp32"]), *extra]
    m = measured(cmd, work / f"{name}.log", env=env, cwd=ROOT)
    rec = json.loads((out / "run.json").read_text())
    if processes > 1:
        m["peak_rss_bytes"] = rec["peak_rss_bytes"]
    return {**m, "train_tokens": rec["train_tokens"], "tokens_per_s": rec["train_tokens_per_s"],
            "precision": rec["precision"]["dtype"], "world_size": rec["world_size"],
            "train_loss": rec["metrics"].get("train_loss"), "eval_loss": rec["dev_metric"]["final"],
            "steps": rec["global_steps"], "gradient_checkpointing": rec["memory"]["gradient_checkpointing"],
            "overrides": extra}


def trl_job(name: str, extra: list[str], train: Path, dev: Path, work: Path, steps: int, seed: int,
            model: str) -> dict:
    """One run of the hand-written TRL script."""
    out = work / name
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peers" / "trl_sft.py"), "--model", model, "--train",
           str(train), "--dev", str(dev), "--out", str(out), "--max-steps", str(steps), "--seed", str(seed), *extra]
    m = measured(cmd, work / f"{name}.log")
    r = json.loads((out / "result.json").read_text())
    # the script evaluates after train(), so train_runtime holds no evaluation
    return {**m, "train_tokens": r["train_tokens"], "tokens_per_s": round(r["train_tokens"] / r["train_runtime_s"], 2),
            "train_loss": r["train_loss"], "eval_loss": r["eval_loss"], "steps": r["steps"],
            "gradient_checkpointing": r["gradient_checkpointing"], "overrides": extra}


def lf_job(name: str, extra: dict, train: Path, dev: Path, work: Path, steps: int, seed: int, model: str) -> dict:
    """One ``llamafactory-cli train`` run from ``LF_VENV`` (alpaca-format copy of the same rows)."""
    venv = Path(os.environ.get("LF_VENV", ROOT.parent / "lf-venv"))
    cli = venv / "bin" / "llamafactory-cli"
    if not cli.exists():
        return {"skipped": f"no LLaMA-Factory at {cli} (set LF_VENV)"}
    data = work / "lf-data"
    data.mkdir(exist_ok=True)
    for split, path in (("train", train), ("dev", dev)):
        rows = [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]
        (data / f"{split}.json").write_text(json.dumps(
            [{"instruction": m[0]["content"], "input": "", "output": m[1]["content"]} for m in rows],
            ensure_ascii=False))
    (data / "dataset_info.json").write_text(json.dumps({s: {"file_name": f"{s}.json"} for s in ("train", "dev")}))
    out = work / name
    cfg = {"model_name_or_path": model, "stage": "sft", "do_train": True, "do_eval": True,
           "finetuning_type": "lora", "lora_rank": 16, "lora_alpha": 32, "lora_target": "all",
           "dataset_dir": str(data), "dataset": "train", "eval_dataset": "dev", "template": "smollm2",
           "cutoff_len": 512, "overwrite_cache": True, "preprocessing_num_workers": 1,
           "dataloader_num_workers": 0, "output_dir": str(out), "logging_steps": 5, "save_strategy": "no",
           "report_to": "none", "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
           "max_steps": steps, "learning_rate": 2e-4, "seed": seed, "use_cpu": True, "bf16": False, "fp16": False,
           "include_num_input_tokens_seen": "non_padding", "eval_strategy": "no", **extra}
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    m = measured([str(cli), "train", str(config)], work / f"{name}.log", env={"PATH": f"{venv}/bin:{os.environ['PATH']}"})
    state = json.loads((out / "trainer_state.json").read_text())
    train_m = json.loads((out / "train_results.json").read_text())
    eval_m = json.loads((out / "eval_results.json").read_text()) if (out / "eval_results.json").exists() else {}
    tokens = int(state.get("num_input_tokens_seen") or train_m.get("num_input_tokens_seen") or 0)
    return {**m, "train_tokens": tokens, "tokens_per_s": round(tokens / train_m["train_runtime"], 2),
            "train_loss": train_m.get("train_loss"), "eval_loss": eval_m.get("eval_loss"),
            "steps": state.get("global_step"), "gradient_checkpointing": not extra.get("disable_gradient_checkpointing"),
            "overrides": [f"{k}={v}" for k, v in extra.items()]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=ORDER, help="jobs to run (default: all)")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1,
                   help="run the jobs this many times, interleaved (A B A B ...); the table shows medians. "
                        "This machine's speed drifts by 10-20%% over minutes, so compare jobs run side by side")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, run.json files)")
    p.add_argument("--name", default="throughput", help="results file: benchmarks/results/<name>.json")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sllmx-bench-"))
    train, dev = write_workload(work / "data")
    model = model_dir()
    rows = []
    for rep in range(a.repeat):
        for name in a.only or ORDER:
            print(f"== {name} (run {rep + 1} of {a.repeat})", flush=True)
            job = f"{name}-{rep}"
            if name in SLLMX_JOBS:
                r = sllmx_job(job, SLLMX_JOBS[name], train, dev, work, a.max_steps, a.seed, JOB_ENV.get(name),
                              JOB_PROCESSES.get(name, 1))
            elif name in TRL_JOBS:
                r = trl_job(job, TRL_JOBS[name], train, dev, work, a.max_steps, a.seed, model)
            else:
                r = lf_job(job, LF_JOBS[name], train, dev, work, a.max_steps, a.seed, model)
            r = {"job": name, "run": rep + 1, **r}
            if "peak_rss_bytes" in r:
                r["peak_rss_gib"] = round(r["peak_rss_bytes"] / 2**30, 2)
            print(json.dumps(r), flush=True)
            rows.append(r)
    summary = []
    for name in a.only or ORDER:
        mine = [r for r in rows if r["job"] == name and "skipped" not in r]
        if not mine:
            summary.append({"job": name, "skipped": next(r["skipped"] for r in rows if r["job"] == name)})
            continue
        med = lambda key: statistics.median(r[key] for r in mine)  # noqa: E731
        summary.append({"job": name, "runs": len(mine), "tokens_per_s": med("tokens_per_s"), "wall_s": med("wall_s"),
                        "peak_rss_gib": max(r["peak_rss_gib"] for r in mine), "train_loss": mine[0]["train_loss"],
                        "eval_loss": mine[0]["eval_loss"], "gradient_checkpointing": mine[0]["gradient_checkpointing"]})
    print(table(summary, [("job", "job", "{}"), ("runs", "runs", "{}"), ("tokens_per_s", "real tokens/s", "{:.1f}"),
                          ("wall_s", "wall s", "{:.1f}"), ("peak_rss_gib", "peak RSS GiB", "{:.2f}"),
                          ("train_loss", "train loss", "{:.4f}"), ("eval_loss", "dev loss", "{:.4f}"),
                          ("gradient_checkpointing", "checkpointing", "{}"), ("skipped", "skipped", "{}")]))
    path = save(a.name, {"machine": machine(), "max_steps": a.max_steps, "seed": a.seed, "repeat": a.repeat,
                         "command": " ".join(["python", "benchmarks/throughput.py", *sys.argv[1:]]),
                         "summary": summary, "jobs": rows})
    print(f"wrote {path}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder: {work}")


if __name__ == "__main__":
    main()
