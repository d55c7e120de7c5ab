"""glibc's allocator with sllmx's settings against its defaults, on CPU training steps (issue 19, item 8).

    python benchmarks/allocator.py                 # 5 QLoRA DPO steps of SmolLM2-135M, each setting twice (~12 min)
    python benchmarks/allocator.py --repeat 1 --max-steps 3

sllmx sets ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, -1)`` for a run on a CPU
(:func:`sllmx.memory.keep_freed_memory`), so the activations freed at the end of a step stay in the heap for the
next one instead of being unmapped and faulted in again.  The job ``glibc-defaults`` runs the same command with
``MALLOC_ARENA_MAX`` set to glibc's own value for this machine (8 × cores), which leaves every allocator setting as
glibc has it and, being a ``MALLOC_*`` variable, tells sllmx to change nothing.  Each job is its own process, the
CPU to itself; the settings interleave over ``--repeat``.  Reported: run.json's ``train_tokens_per_s`` (the
training steps only), the whole process's wall time, kernel (system) CPU time, minor page faults and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, measured, save, table  # noqa: E402

SETTINGS = ["method=qlora", "trainer=dpo", "eval.before_training=false", "eval.eval_steps=100", "data.n_dev=8",
            "logger=none", "seed=0"]
JOBS = {"sllmx": {}, "glibc-defaults": {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))}}


def run_job(name: str, out: Path, steps: int) -> dict:
    cmd = [sys.executable, "-m", "sllmx", *SETTINGS, f"trainer.max_steps={steps}", f"output_dir={out}"]
    m = measured(cmd, out.with_suffix(".log"), env=JOBS[name])
    r = json.loads((out / "run.json").read_text())
    if r["status"] != "COMPLETE" or not r.get("train_tokens_per_s"):
        raise RuntimeError(f"{name}: run.json status {r['status']}, train_tokens_per_s {r.get('train_tokens_per_s')}")
    return {"job": name, "allocator": r["memory"].get("allocator"), "tokens_per_s": round(r["train_tokens_per_s"], 1),
            "wall_s": m["wall_s"], "system_s": m["system_s"], "minor_faults": m["minor_faults"],
            "peak_rss_gib": round(m["peak_rss_bytes"] / 2**30, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=5)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--name", default="allocator")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sllmx-bench-") as tmp:
        for rep in range(a.repeat):
            for name in ("glibc-defaults", "sllmx"):
                row = run_job(name, Path(tmp) / f"{name}-{rep}", a.max_steps)
                row["repeat"] = rep
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = []
    for name in ("glibc-defaults", "sllmx"):
        mine = [r for r in rows if r["job"] == name]
        summary.append({"job": name, **{k: statistics.median(r[k] for r in mine) for k in
                                        ("tokens_per_s", "wall_s", "system_s", "minor_faults")},
                        "peak_rss_gib": max(r["peak_rss_gib"] for r in mine), "n": len(mine)})
    print(table(summary, [("job", "job", "{}"), ("tokens_per_s", "train tokens/s", "{:.1f}"),
                          ("wall_s", "wall s", "{:.0f}"), ("system_s", "kernel CPU s", "{:.0f}"),
                          ("minor_faults", "minor page faults", "{:,.0f}"),
                          ("peak_rss_gib", "peak RSS GiB", "{:.2f}")]))
    save(a.name, {"machine": machine(), "settings": SETTINGS, "max_steps": a.max_steps, "rows": rows,
                  "summary": summary})


if __name__ == "__main__":
    main()
