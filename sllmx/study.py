"""What the sweeper and its jobs share about a study: storage, pruner, and the trials held in this process."""

from __future__ import annotations

import time
import warnings
from typing import Any, Optional

from sllmx.errors import SllmxError

#: trials held by a sweeper in this process: {(storage URL, study name, number): optuna Trial}
ACTIVE: dict[tuple[str, str, int], Any] = {}

#: study user attributes the sweeper writes and jobs read
PRUNER_ATTR = "sllmx_pruner"  # the pruner node: {"_target_": "optuna.pruners.X", **its arguments}
METRIC_ATTR = "sllmx_metric"


def make_storage(url: str, heartbeat_interval: Optional[int] = None, max_retry: Optional[int] = None) -> Any:
    """An Optuna ``RDBStorage`` for ``url`` (``sqlite:///path``, ``postgresql://...``, ``mysql+pymysql://...``).

    Args:
        url: SQLAlchemy URL of the database.
        heartbeat_interval: seconds between heartbeats of running trials (sweeper side);
            a trial silent for 2× this is failed by ``optuna.storages.fail_stale_trials``
            and re-queued with the same parameters (``RetryHeartbeatStaleTrialCallback``,
            at most ``max_retry`` times).  None: no heartbeat (job side).

    Raises:
        SllmxError: when the URL is not a database URL Optuna can open.
    """
    import optuna

    if "://" not in url:
        raise SllmxError(f"storage={url!r} is not a database URL; use sqlite:///path/optuna.db, "
                         "postgresql://user@host/db or mysql+pymysql://user@host/db")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    from sqlalchemy.exc import IntegrityError, OperationalError

    try:
        with warnings.catch_warnings():  # heartbeats are an "experimental" Optuna feature since 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs: dict[str, Any] = {}
            if heartbeat_interval:
                kwargs = dict(heartbeat_interval=heartbeat_interval, grace_period=2 * heartbeat_interval,
                              heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                                  max_retry=max_retry))
            for attempt in range(5):
                try:
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
                except (IntegrityError, OperationalError):
                    # workers started together race to create the schema (alembic's version row,
                    # "table already exists"); the loser finds it made on the next try
                    if attempt == 4:
                        raise
                    time.sleep(0.5 * (attempt + 1))
    except ImportError as exc:
        raise SllmxError(f"storage={mask_url(url)}: its database driver is not installed ({exc}); "
                         "pip install 'sllmx[postgres]' (psycopg) or 'sllmx[mysql]' (pymysql)") from exc
    except Exception as exc:  # sqlalchemy/driver errors: unknown dialect, refused connection
        raise SllmxError(f"storage={mask_url(url)}: cannot open it: {type(exc).__name__}: {exc}") from exc


def mask_url(url: Optional[str]) -> Optional[str]:
    """``url`` with any password replaced by ``***`` (for records and logs)."""
    if not url or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def pruner_from_spec(spec: Optional[dict[str, Any]]) -> Any:
    """The Optuna pruner a pruner node describes: ``{"_target_": "optuna.pruners.<Class>", **its keyword
    arguments}`` (a ``hydra/sweeper/pruner`` node as a dict, as the sweeper stores it in the study's
    ``PRUNER_ATTR`` user attribute), built with ``hydra.utils.instantiate``.  None or ``{}``: ``NopPruner``.

    Only classes of ``optuna.pruners`` are built, at the top and in every nested node: the spec may come from a
    shared database, and a job instantiates what it reads there.

    Raises:
        SllmxError: for a spec without a ``_target_`` in ``optuna.pruners`` or that Optuna refuses
            (a bad argument value).
    """
    import optuna

    if not spec:
        return optuna.pruners.NopPruner()
    target = str(spec.get("_target_") or "")
    targets = list(_targets(spec))  # instantiate builds nested _target_ nodes too (PatientPruner's wrapped_pruner)
    if not target or any(not str(t).startswith("optuna.pruners.") for t in targets):
        raise SllmxError(f"the study's pruner {spec!r} names something other than optuna.pruners classes (a study "
                         "written by another sllmx version?); run the sweep again with the same command to store "
                         "it anew")
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(dict(spec))
    except InstantiationException as exc:
        raise SllmxError(f"hydra/sweeper/pruner ({target}): {instantiation_error_text(exc)}") from exc


def _targets(node: Any):
    """Every ``_target_`` value in a nested dict / list node."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield value
            else:
                yield from _targets(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _targets(value)


def instantiation_error_text(exc: BaseException) -> str:
    """Hydra's instantiation error without its ``full_key`` line: the call and Optuna's message."""
    lines = [line for line in str(exc).strip().splitlines() if line and not line.startswith("full_key")]
    return " ".join(lines)
