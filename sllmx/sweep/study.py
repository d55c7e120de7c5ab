"""The study of a sweep: its sampler (seeded per trial), pruner, name, and which trials fill the budget.

References: Optuna's samplers and pruners (https://optuna.readthedocs.io/en/stable/reference/samplers/index.html,
https://optuna.readthedocs.io/en/stable/reference/pruners.html); ``optuna.create_study``.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from typing import Any, Optional

from sllmx.errors import SllmxError
from sllmx.study import METRIC_ATTR, PRUNER_ATTR, instantiation_error_text, make_storage, mask_url, pruner_from_spec
from sllmx.sweep.space import Param

#: trial user attributes the sweeper writes
RUN_DIR_ATTR, ERROR_ATTR, STEPS_ATTR = "sllmx_run_dir", "sllmx_error", "sllmx_global_steps"
#: the study user attribute naming its objectives (the run-record values told to it, in order)
OBJECTIVES_ATTR = "sllmx_objectives"


class Samplers:
    """Builds the sampler a ``hydra/sweeper/sampler`` node describes, once per trial.

    A sampler seeded once per process would replay the same random draws in every worker and in every
    resumed run (and so repeat finished trials); trial numbers are unique across workers, so
    :meth:`for_trial` seeds with ``seed + trial number``.  The grid sampler keeps the node's seed (it
    shuffles its grid with it, then gives trial ``n`` grid point ``n``): ``grid`` is True for it, and the
    loop sets it before asking instead of after.

    Args:
        node: the sampler node (``_target_`` and its keyword arguments; ``_partial_: true`` for the grid,
            which gets the search space's values as its first argument).
        space: the sweep's parameters.

    Raises:
        SllmxError: (from :meth:`check`) when Optuna refuses the arguments, for an ``interval`` under the
            grid sampler, or a CMA-ES sampler without a numeric parameter.
    """

    def __init__(self, node: dict[str, Any], space: list[Param]):
        self.node, self.space = dict(node), space
        self.seed: Optional[int] = self.node.get("seed")
        self.grid = False

    def build(self, seed: Optional[int]) -> Any:
        """The sampler with ``seed`` (when the node has a ``seed`` argument)."""
        import optuna
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        node = {**self.node, **({"seed": seed} if "seed" in self.node else {})}
        try:
            with warnings.catch_warnings():  # CmaEs/QMC/GP warn that they are "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = instantiate(node)
                if node.get("_partial_"):
                    sampler = sampler(self._grid_values())
        except InstantiationException as exc:
            raise SllmxError(f"hydra/sweeper/sampler ({node.get('_target_')}): {instantiation_error_text(exc)}") from exc
        if isinstance(sampler, optuna.samplers.GridSampler):
            # its after_trial calls study.stop(), which only works inside study.optimize; the loop stops at
            # the grid's size by itself
            sampler.after_trial = lambda *args, **kwargs: None
        return sampler

    def _grid_values(self) -> dict[str, list]:
        continuous = [p.name for p in self.space if p.grid is None]
        if continuous:
            raise SllmxError(f"hydra/sweeper/sampler=grid needs choice() or range() for every swept parameter; "
                             f"{continuous[0]} is an interval()")
        return {p.name: p.grid for p in self.space}

    def check(self, n_objectives: int = 1) -> None:
        """Build the sampler once, so a bad node (or one that cannot serve ``n_objectives``) fails before
        anything is written."""
        import optuna
        from optuna.distributions import CategoricalDistribution

        sampler = self.build(self.seed)
        if n_objectives > 1 and isinstance(sampler, optuna.samplers.CmaEsSampler):
            raise SllmxError("hydra/sweeper/sampler=cmaes cannot optimise several objectives (Optuna's CMA-ES is "
                             "single-objective); use nsgaii, tpe, gp or random")
        self.grid = isinstance(sampler, optuna.samplers.GridSampler)
        if isinstance(sampler, optuna.samplers.CmaEsSampler) and all(
                isinstance(p.distribution, CategoricalDistribution) for p in self.space):
            raise SllmxError("hydra/sweeper/sampler=cmaes needs at least one range() or interval() parameter; "
                             "use tpe or grid for categorical spaces")

    def grid_size(self) -> Optional[int]:
        """The number of grid points (None: not the grid sampler)."""
        import math

        return math.prod(len(p.grid or []) for p in self.space) if self.grid else None

    def for_trial(self, number: int) -> Any:
        """The sampler for trial ``number``: seeded ``seed + number`` (the grid: ``seed``)."""
        offset = 0 if self.grid else number
        return self.build(None if self.seed is None else self.seed + offset)


def default_study_name(prefix: str, fixed: list[str], space: list[Param], settings: dict[str, Any]) -> str:
    """``<prefix>-<8 hex>``: the hash of the fixed overrides, search space and sampler/pruner
    settings, so the same command names the same study (and resumes it), and a changed
    search space starts a new one.  ``n_trials``, ``n_jobs`` and the storage are not hashed:
    raising ``n_trials`` extends a study."""
    blob = json.dumps({"fixed": sorted(fixed), "space": {p.key: repr(p.distribution) for p in space},
                       **settings}, sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def counts_toward_budget(trial: Any) -> bool:
    """Whether a finished trial fills one of the ``n_trials`` slots: COMPLETE, PRUNED, or FAIL
    reported by its job.  A trial failed for a stale heartbeat (its worker was killed) does
    not: it is re-queued and its slot re-run."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs)


def open_study(name: str, url: str, directions: list[str], metric: str, sampler: Any, pruner_spec: dict[str, Any],
               heartbeat_interval: int, max_retry: int, objectives: Optional[list[str]] = None) -> Any:
    """Create or load the study ``name`` in the storage at ``url`` (one objective per direction: several make
    a multi-objective study) and record its metric, objectives and pruner.

    The pruner node is stored as the study's ``PRUNER_ATTR`` user attribute, so a job in another
    process rebuilds the same pruner (:func:`sllmx.study.pruner_from_spec`).

    Raises:
        SllmxError: when the storage cannot be opened, or the study exists with other directions, objectives or
            metric.
    """
    import optuna

    storage = make_storage(url, heartbeat_interval, max_retry)
    pruner = pruner_from_spec(pruner_spec)
    for attempt in range(3):  # workers started together race to create the study; the losers load it
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                        directions=list(directions), load_if_exists=True)
            break
        except optuna.exceptions.DuplicatedStudyError:
            time.sleep(1 + attempt)
    else:
        raise SllmxError(f"cannot create or load study {name} in {mask_url(url)}")
    had = [d.name.lower() for d in study.directions]
    if had != list(directions):
        raise SllmxError(f"study {name} in {mask_url(url)} was created with {len(had)} objective(s) to "
                         f"{', '.join(had)}, not {', '.join(directions)}; choose another study_name")
    known = study.user_attrs.get(METRIC_ATTR)
    if known and known != metric:
        raise SllmxError(f"study {name} optimises {known}, not {metric}; choose another study_name")
    objectives = list(objectives or [metric])
    had_objectives = study.user_attrs.get(OBJECTIVES_ATTR)
    if had_objectives and had_objectives != objectives:
        raise SllmxError(f"study {name} has objectives {had_objectives}, not {objectives}; choose another study_name")
    study.set_user_attr(METRIC_ATTR, metric)
    study.set_user_attr(OBJECTIVES_ATTR, objectives)
    study.set_user_attr(PRUNER_ATTR, dict(pruner_spec))
    return study
