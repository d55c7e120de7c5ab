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
