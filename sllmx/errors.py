"""The one error type for bad input: printed as a single clear line, exit status 2, no traceback."""


class SllmxError(Exception):
    """A user-facing error: bad input, an unknown option, a config that cannot work.

    The message names the file, line and field, or the option, and says what to do.
    ``python -m sllmx`` prints ``sllmx: error: <message>`` and exits with status 2; set
    ``SLLMX_TRACEBACK=1`` (or ``hydra.verbose=true``) to see the traceback as well.
    """


def exit_with(exc: BaseException) -> None:
    """Print ``sllmx: error: <message>`` on stderr and exit with status 2 (``SLLMX_TRACEBACK=1``
    prints the traceback first).  The one way bad input ends a command."""
    import os
    import sys
    import traceback

    if os.environ.get("SLLMX_TRACEBACK"):
        traceback.print_exception(exc)
    sys.stderr.write(f"sllmx: error: {exc}\n")  # one write: the lines of several ranks do not interleave
    sys.stderr.flush()
    from sllmx.runtime import settle_before_exit

    settle_before_exit()  # several processes: each one prints its line before the launcher stops the rest
    sys.exit(2)


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
