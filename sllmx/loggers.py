"""The run's experiment tracker: the :class:`~sllmx.interfaces.Logger` plugin named by ``logger=<name>``
(built-ins: ``wandb`` and ``none``, in ``sllmx_plugins.loggers``), called on the main process only.

A logger's failure never changes a run: :func:`start_logger`, :func:`log_metrics` and :func:`finish_logger`
report an exception as one warning line (``sllmx: warning: plugin <dist>: Logger.<method> raised ...``) and
the run goes on; after a failed ``start`` the logger is not called again, after a failed ``log`` it gets no
more metrics (``finish`` is still called).
"""

from __future__ import annotations

from typing import Any

from sllmx.plugins import typed, warn
from sllmx.records import RunRecord


class RunLogger:
    """The run's logger plugin with its failures contained (see the module's docstring)."""

    def __init__(self, logger: Any, dist: str):
        self.logger, self.dist = logger, dist
        self.logging = True

    def _call(self, method: str, *args: Any) -> bool:
        try:
            getattr(self.logger, method)(*args)
            return True
        except Exception as exc:
            warn(self.dist, f"Logger.{method} ({self.logger.name})", exc)
            return False

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Pass numbers to the logger (until it fails once)."""
        if self.logging:
            self.logging = self._call("log", metrics, step)

    def finish(self, record: RunRecord) -> None:
        """Pass the final record to the logger."""
        self._call("finish", record)


def start_logger(run: Any) -> RunLogger | None:
    """Start the logger ``run.cfg.logger.name`` for ``run`` (a :class:`~sllmx.context.RunContext`) with its config
    as an instance of its own dataclass (:func:`sllmx.plugins.typed`); call it on the main process only.  Returns
    None when its ``start`` failed (reported as one warning line)."""
    name = run.cfg.logger.name
    try:
        logger = run.registry.get("logger", name)
        wrapped = RunLogger(logger, run.registry.dist_of("logger", name))
        cfg = typed(run.cfg.logger, "logger", run.registry)
    except Exception as exc:  # validated before the run started; a plugin's config class may still fail here
        warn(name, "Logger (its config)", exc)
        return None
    return wrapped if wrapped._call("start", run, cfg) else None


def log_metrics(logger: RunLogger | None, metrics: dict[str, Any], step: int) -> None:
    """The numbers of ``metrics`` to the run's logger (None: nothing to do)."""
    if logger is not None:
        logger.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                   step)


def publish(registry: Any, logger_cfg: Any, **summary: Any) -> bool:
    """Hand a summary that is no single run (a sweep's trials, a comparison report) to the logger plugin that
    ``logger_cfg`` names (``logger_cfg.name``; its options are typed with :func:`sllmx.plugins.typed`), with its
    failure reported as one warning line.  ``summary``: the keyword arguments of
    :meth:`sllmx.interfaces.Logger.publish`.  Returns whether the logger took it without an error.

    Raises:
        SllmxError: no logger plugin of that name is installed.
    """
    name = logger_cfg.name if not isinstance(logger_cfg, dict) else logger_cfg["name"]
    logger = registry.get("logger", name)
    try:
        logger.publish(typed(logger_cfg, "logger", registry), **summary)
        return True
    except Exception as exc:
        warn(registry.dist_of("logger", name), f"Logger.publish ({name})", exc)
        return False


def finish_logger(logger: RunLogger | None, record: RunRecord) -> None:
    """The final record to the run's logger (None: nothing to do)."""
    if logger is not None:
        logger.finish(record)
