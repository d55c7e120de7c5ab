"""How batches are formed, on the Korean chat workload: plain dynamic padding, length-grouped
batches, and isolated packing (issue 7).

    python benchmarks/batching.py                 # 3 strategies x seeds 0 1 (~25 min)
    python benchmarks/batching.py --seeds 0 --max-steps 10

All three train the same number of examples per optimizer step on average with sllmx's
defaults otherwise (benchmarks/common.py has the workload):
  random            train_sampling_strategy=random: batches of 8 in random order, each padded
                    to its longest example
  group_by_length   sllmx's default: transformers' LengthGroupedSampler (batches of similar
                    length from random mega-batches of 50 batches)
  packing           TRL's bfd packing, padding-free: one row of at most 768 tokens per step
                    (about 8 examples), each example with its own positions and attention
Reports real (non-padding) tokens/s, the share of computed tokens that are real, and the dev
loss after training, so that a faster strategy is seen to learn the same.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save, table, write_workload  # noqa: E402
from throughput import sllmx_job  # noqa: E402

STRATEGIES = {
    "random": ["trainer.train_sampling_strategy=random"],
    "group_by_length": ["trainer.train_sampling_strategy=group_by_length"],
    "packing": ["trainer.packing=true", "trainer.per_device_train_batch_size=1", "trainer.max_length=768",
                "trainer.train_sampling_strategy=random"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--only", nargs="*", choices=list(STRATEGIES))
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sllmx-batching-"))
    train, dev = write_workload(work / "data")
    rows = []
    for seed in a.seeds:
        for name in a.only or STRATEGIES:
            print(f"== {name} seed {seed}", flush=True)
            r = sllmx_job(f"{name}-{seed}", STRATEGIES[name], train, dev, work, a.max_steps, seed)
            rows.append({"strategy": name, "seed": seed, **r, "peak_rss_gib": round(r["peak_rss_bytes"] / 2**30, 2)})
            print(rows[-1], flush=True)
    summary = []
    for name in a.only or STRATEGIES:
        mine = [r for r in rows if r["strategy"] == name]
        summary.append({"strategy": name, "runs": len(mine),
                        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in mine),
                        "train_tokens": statistics.mean(r["train_tokens"] for r in mine),
                        "eval_loss": statistics.mean(r["eval_loss"] for r in mine),
                        "eval_loss_range": f"{min(r['eval_loss'] for r in mine):.4f}–{max(r['eval_loss'] for r in mine):.4f}",
                        "peak_rss_gib": max(r["peak_rss_gib"] for r in mine)})
    base = next((s["tokens_per_s"] for s in summary if s["strategy"] == "random"), None)
    for s in summary:
        s["speedup_vs_random"] = round(s["tokens_per_s"] / base, 3) if base else None
    print(table(summary, [("strategy", "batching", "{}"), ("runs", "runs", "{}"),
                          ("tokens_per_s", "real tokens/s", "{:.1f}"), ("speedup_vs_random", "× random", "{:.2f}"),
                          ("train_tokens", "train tokens", "{:.0f}"), ("eval_loss", "dev loss (mean)", "{:.4f}"),
                          ("eval_loss_range", "dev loss (min–max)", "{}"), ("peak_rss_gib", "peak RSS GiB", "{:.2f}")]))
    path = save("batching", {"machine": machine(), "max_steps": a.max_steps, "seeds": a.seeds,
                             "command": " ".join(["python", "benchmarks/batching.py", *sys.argv[1:]]),
                             "strategies": STRATEGIES, "summary": summary, "runs": rows})
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
