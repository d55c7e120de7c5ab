"""Is fine-tuning needed? (issue 18): prompting and retrieval baselines beside LoRA SFT, one report.

    python benchmarks/baselines.py                       # SmolLM2-135M on the built-in support_ko task
    python benchmarks/baselines.py --data ko_chatbot     # ../shared/data's Korean chatbot pairs, ROUGE

Rows, each its own ``python -m sllmx`` process with ``eval.test=true`` (one at a time, 2 threads): zero-shot,
3-shot (random and similar), RAG over the train answers (k=3), LoRA SFT (sllmx's defaults), and that LoRA run
evaluated with retrieval (``python -m sllmx.evaluate RUN eval.rag=train``).  Then ``python -m sllmx.report``
over all of them (Markdown, with the verdict lines under the table, and JSON), written with every run folder
into ``--out`` (default: a new temporary folder); the summary goes to benchmarks/results/baselines-<data>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ENV, machine, measured, save  # noqa: E402

DATA = {
    "support_ko": [],
    # 1000 rows at most (the preset), a tenth each for dev and test; answers are short Korean replies
    "ko_chatbot": ["data=ko_chatbot", "data.metric=rouge", "data.max_rows=400", "eval.max_new_tokens=48"],
}
ROWS = [
    ("zero_shot", ["method=zero_shot"]),
    ("few_shot_random", ["method=few_shot", "method.k=3", "method.selection=random"]),
    ("few_shot_similar", ["method=few_shot", "method.k=3", "method.selection=similar"]),
    ("rag", ["method=rag", "method.corpus=train", "method.k=3"]),
    ("lora_sft", ["method=lora", "trainer=sft"]),
]


def done(folder: Path) -> bool:
    """Whether ``folder`` holds a COMPLETE run with its measured cost (``cost.json``)."""
    try:
        return (json.loads((folder / "run.json").read_text())["status"] == "COMPLETE"
                and (folder / "cost.json").is_file())
    except (OSError, ValueError, KeyError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=sorted(DATA), default="support_ko")
    ap.add_argument("--out", default=None, help="folder for the runs and the report; the finished rows of an "
                                                "interrupted benchmark there are kept")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"sllmx-bench-baselines-{args.data}-"))
    out.mkdir(parents=True, exist_ok=True)
    common = ["logger=none", "eval.test=true", *DATA[args.data]]
    costs = {}
    runs = [(name, [sys.executable, "-m", "sllmx", *overrides, *common, f"hydra.run.dir={out / name}"])
            for name, overrides in ROWS]
    runs.append(("lora_sft_rag", [sys.executable, "-m", "sllmx.evaluate", str(out / "lora_sft"), "eval.rag=train",
                                  "eval.rag_k=3", "eval.test=true", "--out", str(out / "lora_sft_rag")]))
    for name, cmd in runs:
        if done(out / name):  # --out of an earlier, interrupted benchmark: its finished rows are kept
            costs[name] = json.loads((out / name / "cost.json").read_text())
        else:
            costs[name] = measured(cmd, out / f"{name}.log")
            (out / name / "cost.json").write_text(json.dumps(costs[name]))
        print(f"{name}: {costs[name]['wall_s']:.0f} s", flush=True)
    folders = [str(out / n) for n, _ in runs]
    # one row per run: few-shot's two selections apart, and the baselines beside each other
    by = ["--by", "method", "trainer", "method.selection"]
    report = subprocess.run([sys.executable, "-m", "sllmx.report", *folders, *by], capture_output=True, text=True,
                            env={**ENV}, check=True).stdout
    (out / "report.md").write_text(report, encoding="utf-8")
    doc = json.loads(subprocess.run([sys.executable, "-m", "sllmx.report", *folders, *by, "--format", "json"],
                                    capture_output=True, text=True, env={**ENV}, check=True).stdout)
    rows = []
    for name in [*(n for n, _ in ROWS), "lora_sft_rag"]:
        rec = json.loads((out / name / "run.json").read_text())
        rows.append({"row": name, "method": rec["method"], "prompting": rec.get("prompting"),
                     "dev": rec["dev_metric"]["best"], "dev_metric": rec["dev_metric"]["name"],
                     "test": {k: v for k, v in rec["test_metrics"].items()
                              if not k.endswith(("runtime", "per_second", "preparation_time"))},
                     "wall_s": costs[name]["wall_s"], "peak_rss_bytes": costs[name]["peak_rss_bytes"]})
    path = save(f"baselines-{args.data}", {"machine": machine(), "data": args.data, "common": common, "rows": rows,
                                            "verdicts": doc.get("verdicts", []), "folder": str(out)})
    print(report)
    print(f"results: {path}; runs and report.md in {out}")


if __name__ == "__main__":
    main()
