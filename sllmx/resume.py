"""Continuing a run that did not finish (``resume=``), and keeping finished runs untouched.

``python -m sllmx resume=RUN_DIR`` continues the run in ``RUN_DIR``: its overrides
(``.hydra/overrides.yaml``) are put back on the command line, Hydra writes into ``RUN_DIR``
without rewriting its ``.hydra/``, and :func:`sllmx.run.run` restores the model, optimizer,
scheduler, RNG states and data order from the last full checkpoint (``Trainer.train(
resume_from_checkpoint=...)``, transformers' own mechanism) and continues the dev history.
``resume=auto`` does the same for the newest unfinished run under ``outputs/`` made with the
same overrides (or the folder given by ``hydra.run.dir``), and starts a new run when there is
none, so one command serves a first submission and every re-submission (a SLURM requeue).

Without ``resume``, a ``hydra.run.dir`` that already holds a ``run.json`` is refused before
Hydra starts, so nothing in it, ``.hydra/`` included, is touched.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Optional, Sequence

from sllmx.errors import SllmxError
from sllmx.records import RUN_FILE, UNFINISHED

CHECKPOINTS = "checkpoints"
#: written last into a transformers checkpoint: a checkpoint folder without it is incomplete
_COMPLETE_MARK = "trainer_state.json"


class AlreadyComplete(SllmxError):
    """``resume=auto`` found the run already COMPLETE: nothing to do (``python -m sllmx`` exits 0), so the
    same command can be submitted again and again (a requeued job)."""


def _overrides(argv: Sequence[str]) -> dict[str, tuple[int, str]]:
    """``{key: (index in argv, value)}`` of the ``key=value`` overrides (``+``/``++``/``~`` stripped)."""
    out = {}
    for i, arg in enumerate(argv):
        if "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            out[key.lstrip("+~").removeprefix("override ").strip()] = (i, value)
    return out


def _task_overrides(argv: Sequence[str]) -> list[str]:
    """The overrides that shape the run's config (not ``hydra.*``, not ``resume``), as typed."""
    keys = _overrides(argv)
    return [argv[i] for k, (i, _) in keys.items() if not k.startswith(("hydra.", "hydra/")) and k != "resume"]


def stored_overrides(run_dir: Path) -> Optional[list[str]]:
    """The task overrides Hydra stored for the run in ``run_dir`` (``.hydra/overrides.yaml``), or None."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def _alive(record: dict[str, Any]) -> bool:
    """True when the run's recorded process is still running on this host."""
    pid = record.get("pid")
    if record.get("status") != "RUNNING" or not pid or record.get("hostname") != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    try:
        return "sllmx" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True


def read_run(run_dir: Path) -> dict[str, Any]:
    """``run_dir/run.json`` as a dict.

    Raises:
        SllmxError: when it is missing or not JSON.
    """
    path = run_dir / RUN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SllmxError(f"resume={run_dir}: {path} does not exist; nothing to resume") from None
    except (OSError, ValueError) as exc:
        raise SllmxError(f"resume={run_dir}: {path} cannot be read ({exc})") from None


def check_unfinished(run_dir: Path, record: dict[str, Any]) -> None:
    """Refuse to continue a run that finished or is still running.

    Raises:
        SllmxError: naming the run's status (COMPLETE, PRUNED) or its live process.
    """
    status = record.get("status")
    if status not in UNFINISHED:
        raise SllmxError(f"resume={run_dir}: the run's status is {status}; only an unfinished run "
                         f"({', '.join(UNFINISHED)}) is continued")
    if _alive(record):
        raise SllmxError(f"resume={run_dir}: the run is still running (pid {record['pid']} on this host)")


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint under ``run_dir/checkpoints`` (``checkpoint-N`` holding a readable
    ``trainer_state.json``, which transformers writes last), or None."""
    found = []
    for path in (run_dir / CHECKPOINTS).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and _readable_state(path):
            found.append((int(suffix), path))
    return max(found)[1] if found else None


def _readable_state(checkpoint: Path) -> bool:
    """Whether ``checkpoint/trainer_state.json`` exists and parses (a kill may cut it short)."""
    try:
        return isinstance(json.loads((checkpoint / _COMPLETE_MARK).read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def incomplete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders a kill left half-written (no readable ``trainer_state.json``)."""
    return [p for p in (run_dir / CHECKPOINTS).glob("checkpoint-*") if not _readable_state(p)]


def taken(run_dir: Path) -> str:
    """The refusal of a run into ``run_dir``, which holds a run.json: by its status, the way out."""
    try:
        status = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        status = None
    head = f"{run_dir / RUN_FILE} already exists ({status or 'unreadable'}); nothing is overwritten: "
    if status in UNFINISHED:
        return head + f"choose another hydra.run.dir, or continue that run with resume={run_dir}"
    return head + "choose another hydra.run.dir"


def _refuse_finished_sweep(argv: Sequence[str], keys: dict[str, tuple[int, str]]) -> None:
    """A ``--multirun`` with Hydra's basic sweeper into a ``hydra.sweep.dir`` whose job folders hold runs
    would have Hydra rewrite their ``.hydra/`` before each job is refused: refuse it now.  The
    ``sllmx_optuna`` sweeper (``sweep=...`` or ``hydra/sweeper=sllmx_optuna``) resumes its study there,
    numbering new trials after the existing ones, so it may.

    Raises:
        SllmxError: naming the sweep folder.
    """
    sweep_dir = keys.get("hydra.sweep.dir", (None, None))[1]
    if not sweep_dir or "${" in sweep_dir or not any(a in ("--multirun", "-m") for a in argv):
        return
    if "sweep" in keys or keys.get("hydra/sweeper", (None, ""))[1] == "sllmx_optuna":
        return
    done = sorted(Path(sweep_dir).glob(f"*/{RUN_FILE}"))
    if done:
        raise SllmxError(f"hydra.sweep.dir={sweep_dir} already holds runs ({done[0]}, ...); their folders would be "
                         f"rewritten: choose another hydra.sweep.dir (nothing is overwritten)")


def find_unfinished(root: Path, overrides: list[str]) -> Optional[Path]:
    """The newest run folder under ``root`` (``outputs/<date>/<time>-...``) whose run is unfinished,
    not running, and was made with the same task ``overrides``; None when there is none."""
    best: Optional[tuple[float, Path]] = None
    for path in root.glob(f"*/*/{RUN_FILE}"):
        run_dir = path.parent
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("status") not in UNFINISHED or _alive(record):
            continue
        if sorted(_task_overrides(stored_overrides(run_dir) or [])) != sorted(overrides):
            continue
        mtime = path.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, run_dir)
    return best[1] if best else None


def prepare_argv(argv: Sequence[str]) -> list[str]:
    """The command line of ``python -m sllmx``, before Hydra starts (nothing is written by this):

    - without ``resume``: refuse a ``hydra.run.dir`` that already holds a ``run.json``;
    - ``resume=RUN_DIR``: add the run's stored overrides that the command line does not give,
      ``hydra.run.dir=RUN_DIR`` and ``hydra.output_subdir=null`` (its ``.hydra/`` stays as it was);
    - ``resume=auto``: the same for ``hydra.run.dir`` when it holds an unfinished run, else for the
      newest unfinished run under ``outputs/`` with the same overrides; with neither, a new run.

    Raises:
        AlreadyComplete: ``resume=auto`` and the run in ``hydra.run.dir`` is COMPLETE.
        SllmxError: for the refusal, a ``resume`` folder without an unfinished run, or ``resume`` in a
            multirun (a sweep resumes its study: run the same command again).
    """
    argv = list(argv)
    keys = _overrides(argv)
    resume = keys.get("resume", (None, None))[1]
    run_dir = keys.get("hydra.run.dir", (None, None))[1]
    if resume in (None, "null"):
        if run_dir and "${" not in run_dir and (Path(run_dir) / RUN_FILE).exists():
            raise SllmxError(taken(Path(run_dir)))
        _refuse_finished_sweep(argv, keys)
        return argv
    if any(a in ("--multirun", "-m") for a in argv):
        raise SllmxError("resume= continues one run; a sweep resumes its study when the same --multirun command "
                         "runs again")
    if resume == "auto":
        if run_dir:
            target = Path(run_dir) if (Path(run_dir) / RUN_FILE).exists() else None
        else:
            target = find_unfinished(Path("outputs"), _task_overrides(argv))
        if target is None:
            return argv  # nothing to continue: a new run (run() sees resume=auto and no run.json)
    else:
        target = Path(resume)
    record = read_run(target)
    if resume == "auto" and record.get("status") == "COMPLETE":
        raise AlreadyComplete(f"{target / RUN_FILE} says COMPLETE; nothing to resume")
    check_unfinished(target, record)
    stored = stored_overrides(target) or []
    given = {k for k in keys if not k.startswith("hydra")}
    missing = [o for o in stored if _overrides([o]) and next(iter(_overrides([o]))) not in given]
    i = keys["resume"][0]
    argv[i] = f"resume={target}"
    extra = [] if run_dir else [f"hydra.run.dir={target}"]
    return [*missing, *argv, *extra, "hydra.output_subdir=null"]


def config_difference(now: Any, then: Any, prefix: str = "") -> Optional[str]:
    """The first key whose value differs between two resolved configs (``key: then -> now``), else None.
    ``resume``, ``output_dir``, ``cache_dir`` and ``shared_data`` are left out (they name the run and where
    this machine keeps its files, not the training: a requeued job may land on another node)."""
    if isinstance(now, dict) and isinstance(then, dict):
        for key in sorted(set(now) | set(then)):
            if not prefix and key in ("resume", "output_dir", "cache_dir", "shared_data"):
                continue
            diff = config_difference(now.get(key), then.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    if now != then:
        return f"{prefix.rstrip('.')}: {then!r} in the run, {now!r} now"
    return None
