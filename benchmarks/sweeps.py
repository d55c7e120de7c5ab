"""What pruning saves (issue 17): the same sweep with and without a pruner, over several sampler seeds.

    python benchmarks/sweeps.py --model tiny                       # 16 trials of sweep=sft_lora, 40 steps each
    python benchmarks/sweeps.py --model smollm2                    # 8 trials on SmolLM2-135M, 16 steps each
    python benchmarks/sweeps.py --model tiny --pruners nop median successive_halving --seeds 1 101 201

Each sweep is ``python -m sllmx --multirun sweep=sft_lora`` (LoRA SFT, learning rate 1e-5–2e-3 log x rank
4–64, TPE) on the built-in support_ko task with ``eval_loss`` as the dev metric (``data.metric=null``: a
generated-answer metric would make each dev evaluation cost more than the training it judges), run in its
own process and folder, one at a time, ``OMP_NUM_THREADS=2``.  For every sampler seed the unpruned sweep
(``hydra/sweeper/pruner=nop``) is the reference; for each pruner the table gives the training steps of all
trials against the reference's (``total_train_steps`` in sweep.json), and the best trial's dev metric against
the reference's best as a relative difference (positive: worse).  Targets: steps ratio <= 0.5 and best within
1%.  A pruner is given as a name of ``hydra/sweeper/pruner`` or as ``name:key=value,key=value`` (its
arguments).  Writes benchmarks/results/sweeps-<model>.json and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, measured, save, table  # noqa: E402

#: the two sweeps of issue 17: (trials, overrides); 40 optimizer steps a trial (batch 8) on the tiny model, 16
#: (batch 4) on SmolLM2, a dev evaluation every 4 and 2 steps
WORKLOADS = {
    "tiny": (16, ["model=tiny", "data.n_train=320", "eval.eval_steps=4"]),
    "smollm2": (8, ["model=smollm2-135m", "data.n_train=64", "data.n_dev=16", "trainer.per_device_train_batch_size=4",
                    "eval.eval_steps=2"]),
}
COMMON = ["sweep=sft_lora", "logger=none", "data.metric=null"]


def pruner_overrides(spec: str) -> list[str]:
    """``median`` → ``hydra/sweeper/pruner=median``; ``successive_halving:min_resource=4`` → that and
    ``hydra.sweeper.pruner.min_resource=4``."""
    name, _, args = spec.partition(":")
    out = [f"hydra/sweeper/pruner={name}"]
    for pair in filter(None, args.split(",")):
        out.append(f"hydra.sweeper.pruner.{pair}")
    return out


def finished(folder: Path, n_trials: int) -> bool:
    """Whether ``folder`` holds a sweep whose ``n_trials`` trials all ended (a sweep of an earlier call)."""
    path = folder / "sweep.json"
    if not path.exists():
        return False
    doc = json.loads(path.read_text())
    return sum(doc["counts"].get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL")) >= n_trials


def run_sweep(model: str, seed: int, pruner: str, work: Path) -> dict:
    """One sweep in its own folder (a finished one of an earlier call in the same ``work`` folder is read, not
    run again: its process wall time is then unknown); its sweep.json summarised."""
    n_trials, overrides = WORKLOADS[model]
    folder = work / f"{model}-{pruner.replace(':', '_').replace(',', '_').replace('=', '')}-seed{seed}"
    cmd = [sys.executable, "-m", "sllmx", "--multirun", *COMMON, *overrides, *pruner_overrides(pruner),
           f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.sampler.seed={seed}",
           "hydra.sweeper.study_name=bench", f"hydra.sweep.dir={folder}"]
    if finished(folder, n_trials):
        cost = {"wall_s": None, "peak_rss_bytes": None}
    else:
        shutil.rmtree(folder, ignore_errors=True)
        cost = measured(cmd, work / f"{folder.name}.log", cwd=work)
    doc = json.loads((folder / "sweep.json").read_text())
    best = doc["best_trial"]
    return {"model": model, "seed": seed, "pruner": pruner, "n_trials": len(doc["trials"]),
            "counts": doc["counts"], "total_train_steps": doc["total_train_steps"],
            "best_value": best["value"] if best else None, "best_trial": best["number"] if best else None,
            "best_params": best["params"] if best else None, "metric": doc["metric"],
            "steps": [t["global_steps"] for t in doc["trials"]], "states": [t["state"] for t in doc["trials"]],
            "trial_s": round(sum(t["duration_s"] or 0 for t in doc["trials"]), 1),
            "wall_s": cost["wall_s"], "peak_rss_bytes": cost["peak_rss_bytes"], "command": cmd[1:]}


def compare(rows: list[dict]) -> list[dict]:
    """Each pruned sweep against the unpruned one of its seed: steps ratio and relative best difference."""
    ref = {r["seed"]: r for r in rows if r["pruner"] == "nop"}
    for r in rows:
        base = ref.get(r["seed"])
        if base is None or r["pruner"] == "nop":
            continue
        r["steps_ratio"] = r["total_train_steps"] / base["total_train_steps"]
        r["trial_time_ratio"] = r["trial_s"] / base["trial_s"]
        if r["best_value"] is not None and base["best_value"]:
            # eval_loss is lower-is-better: positive = the pruned sweep's best is worse
            r["best_rel_diff"] = (r["best_value"] - base["best_value"]) / abs(base["best_value"])
        r["meets_target"] = r["steps_ratio"] <= 0.5 and r.get("best_rel_diff", 1.0) <= 0.01
    return rows


COLUMNS = [("pruner", "pruner", "{}"), ("seed", "seed", "{}"), ("total_train_steps", "steps", "{}"),
           ("steps_ratio", "steps / unpruned", "{:.2f}"), ("best_value", "best eval_loss", "{:.4f}"),
           ("best_rel_diff", "best vs unpruned", "{:+.2%}"), ("pruned", "pruned trials", "{}"),
           ("trial_s", "trial s", "{:.0f}"), ("meets_target", "target met", "{}")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(WORKLOADS), default="tiny")
    # trial n of a study is sampled with seed + n (sllmx.sweep.study.Samplers), so seeds closer than n_trials
    # would share most of their trials: 1, 101, 201 give three studies with no trial seed in common
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 101, 201])
    ap.add_argument("--pruners", nargs="+", default=["nop", "median", "successive_halving"],
                    help="hydra/sweeper/pruner names, optionally name:key=value,... ('nop' is the reference)")
    ap.add_argument("--name", default=None, help="results file name (default sweeps-<model>)")
    ap.add_argument("--work", default=None, help="the folder of the sweeps (default: a new temporary one); "
                                                 "finished sweeps of an earlier call there are read, not re-run")
    args = ap.parse_args()
    pruners = ["nop", *[p for p in args.pruners if p != "nop"]]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sllmx-bench-sweeps-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for pruner in pruners:
            row = run_sweep(args.model, seed, pruner, work)
            row["pruned"] = row["counts"].get("PRUNED", 0)
            rows.append(row)
            print(f"{args.model} seed {seed} {pruner}: {row['total_train_steps']} steps, best "
                  f"{row['best_value']}, trials {row['trial_s']:.0f} s", flush=True)
    compare(rows)
    path = save(args.name or f"sweeps-{args.model}", {
        "machine": machine(), "model": args.model, "workload": [*COMMON, *WORKLOADS[args.model][1]],
        "n_trials": WORKLOADS[args.model][0], "rows": rows})
    print(table(rows, COLUMNS))
    print(f"results: {path} (logs and sweeps in {work})")


if __name__ == "__main__":
    main()
