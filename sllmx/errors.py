"""Errors and how a command ends on them: bad input (one clear line, exit status 2, no traceback), a run
stopped on purpose by a plugin (:class:`RunStopped`), and a run stopped by a signal."""

import argparse


class SllmxError(Exception):
    """A user-facing error: bad input, an unknown option, a config that cannot work.

    The message names the file, line and field, or the option, and says what to do.
    ``python -m sllmx`` prints ``sllmx: error: <message>`` and exits with status 2; set
    ``SLLMX_TRACEBACK=1`` (or ``hydra.verbose=true``) to see the traceback as well.
    """


def exit_with(exc: BaseException, message: "str | None" = None, status: int = 2) -> None:
    """Print ``sllmx: error: <message>`` (default: the exception's) on stderr and exit with ``status``
    (2: bad input; 1: a run that failed, e.g. diverged).  ``SLLMX_TRACEBACK=1`` prints the traceback
    first.  The one way a command ends on an error it can explain.

    Under torchrun, an error found before the process group exists is found by every rank from the
    same command line: rank 0 prints it, the others wait (at most 20 s) for torchrun to stop them, so
    the line is printed once and not lost to the race between the ranks' exits.  After the group
    exists each rank prints its own line (:func:`settle_before_exit`)."""
    import os
    import sys
    import traceback

    if _wait_for_rank_zero():
        import time

        time.sleep(20.0)  # torchrun stops this process when rank 0 exits; if not, say it here too
    if os.environ.get("SLLMX_TRACEBACK"):
        traceback.print_exception(exc)
    sys.stderr.write(f"sllmx: error: {message or exc}\n")  # one write: the lines of several ranks do not interleave
    sys.stderr.flush()
    settle_before_exit()  # several processes: each one prints its line before the launcher stops the rest
    sys.exit(status)


def _wait_for_rank_zero() -> bool:
    """True in a torchrun worker other than rank 0 before torch.distributed's process group exists."""
    import os
    import sys

    if not os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("RANK", "0") == "0":
        return False
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return False
    return True


class RunStopped(Exception):
    """Raised by a plugin's callback to end a run early on purpose, with the status it ends with.

    The record lifecycle (:func:`sllmx.lifecycle.lifecycle`) records ``status`` and ``reason`` in ``run.json`` and returns the
    record normally (it is the run's outcome, not an error); checkpoints are removed.  Raised from a
    ``TrainerCallback`` it leaves ``trainer.train()`` unchanged, so training stops at once.  With several
    processes every rank must raise it at the same step: decide on the main process and send the decision
    to all (:func:`sllmx.runtime.from_main`), as the trial plugin does.

    Attributes:
        status: ``PRUNED`` (the only one so far: a sweep's pruner stopped a hopeless trial; the reason goes
            to the record's ``pruned`` field).
        reason: one line: where and why, e.g. ``pruned at step 3: eval_loss=2.31``.

    Raises:
        ValueError: for a status a stopped run cannot end with.
    """

    STATUSES = ("PRUNED",)

    def __init__(self, reason: str, status: str = "PRUNED"):
        if status not in self.STATUSES:
            raise ValueError(f"RunStopped status {status!r}: use one of {', '.join(self.STATUSES)}")
        super().__init__(reason)
        self.status, self.reason = status, reason


class Interrupted(BaseException):
    """A run stopped by SIGINT or SIGTERM (a ``BaseException``, like ``KeyboardInterrupt``).

    Attributes:
        signal: the signal's name, ``SIGINT`` or ``SIGTERM``.
        step: the last optimizer step completed (None before training started).
    """

    def __init__(self, signal: str, step: "int | None" = None):
        super().__init__(f"{signal}" + (f" at step {step}" if step is not None else ""))
        self.signal, self.step = signal, step

    @property
    def exit_status(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell's convention."""
        import signal as _signal

        return 128 + int(getattr(_signal, self.signal, _signal.SIGINT))


def settle_before_exit(timeout_s: float = 30.0) -> None:
    """Before a process of a multi-process run exits on bad input: wait (at most ``timeout_s``) until
    every rank has reached this point too (``torch.distributed.monitored_barrier``, gloo only), so
    each prints its error line before torchrun stops the others.  Does nothing with one process,
    before the process group exists, or on another backend."""
    import sys

    if "torch" not in sys.modules:
        return
    import datetime

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    if dist.get_backend() != "gloo":
        return
    try:
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
    except Exception:  # a rank that did not fail: it will be stopped by the launcher
        pass


def say(message: str) -> None:
    """One progress line on stderr (``sllmx: ...``), flushed at once (the commands after a run use it)."""
    import sys

    sys.stderr.write(f"sllmx: {message}\n")
    sys.stderr.flush()


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (an unknown flag, a missing argument) are one
    ``sllmx: error: PROG: ... (see PROG --help)`` line and exit status 2, as every sllmx command ends on
    bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        exit_with(SllmxError(f"{self.prog}: {message} (see {self.prog} --help)"))
