"""Training throughput of sllmx's DPO (ORPO, KTO) against a hand-written TRL script (issue 19, item 8).

    python benchmarks/preference.py                       # trl, sllmx-two-rows, sllmx, one at a time (~12 min)
    python benchmarks/preference.py --repeat 2 --max-steps 8
    python benchmarks/preference.py --objective orpo      # ORPO (KTO: --objective kto): trl and sllmx

The workload: SmolLM2-135M-Instruct, LoRA r=16 all-linear (dropout 0), fp32, no gradient checkpointing,
batch 8 of the built-in task's preference pairs (the split sllmx trains on, written with ``python -m sllmx.data
check --write-splits``), max_length 512, learning rate 5e-5, beta 0.1, ``--max-steps`` steps, then one
evaluation of 8 dev pairs.  "real tokens/s" is the non-padding tokens of chosen and rejected
(``num_input_tokens_seen``) over the training steps' time (sllmx's dev evaluation at the last step runs inside
``train()``: run.json's ``train_tokens_per_s`` leaves it out; the peer evaluates after ``train()``); "wall s" the
whole process.

Jobs (each its own process, one at a time; ``--repeat`` interleaves them):
  trl                     the TRL script (benchmarks/peers/trl_dpo.py) with the settings above
  sllmx-every-position    sllmx with TRL's fused LM head as TRL runs it on a CPU: every position
                          projected through the head (sllmx.trl.label_positions_head switched off)
  sllmx-two-rows          sllmx with the head only at the completion tokens (sllmx.trl.label_positions_head),
                          each pair as TRL's two rows (trainer.prefix_sharing=false)
  sllmx                   sllmx as it runs: that head, and each pair as one row, the prompt once
                          (trainer.prefix_sharing, sllmx.shared_prompt)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, measured, model_dir, save, table  # noqa: E402

SETTINGS = ["model=smollm2-135m", "data=support_ko", "data.n_dev=8", "trainer=dpo", "trainer.learning_rate=5e-5",
            "trainer.beta=0.1", "trainer.precision=fp32", "trainer.gradient_checkpointing=false",
            "trainer.logging_steps=1", "eval.before_training=false", "logger=none", "seed=0"]
#: the objectives measured (--objective): sllmx's trainer name = the peer script's --objective
OBJECTIVES = ("dpo", "orpo", "kto")


def settings(objective: str) -> list[str]:
    """:data:`SETTINGS` with ``trainer=objective``."""
    return [f"trainer={objective}" if s == "trainer=dpo" else s for s in SETTINGS]
#: sllmx with TRL's every-position head (the patch switched off before the trainer plugins import it)
EVERY_POSITION = ("import sys, runpy, sllmx.trl; sllmx.trl.label_positions_head = lambda: False; "
                  "sys.argv = ['sllmx', *sys.argv[1:]]; runpy.run_module('sllmx', run_name='__main__')")


def write_splits(folder: Path, objective: str) -> tuple[Path, Path]:
    """The train and dev rows sllmx's run of ``objective`` trains and evaluates on, as conversational JSONL (pairs;
    KTO: unpaired rows)."""
    out = folder / "splits"
    cmd = [sys.executable, "-m", "sllmx.data", "check", *[s for s in settings(objective) if s.split("=")[0] in
                                                            ("model", "data", "data.n_dev", "trainer")],
           "--write-splits", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return out / "train.jsonl", out / "dev.jsonl"


def run_job(name: str, work: Path, steps: int, model: str, train: Path, dev: Path, objective: str = "dpo") -> dict:
    out = work / name
    if name == "trl":
        cmd = [sys.executable, str(ROOT / "benchmarks" / "peers" / "trl_dpo.py"), "--model", model, "--train",
               str(train), "--dev", str(dev), "--out", str(out), "--max-steps", str(steps), "--objective", objective]
        out.mkdir(parents=True)
        m = measured(cmd, work / f"{name}.log")
        r = json.loads((out / "result.json").read_text())
        tokens, runtime, eval_loss = r["train_tokens"], r["train_runtime_s"], r["eval_loss"]
        losses = r["losses"]
    else:
        head = [sys.executable, "-c", EVERY_POSITION] if name == "sllmx-every-position" else [sys.executable, "-m",
                                                                                               "sllmx"]
        rows = ["trainer.prefix_sharing=false"] if name in ("sllmx-every-position", "sllmx-two-rows") else []
        cmd = [*head, *settings(objective), *rows, f"trainer.max_steps={steps}", f"eval.eval_steps={steps}",
               f"output_dir={out}"]
        m = measured(cmd, work / f"{name}.log")
        r = json.loads((out / "run.json").read_text())
        if r["status"] != "COMPLETE":
            raise RuntimeError(f"{name}: run.json status {r['status']}")
        # the training steps' time: train() also runs the dev evaluation at the last step, which the peer runs
        # after train(); run.json's train_tokens_per_s leaves out the evaluations' time (eval_runtime and
        # eval_generation_runtime)
        tokens, eval_loss = r["train_tokens"], r["dev_metric"]["final"]
        if not r.get("train_tokens_per_s"):
            raise RuntimeError(f"{name}: run.json has no train_tokens_per_s (no tokens counted)")
        runtime = tokens / r["train_tokens_per_s"]
        losses = None
    return {"job": name, "steps": steps, "train_tokens": tokens, "train_runtime_s": round(runtime, 2),
            "tokens_per_s": round(tokens / runtime, 2), "eval_loss": eval_loss, "losses": losses,
            "wall_s": m["wall_s"], "peak_rss_gib": round(m["peak_rss_bytes"] / 2**30, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=["trl", "sllmx-two-rows", "sllmx"],
                   choices=["trl", "sllmx-every-position", "sllmx-two-rows", "sllmx"])
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--name", default=None, help="results file name (default: preference-OBJECTIVE)")
    p.add_argument("--objective", choices=OBJECTIVES, default="dpo",
                   help="orpo, kto: the jobs trl and sllmx (the two-rows and every-position jobs are DPO's)")
    a = p.parse_args()
    a.name = a.name or f"preference-{a.objective}"
    if a.objective != "dpo" and set(a.only) - {"trl", "sllmx"}:
        a.only = [j for j in a.only if j in ("trl", "sllmx")]
    model = model_dir()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sllmx-bench-") as tmp:
        work = Path(tmp)
        train, dev = write_splits(work, a.objective)
        for rep in range(a.repeat):
            for name in a.only:
                row = run_job(name, work / f"rep{rep}", a.max_steps, model, train, dev, a.objective)
                row["repeat"] = rep
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = []
    for name in a.only:
        mine = [r for r in rows if r["job"] == name]
        summary.append({"job": name, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
                        "eval_loss": mine[-1]["eval_loss"], "wall_s": statistics.median(r["wall_s"] for r in mine),
                        "peak_rss_gib": max(r["peak_rss_gib"] for r in mine), "n": len(mine)})
    base = next((s["tokens_per_s"] for s in summary if s["job"] == "trl"), None)
    for s in summary:
        s["vs_trl"] = round(s["tokens_per_s"] / base, 3) if base else None
    print(table(summary, [("job", "job", "{}"), ("tokens_per_s", "real tokens/s", "{:.1f}"),
                          ("vs_trl", "× TRL", "{:.2f}"), ("eval_loss", "dev eval_loss", "{:.6f}"),
                          ("wall_s", "wall s", "{:.0f}"), ("peak_rss_gib", "peak RSS GiB", "{:.2f}")]))
    save(a.name, {"machine": machine(), "settings": settings(a.objective), "max_steps": a.max_steps, "rows": rows,
                  "summary": summary})


if __name__ == "__main__":
    main()
