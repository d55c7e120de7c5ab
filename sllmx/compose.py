"""Loading the plugins into Hydra's ConfigStore and composing a run config the way ``python -m sllmx`` does,
for the commands and tools that need a config without running one (``python -m sllmx.data check``,
``sllmx.evaluate``, ``sllmx.chat``, the tests).  Imports neither torch nor transformers."""

from __future__ import annotations


from hydra.core.config_store import ConfigStore

from sllmx.config import SllmxConfig
from sllmx.errors import SllmxError, exit_with
from sllmx.plugins import register_configs, registry


def setup() -> None:
    """Load plugins and store every config schema (top level, methods, trainers, sources); register the
    config tree's resolvers (:mod:`sllmx.validate`)."""
    import sllmx.validate  # noqa: F401  (the sllmx_help_config and sllmx_learning_rate resolvers)

    try:
        register_configs(registry())
    except SllmxError as exc:
        exit_with(exc)
    ConfigStore.instance().store(name="sllmx_schema", node=SllmxConfig)
    # Hydra deep-copies its config sources for every group it lists (80 times for --help), and with
    # them the global ConfigStore: ~7 ms each, over half of --help's time.  The store is a singleton
    # that is only read after this point, and ConfigStore.load() deep-copies every node it returns,
    # so the copies may share it (benchmarks/startup.py measures the difference).
    ConfigStore.__deepcopy__ = lambda self, memo: self


def compose(overrides: list[str]):
    """The run config composed by Hydra from ``overrides`` (plugins loaded first, as ``python -m sllmx`` does)
    and validated (:func:`sllmx.validate.validate_config`).

    Raises:
        SllmxError: an unknown option or key, or a value outside its allowed range (one line).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sllmx.validate import validate_config

    setup()
    try:
        with initialize_config_module(config_module="sllmx.conf", version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise SllmxError(str(exc).splitlines()[0]) from exc
    validate_config(cfg)  # every option within its declared range, as python -m sllmx checks it
    return cfg
