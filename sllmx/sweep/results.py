"""The results of a sweep: ``sweep.json`` (from the study's storage, so it lists every worker's trials) and
Hydra's Optuna sweeper's ``optimization_results.yaml`` beside it, the best trial on the console with the command
that re-runs it, and with ``logger=wandb`` a summary run."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sllmx.atomic import write_json_atomic, write_text_atomic
from sllmx.study import mask_url
from sllmx.sweep.objectives import pareto_front, print_front
from sllmx.sweep.space import Param, overrides_of
from sllmx.sweep.study import ERROR_ATTR, RUN_DIR_ATTR, STEPS_ATTR

SWEEP_FILE = "sweep.json"
#: the file Hydra's Optuna sweeper writes into the sweep folder: ``name: optuna``, ``best_params``, ``best_value``
PEER_FILE = "optimization_results.yaml"


def trial_entry(t: Any) -> dict[str, Any]:
    """One trial (an Optuna ``FrozenTrial``) as ``sweep.json`` lists it."""
    duration = None
    if t.datetime_start and t.datetime_complete:
        duration = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
    return {
        "number": t.number,
        "state": t.state.name,
        "params": dict(t.params),
        "value": t.values[0] if t.values and len(t.values) == 1 else None,
        **({"values": list(t.values)} if t.values and len(t.values) > 1 else {}),
        "last_value": t.intermediate_values[t.last_step] if t.last_step is not None else None,
        "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "global_steps": t.user_attrs.get(STEPS_ATTR),
        "duration_s": duration,
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "run_dir": t.user_attrs.get(RUN_DIR_ATTR),
        "error": t.user_attrs.get(ERROR_ATTR) or (
            "its worker stopped (its process is gone, or a stale heartbeat); re-queued" if t.state.name == "FAIL" else None),
        "retry_of": t.system_attrs.get("failed_trial"),
    }


@dataclass
class SweepResults:
    """What ``sweep.json`` says about the study besides its trials, and where it is written.

    ``sampler`` and ``pruner`` are their config nodes (``_target_`` and arguments); ``fixed`` the overrides
    every trial shares; ``command`` how the re-run command starts (with ``--config-dir`` / ``--config-name``
    when the sweep used them)."""

    study_name: str
    storage: str
    direction: str
    metric: str
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    n_trials: int
    space: list[Param]
    fixed: list[str]
    sweep_dir: Path
    command: str = "python -m sllmx"
    objectives: Optional[list[str]] = None
    directions: Optional[list[str]] = None

    @property
    def multi(self) -> bool:
        return len(self.objectives or []) > 1

    @property
    def path(self) -> Path:
        return self.sweep_dir / SWEEP_FILE

    def write(self, study: Any) -> Optional[Any]:
        """Write ``sweep.json`` (atomically) from the study's storage; return the best trial or None."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        done = any(t.state == TrialState.COMPLETE for t in trials)
        best = study.best_trial if done and not self.multi else None
        front = pareto_front(study, self.objectives, self._overrides) if done and self.multi else []
        write_json_atomic(self.path, {
            "schema_version": 2,
            "study_name": self.study_name,
            "storage": mask_url(self.storage),
            "direction": self.direction,
            "metric": self.metric,
            "objectives": list(self.objectives or [self.metric]),
            "directions": list(self.directions or [self.direction]),
            "sampler": dict(self.sampler),
            "pruner": dict(self.pruner),
            "n_trials": self.n_trials,
            "search_space": {p.key: repr(p.distribution) for p in self.space},
            "fixed_overrides": list(self.fixed),
            "counts": {s.name: sum(t.state == s for t in trials) for s in TrialState},
            "total_train_steps": sum(t.user_attrs.get(STEPS_ATTR) or 0 for t in trials),
            "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "trials": [trial_entry(t) for t in trials],
            "best_trial": None if best is None else {
                **trial_entry(best), "overrides": self._overrides(best.params)},
            **({"pareto_front": front} if self.multi else {}),
        })
        if best is not None:
            self.write_peer_file(best)
        return best

    def _overrides(self, params: dict[str, Any]) -> list[str]:
        return [*self.fixed, *overrides_of(self.space, params)]

    def write_peer_file(self, best: Any) -> None:
        """``optimization_results.yaml`` as Hydra's Optuna sweeper writes it (``_impl.py``): ``name: optuna``,
        ``best_params`` (by override key, ``+`` kept) and ``best_value``."""
        from omegaconf import OmegaConf

        keys = {p.name: p.key for p in self.space}
        doc = {"name": "optuna", "best_params": {keys.get(k, k): v for k, v in best.params.items()},
               "best_value": best.value}
        write_text_atomic(self.sweep_dir / PEER_FILE, OmegaConf.to_yaml(OmegaConf.create(doc)))

    def print_best(self, study: Any, best: Optional[Any]) -> None:
        """The counts per state, the best trial and the command that re-runs it, on stdout."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = ", ".join(f"{sum(t.state == s for t in trials)} {s.name}"
                           for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        print(f"[sllmx] study {self.study_name}: {len(trials)} trials ({counts}); results: {self.path}", flush=True)
        if self.multi:
            print_front(study, self.objectives, self.directions, self.space)
            return
        if best is None:
            print("[sllmx] no trial completed", flush=True)
            return
        overrides = " ".join(overrides_of(self.space, best.params))
        print(f"[sllmx] best trial {best.number}: {self.metric}={best.value:.6g}  {overrides}\n"
              f"[sllmx] re-run it: {self.command} {' '.join([*self.fixed, overrides])}", flush=True)

    def publish(self, logger: Any, registry: Any) -> None:
        """Hand the study to the run's logger plugin (``logger``: the config's ``logger`` node;
        :meth:`sllmx.interfaces.Logger.publish` with ``kind="sweep"``): the trials table, the counts and the
        best trial, in the study's group.  ``logger=none`` takes nothing; a failure is one warning line."""
        if logger is None:
            return
        from sllmx.loggers import publish

        doc = json.loads(self.path.read_text(encoding="utf-8"))
        keys = [p.name for p in self.space]
        names = doc["objectives"] if "pareto_front" in doc else []  # a multi-objective study: a column each
        rows = [{"number": t["number"], "state": t["state"], "value": t["value"],
                 **{f"value/{o}": v for o, v in zip(names, t.get("values") or [None] * len(names))},
                 "global_steps": t["global_steps"],
                 "duration_s": t["duration_s"], **{k: t["params"].get(k) for k in keys}, "run_dir": t["run_dir"]}
                for t in doc["trials"]]
        best = doc["best_trial"]
        summary = {"counts": doc["counts"], "total_train_steps": doc["total_train_steps"],
                   **({"pareto_front": [t["number"] for t in doc["pareto_front"]]} if "pareto_front" in doc else {}),
                   **({"best/number": best["number"], "best/value": best["value"],
                       **{f"best/{k}": v for k, v in best["params"].items()}} if best else {})}
        config = {"study": {k: doc[k] for k in ("study_name", "direction", "metric", "sampler", "pruner", "n_trials",
                                                "search_space")}}
        publish(registry, logger, title=f"{self.study_name}-summary", rows=rows, summary=summary, config=config,
                group=logger.get("group") or self.study_name, kind="sweep", folder=self.sweep_dir)
