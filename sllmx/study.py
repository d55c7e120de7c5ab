"""What the sweeper and its jobs share about a study: storage, pruner, and the trials held in this process."""

from __future__ import annotations

import time
import warnings
from typing import Any, Optional

from sllmx.errors import SllmxError

#: trials held by a sweeper in this process: {(storage URL, study name, number): optuna Trial}
ACTIVE: dict[tuple[str, str, int], Any] = {}

#: study user attributes the sweeper writes and jobs read
PRUNER_ATTR = "sllmx_pruner"
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


def build_pruner(name: str, kwargs: dict[str, Any]) -> Any:
    """The Optuna pruner called ``name`` with Optuna's own keyword arguments.

    Names: ``median`` (MedianPruner), ``percentile`` (PercentilePruner, ``percentile``
    defaults to 25.0), ``successive_halving`` (SuccessiveHalvingPruner; Jamieson &
    Talwalkar, 2016), ``hyperband`` (HyperbandPruner; Li et al., 2018), ``none`` (NopPruner;
    ``kwargs`` are ignored, so ``pruner=none`` switches off a configured pruner).

    Raises:
        SllmxError: for an unknown name or keyword argument.
    """
    import optuna

    classes = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner}
    if name not in classes:
        raise SllmxError(f"hydra.sweeper.pruner={name}: unknown pruner; available: {', '.join(classes)}")
    kwargs = dict(kwargs)
    if name == "none":  # turning pruning off keeps the other pruners' settings harmless (an A/B of one flag)
        kwargs = {}
    if name == "percentile":
        kwargs.setdefault("percentile", 25.0)
    try:
        return classes[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise SllmxError(f"hydra.sweeper.pruner_kwargs for {name}: {exc}") from exc
