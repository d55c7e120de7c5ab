"""``hydra/sweeper=sllmx_optuna``: Optuna (>= 4) search with dev-metric pruning, shipped by sllmx.

    python -m sllmx --multirun sweep=sft_lora model=tiny
    python -m sllmx --multirun hydra/sweeper=sllmx_optuna \
        'trainer.learning_rate=tag(log, interval(1e-5, 1e-3))' 'method.r=choice(4, 8, 16, 32)' \
        hydra.sweeper.n_trials=16

Hydra imports every module of ``hydra_plugins`` at start-up, so this one stays light:
the config schema and a class that hands the work to :mod:`sllmx.sweeper`.
"""

# No ``from __future__ import annotations``: Hydra's scanner runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

from sllmx.config import _help


@dataclass
class SllmxOptunaSweeperConf:
    """``hydra.sweeper.*``: the study, its sampler and pruner, and the search space."""

    _target_: str = "hydra_plugins.sllmx_optuna_sweeper.sllmx_optuna_sweeper.SllmxOptunaSweeper"
    study_name: Optional[str] = _help(
        "Optuna study name; null: <sweep or method-trainer>-<hash of the overrides and search space>, so the "
        "same command resumes the same study", None)
    storage: Optional[str] = _help(
        "Optuna storage URL (sqlite:///..., postgresql://user@host/db, mysql+pymysql://...); "
        "null: sqlite:///<sweep dir>/optuna.db", None)
    direction: Optional[str] = _help("minimize or maximize; null: from the dev metric's higher_is_better", None)
    n_trials: int = _help("trials in the study (COMPLETE + PRUNED + FAIL); running again resumes up to this", 20)
    n_jobs: int = _help("trials launched at once (one launcher batch); parallel with joblib/submitit/ray", 1)
    seed: Optional[int] = _help("sampler seed", 0)
    sampler: str = _help("tpe, random, grid or cmaes", "tpe")
    sampler_kwargs: dict[str, Any] = _help("keyword arguments of the Optuna sampler class", {})
    pruner: str = _help("median, percentile, successive_halving, hyperband or none", "median")
    pruner_kwargs: dict[str, Any] = _help("keyword arguments of the Optuna pruner class", {})
    params: dict[str, str] = _help(
        "search space {config key: choice(...) | range(...) | interval(...) | tag(log, ...)}; "
        "command-line sweeps of the same key win", {})
    heartbeat_interval: int = _help(
        "seconds between heartbeats of running trials; a trial silent for twice this long (its worker was "
        "killed) is marked FAIL and re-queued with the same parameters", 60)
    max_retry: int = _help("re-queue a killed trial at most this many times", 2)
    evaluate_best_on_test: bool = _help(
        "after the search, train the best trial's configuration once more and evaluate it once on the test split",
        False)


ConfigStore.instance().store(group="hydra/sweeper", name="sllmx_optuna", node=SllmxOptunaSweeperConf,
                             provider="sllmx")


class SllmxOptunaSweeper(Sweeper):
    """Hydra's entry to :class:`sllmx.sweeper.OptunaSweep` (bad input ends the command with one line, exit 2)."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.impl: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from omegaconf import OmegaConf

        from sllmx.sweeper import OptunaSweep

        kwargs = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in self.kwargs.items()}
        self.impl = OptunaSweep(**kwargs)
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from sllmx.errors import SllmxError, exit_with

        try:
            return self.impl.sweep(arguments)
        except SllmxError as exc:
            exit_with(exc)


@dataclass
class SllmxCompareSweeperConf:
    """``hydra.sweeper.*`` of ``sweep=compare``: re-train each group's best configuration on several seeds."""

    _target_: str = "hydra_plugins.sllmx_optuna_sweeper.sllmx_optuna_sweeper.SllmxCompareSweeper"
    sweeps: list[str] = _help("finished sweep (or run) folders whose best configurations are compared", [])
    seeds: list[int] = _help("seeds each best configuration is trained with", [1, 2, 3])
    by: list[str] = _help("config keys that form the groups (a row each)", ["method", "trainer"])
    test: bool = _help("evaluate each re-trained run once on the test split (eval.test=true)", True)


ConfigStore.instance().store(group="hydra/sweeper", name="sllmx_compare", node=SllmxCompareSweeperConf,
                             provider="sllmx")


class SllmxCompareSweeper(SllmxOptunaSweeper):
    """Hydra's entry to :class:`sllmx.compare.CompareSweep`."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from omegaconf import OmegaConf

        from sllmx.compare import CompareSweep

        kwargs = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in self.kwargs.items()}
        self.impl = CompareSweep(**kwargs)
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
