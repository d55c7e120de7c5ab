"""What a study optimises: one objective (the dev metric, as before) or several (a multi-objective study).

``hydra.sweeper.objectives`` names values of a trial's run record (``run.json``):

``<the dev metric>`` (e.g. ``eval_loss``)
    its best value during training (``dev_metric.best``), as a single-objective sweep uses.
``eval_<key>``
    another dev metric at the best step (``dev_metric.history`` at ``best_step``).
``trainable_params``, ``wall_time_s``, ``train_tokens_per_s``, ``peak_rss_bytes``, ``peak_gpu_bytes``
    the record's fields of those names.
``peak_memory``
    the run's peak memory in bytes: ``peak_gpu_bytes`` when the run used a GPU, else ``peak_rss_bytes``.

``hydra.sweeper.direction`` gives one direction per objective (``[minimize, minimize]``); null picks the dev
metric's own direction for it and a default for the others (:data:`DEFAULT_DIRECTIONS`).  A multi-objective
study is Optuna's ``create_study(directions=[...])``; its answer is the Pareto front (``study.best_trials``).
Optuna's pruners support single-objective studies only, so a multi-objective sweep runs without one.

Reference: Optuna multi-objective optimisation
(https://optuna.readthedocs.io/en/stable/tutorial/20_recipes/002_multi_objective.html).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from sllmx.errors import SllmxError

#: record fields an objective may name, and the direction null picks for each
DEFAULT_DIRECTIONS = {"trainable_params": "minimize", "peak_memory": "minimize", "peak_rss_bytes": "minimize",
                      "peak_gpu_bytes": "minimize", "wall_time_s": "minimize", "train_tokens_per_s": "maximize"}
DIRECTIONS = ("minimize", "maximize")
#: the pruner node used when pruning cannot apply
NOP_PRUNER = {"_target_": "optuna.pruners.NopPruner"}


def known_names(metric: str) -> str:
    return f"{metric} (the dev metric), eval_<key> (a dev metric at the best step), {', '.join(DEFAULT_DIRECTIONS)}"


def resolve(direction: Any, objectives: Any, metric: str, higher: bool) -> tuple[list[str], list[str]]:
    """The objectives and one direction each, from ``hydra.sweeper.direction`` (null, a name or a list) and
    ``hydra.sweeper.objectives`` (null: the dev metric), checked before anything runs.

    Raises:
        SllmxError: for an unknown objective or direction, or lengths that differ.
    """
    from omegaconf import OmegaConf

    direction = OmegaConf.to_container(direction) if OmegaConf.is_config(direction) else direction
    objectives = OmegaConf.to_container(objectives) if OmegaConf.is_config(objectives) else objectives
    if objectives is None or isinstance(objectives, str):
        names = [objectives or metric]
    else:
        names = [str(o) for o in objectives]
    if not names:
        raise SllmxError("hydra.sweeper.objectives is empty; name at least one (null: the dev metric)")
    for name in names:
        if name != metric and name not in DEFAULT_DIRECTIONS and not (name.startswith("eval_") and len(name) > 5):
            raise SllmxError(f"hydra.sweeper.objectives: unknown objective {name!r}; use {known_names(metric)}")
    if len(set(names)) < len(names):
        raise SllmxError(f"hydra.sweeper.objectives={names}: an objective is named twice")
    if direction is None:
        directions = [("maximize" if higher else "minimize") if n == metric else DEFAULT_DIRECTIONS.get(n)
                      for n in names]
        missing = [n for n, d in zip(names, directions) if d is None]
        if missing:
            raise SllmxError(f"hydra.sweeper.objectives: {missing[0]} has no default direction; give one per "
                             f"objective, e.g. hydra.sweeper.direction=[{', '.join(['minimize'] * len(names))}]")
        return names, directions
    directions = [direction] if isinstance(direction, str) else [str(d) for d in direction]
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise SllmxError(f"hydra.sweeper.direction={bad[0]}: use minimize, maximize, a list of them (one per "
                         "objective), or null (from the dev metric)")
    if len(directions) != len(names):
        raise SllmxError(f"hydra.sweeper.direction has {len(directions)} direction(s) and hydra.sweeper.objectives "
                         f"{len(names)} objective(s) {names}; give one direction per objective")
    return names, directions


def pruner_for(names: list[str], metric: str, pruner: dict[str, Any]) -> dict[str, Any]:
    """The pruner node to use: ``pruner``, or :data:`NOP_PRUNER` (said in one line) when the objectives are not
    the dev metric alone: Optuna's pruners compare one objective's values during training (the dev metric's)."""
    if names == [metric] or pruner.get("_target_") == NOP_PRUNER["_target_"]:
        return pruner
    why = "a multi-objective study" if len(names) > 1 else f"objective {names[0]}"
    print(f"[sllmx] pruning does not apply to {why} (Optuna's pruners compare one objective's values during "
          "training): no pruner", flush=True)
    return dict(NOP_PRUNER)


def value_of(record: Any, name: str, metric: str) -> tuple[Optional[float], Optional[str]]:
    """The value of objective ``name`` in a run record, or ``(None, why it is missing)``."""
    dev = record.dev_metric
    if name == metric:
        value, where = dev.best, f"{metric} (best)"
    elif name.startswith("eval_"):
        at = [h for h in dev.history if h.get("step") == dev.best_step and dev.best_step is not None]
        value, where = (at[-1].get("metrics") or {}).get(name) if at else None, f"{name} at the best step"
    elif name == "peak_memory":
        gpu = getattr(record, "peak_gpu_bytes", None)
        value, where = gpu if gpu else getattr(record, "peak_rss_bytes", None), "peak_memory (GPU or RSS bytes)"
    else:
        value, where = getattr(record, name, None), name
    if value is None:
        return None, f"objective {name}: the run recorded no {where}"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None, f"objective {name}: {value!r} is not a number"
    if not math.isfinite(value):
        return None, f"objective {name} is {value} (not finite)"
    return value, None


def values_of(record: Any, names: list[str], metric: str) -> tuple[Optional[list[float]], Optional[str]]:
    """The objectives' values in a run record, or ``(None, why one is missing)``."""
    values = []
    for name in names:
        value, why = value_of(record, name, metric)
        if why is not None:
            return None, why
        values.append(value)
    return values, None


def show(value: Any) -> str:
    """A told value (a number or a list of them) for the console."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{v:.6g}" for v in value) + "]"
    return f"{value:.6g}"


def pareto_front(study: Any, names: list[str], overrides: Any) -> list[dict[str, Any]]:
    """The study's Pareto front (``study.best_trials``) as ``sweep.json`` lists it: number, values by objective,
    params and the overrides that re-run it (``overrides(params)``), by trial number."""
    return [{"number": t.number, "values": dict(zip(names, t.values)), "params": dict(t.params),
             "overrides": overrides(t.params)} for t in sorted(study.best_trials, key=lambda t: t.number)]


def print_front(study: Any, names: list[str], directions: list[str], space: Any) -> None:
    """The Pareto front on stdout: one line per front trial, its values and parameters."""
    from optuna.trial import TrialState

    from sllmx.sweep.space import overrides_of

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        print("[sllmx] no trial completed", flush=True)
        return
    front = sorted(study.best_trials, key=lambda t: t.number)
    goal = ", ".join(f"{d} {n}" for d, n in zip(directions, names))
    print(f"[sllmx] Pareto front ({goal}): {len(front)} trial(s)", flush=True)
    for t in front:
        values = "  ".join(f"{n}={v:.6g}" for n, v in zip(names, t.values))
        print(f"[sllmx] front trial {t.number}: {values}  {' '.join(overrides_of(space, t.params))}", flush=True)
