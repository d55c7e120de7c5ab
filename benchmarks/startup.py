"""Start-up time: ``python -m sllmx --help`` and ``--cfg job`` (median of 5), beside the peers.

    python benchmarks/startup.py                       # this checkout (and the peers found)
    python benchmarks/startup.py --compare-rev 80d1309 # also sllmx at another commit (a git worktree)

Peers: ``import trl`` with ``SFTTrainer`` (what a hand-written TRL script pays before its first
line) and ``llamafactory-cli --help`` from ``LF_VENV`` when it exists.  Target (issue 7): ≤ 1.0 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ENV, ROOT, machine, save, table  # noqa: E402

REPEATS = 5


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Median and all of ``REPEATS`` wall times of ``cmd`` (after one untimed warm-up run)."""
    full_env = {**os.environ, **ENV, **env}
    subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, check=True)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, check=True)
        times.append(round(time.perf_counter() - t0, 3))
    return {"median_s": statistics.median(times), "times_s": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare-rev", help="also time sllmx at this git revision (checked out in a temporary worktree)")
    a = p.parse_args()
    rows = []
    checkouts = [("this checkout", ROOT)]
    tmp = None
    if a.compare_rev:
        tmp = Path(tempfile.mkdtemp(prefix="sllmx-rev-")) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp), a.compare_rev],
                       check=True, capture_output=True)
        checkouts.append((f"sllmx at {a.compare_rev}", tmp))
    try:
        for label, tree in checkouts:
            env = {"PYTHONPATH": str(tree)}
            for args in (["--help"], ["--cfg", "job"]):
                r = timed([sys.executable, "-m", "sllmx", *args], tree, env)
                rows.append({"command": f"python -m sllmx {' '.join(args)}", "where": label, **r})
                print(rows[-1], flush=True)
    finally:
        if tmp is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp)], capture_output=True)
            shutil.rmtree(tmp.parent, ignore_errors=True)
    r = timed([sys.executable, "-c", "from trl import SFTTrainer"], ROOT, {})
    rows.append({"command": "python -c 'from trl import SFTTrainer'", "where": "peer: TRL script", **r})
    cli = Path(os.environ.get("LF_VENV", ROOT.parent / "lf-venv")) / "bin" / "llamafactory-cli"
    if cli.exists():
        r = timed([str(cli), "help"], ROOT, {})
        rows.append({"command": "llamafactory-cli help", "where": "peer: LLaMA-Factory", **r})
    for row in rows:
        row["times"] = " ".join(f"{t:.2f}" for t in row["times_s"])
    print(table(rows, [("command", "command", "`{}`"), ("where", "code", "{}"), ("median_s", "median s", "{:.2f}"),
                       ("times", "5 runs, s", "{}")]))
    path = save("startup", {"machine": machine(), "repeats": REPEATS,
                            "command": " ".join(["python", "benchmarks/startup.py", *sys.argv[1:]]), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
