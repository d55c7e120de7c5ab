"""Which worker runs a trial, and whether it is gone, so that a rerun after a kill does not wait idle for a
stale heartbeat.

When a sweeper starts a trial it records itself in the trial's ``sllmx_worker`` user attribute: host name,
boot id, process id and the process's start time.  A later sweeper on the same storage, on the same host
and boot, sees at once whether that process still exists (a reused pid has another start time); if not, it
fails the trial and re-queues it with the storage's stale-trial callback, exactly as
``optuna.storages.fail_stale_trials`` does after a heartbeat's grace period.  A worker on another host is
left to the heartbeat.

References: ``optuna.storages.fail_stale_trials`` and ``RetryHeartbeatStaleTrialCallback``
(https://optuna.readthedocs.io/en/stable/reference/generated/optuna.storages.fail_stale_trials.html);
``kill(pid, 0)`` (POSIX) and ``/proc/<pid>/stat`` field 22, the start time (proc(5)).
"""

from __future__ import annotations

import copy
import os
import socket
from typing import Any, Optional

#: the trial user attribute that names the sweeper process running the trial
WORKER_ATTR = "sllmx_worker"


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks after boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def this_worker(number: int) -> dict[str, Any]:
    """The ``sllmx_worker`` attribute of trial ``number`` started by this process."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "started": _start_time(pid),
            "trial": number}


def is_gone(worker: Any, number: int) -> bool:
    """Whether the process that ``worker`` (a trial's ``sllmx_worker`` attribute) names has certainly exited:
    only on the same host and boot, for the attribute written for trial ``number`` (a re-queued trial inherits
    the failed one's attributes)."""
    if not isinstance(worker, dict) or worker.get("trial") != number or not isinstance(worker.get("pid"), int):
        return False
    if worker.get("host") != socket.gethostname() or worker.get("boot") != _boot_id():
        return False
    pid = worker["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists (another user's process)
        pass
    started = worker.get("started")
    return started is not None and _start_time(pid) not in (None, started)  # the pid now names another process


def fail_trials_of_gone_workers(study: Any) -> list[int]:
    """Fail the RUNNING trials of ``study`` whose worker :func:`is_gone` and hand each to the storage's
    stale-trial callback (sllmx's: ``RetryHeartbeatStaleTrialCallback``, which re-queues its parameters), as
    ``optuna.storages.fail_stale_trials`` does for a stale heartbeat.  Returns the failed trials' numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_gone(trial.user_attrs.get(WORKER_ATTR), trial.number):
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial)
        except UpdateFinishedTrialError:  # another sweeper failed it first
            pass
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if callback is not None:
        for trial in failed:
            callback(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
    return [t.number for t in failed]
