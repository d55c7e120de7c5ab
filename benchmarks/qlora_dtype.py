"""QLoRA's unquantised weights left in bf16 against PEFT's fp32 upcast, on CPU training steps (issue 19, item 8).

    python benchmarks/qlora_dtype.py                 # 5 QLoRA DPO steps of SmolLM2-135M, each job twice (~12 min)
    python benchmarks/qlora_dtype.py --repeat 1 --max-steps 3

sllmx's QLoRA keeps the base's norms, embeddings and output head in the dtype they were loaded in (bf16 in a bf16
run; ``sllmx_plugins.methods.prepare_for_kbit_training``), as TRL's own QLoRA preparation does.  The job
``peft-upcast`` runs the same command with that function replaced by PEFT's ``prepare_model_for_kbit_training``
(what sllmx did before), which upcasts those weights to fp32, so the residual stream runs in fp32 and is cast to bf16
and back around every 4-bit layer.  Each job is its own process, the CPU to itself; the jobs interleave over
``--repeat``.  Reported: run.json's ``train_tokens_per_s`` (the training steps only), the dev ``eval_loss`` after
the steps, the whole process's wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, measured, save, table  # noqa: E402

SETTINGS = ["method=qlora", "trainer=dpo", "trainer.precision=bf16", "eval.before_training=false",
            "eval.eval_steps=100", "data.n_dev=8", "logger=none", "seed=0"]
#: the job's Python prelude, then ``python -m sllmx`` in the same process
PRELUDES = {
    "sllmx": "",
    "peft-upcast": ("import peft, sllmx_plugins.methods as m; m.prepare_for_kbit_training = lambda model: "
                    "peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False); "),
}


def run_job(name: str, out: Path, steps: int) -> dict:
    args = [*SETTINGS, f"trainer.max_steps={steps}", f"output_dir={out}"]
    code = PRELUDES[name] + f"import runpy, sys; sys.argv = ['sllmx', *{args!r}]; runpy.run_module('sllmx', " \
                            f"run_name='__main__', alter_sys=True)"
    m = measured([sys.executable, "-c", code], out.with_suffix(".log"))
    r = json.loads((out / "run.json").read_text())
    if r["status"] != "COMPLETE" or not r.get("train_tokens_per_s"):
        raise RuntimeError(f"{name}: run.json status {r['status']}, train_tokens_per_s {r.get('train_tokens_per_s')}")
    return {"job": name, "tokens_per_s": round(r["train_tokens_per_s"], 1),
            "eval_loss": round(r["dev_metric"]["final"], 6), "wall_s": m["wall_s"],
            "peak_rss_gib": round(m["peak_rss_bytes"] / 2**30, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=5)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--name", default="qlora-dtype")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sllmx-bench-") as tmp:
        for rep in range(a.repeat):
            for name in ("peft-upcast", "sllmx"):
                row = run_job(name, Path(tmp) / f"{name}-{rep}", a.max_steps)
                row["repeat"] = rep
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = []
    for name in ("peft-upcast", "sllmx"):
        mine = [r for r in rows if r["job"] == name]
        summary.append({"job": name, **{k: statistics.median(r[k] for r in mine) for k in
                                        ("tokens_per_s", "eval_loss", "wall_s")},
                        "peak_rss_gib": max(r["peak_rss_gib"] for r in mine), "n": len(mine)})
    print(table(summary, [("job", "job", "{}"), ("tokens_per_s", "train tokens/s", "{:.1f}"),
                          ("eval_loss", "dev eval_loss", "{:.6f}"), ("wall_s", "wall s", "{:.0f}"),
                          ("peak_rss_gib", "peak RSS GiB", "{:.2f}")]))
    save(a.name, {"machine": machine(), "settings": SETTINGS, "max_steps": a.max_steps, "rows": rows,
                  "summary": summary})


if __name__ == "__main__":
    main()
