"""``hydra/sweeper=sllmx_optuna``: Optuna (>= 4) search with dev-metric pruning, shipped by sllmx.

    python -m sllmx --multirun sweep=sft_lora model=tiny
    python -m sllmx --multirun hydra/sweeper=sllmx_optuna hydra/sweeper/sampler=random \
        'trainer.learning_rate=tag(log, interval(1e-5, 1e-3))' 'method.r=choice(4, 8, 16, 32)' \
        hydra.sweeper.n_trials=16

Hydra imports every module of ``hydra_plugins`` at start-up, so this one stays light, like Hydra's own
``optuna_sweeper.py``: the config (and the sampler and pruner groups) come from :mod:`sllmx.sweep.config`,
the work is :class:`sllmx.sweep.sweeper.OptunaSweep`'s.
"""

# No ``from __future__ import annotations``: Hydra's scanner runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
from dataclasses import dataclass, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

from sllmx.config import option
from sllmx.sweep.config import SllmxOptunaSweeperConf, register

register()
__all__ = ["SllmxCompareSweeper", "SllmxOptunaSweeper", "SllmxOptunaSweeperConf"]


class SllmxOptunaSweeper(Sweeper):
    """Hydra's entry to :class:`sllmx.sweep.sweeper.OptunaSweep` (bad input ends the command with one line,
    exit 2).  ``sampler`` and ``pruner`` arrive as config nodes (``_recursive_: false``)."""

    conf: Any = SllmxOptunaSweeperConf

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.impl: Any = None

    def check_keys(self) -> None:
        """A key added with ``+hydra.sweeper.<key>=...`` that the sweeper does not know ends the command with
        Hydra's own message for an unknown key (what ``hydra.sweeper.<key>=...`` without ``+`` prints), not
        with a TypeError traceback."""
        from hydra.errors import ConfigCompositionException

        name = self.conf.__name__
        for key in sorted(set(self.kwargs) - {f.name for f in fields(self.conf)}):
            raise ConfigCompositionException(f"Key '{key}' not in '{name}'\n    full_key: hydra.sweeper.{key}\n"
                                             f"    object_type={name}")

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from sllmx.sweep.sweeper import OptunaSweep

        self.check_keys()
        self.impl = OptunaSweep(**self.kwargs)
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
    sweeps: list[str] = option("finished sweep (or run) folders whose best configurations are compared", [])
    seeds: list[int] = option("seeds each best configuration is trained with", [1, 2, 3])
    by: list[str] = option("config keys that form the groups (a row each)", ["method", "trainer"])
    test: bool = option("evaluate each re-trained run once on the test split (eval.test=true)", True)


ConfigStore.instance().store(group="hydra/sweeper", name="sllmx_compare", node=SllmxCompareSweeperConf,
                             provider="sllmx")


class SllmxCompareSweeper(SllmxOptunaSweeper):
    """Hydra's entry to :class:`sllmx.compare.CompareSweep`."""

    conf = SllmxCompareSweeperConf

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from omegaconf import OmegaConf

        from sllmx.compare import CompareSweep

        self.check_keys()
        kwargs = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in self.kwargs.items()}
        self.impl = CompareSweep(**kwargs)
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
