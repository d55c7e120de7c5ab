"""``python -m sllmx``: the Hydra app.  Plugins are loaded and their config schemas stored
in Hydra's ConfigStore before Hydra composes the config; torch, transformers, peft and
trl are imported only when a run starts (``--help`` and ``--cfg job`` stay fast)."""

from __future__ import annotations

import os

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from sllmx.config import SllmxConfig
from sllmx.errors import SllmxError, exit_with
from sllmx.plugins import register_configs, registry


def _setup() -> None:
    """Load plugins and store every config schema (top level, methods, trainers, sources)."""
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
    """The run config composed by Hydra from ``overrides`` (plugins loaded first, as ``python -m sllmx`` does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _setup()
    try:
        with initialize_config_module(config_module="sllmx.conf", version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise SllmxError(str(exc).splitlines()[0]) from exc


def summary(record) -> str:
    """The lines printed at the end of a run: dev metric before → after, where run.json is."""
    dm = record.dev_metric
    direction = "higher" if dm.higher_is_better else "lower"
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"status: {record.status}",
             f"dev metric {dm.name} ({direction} is better): before {fmt(dm.baseline)} -> best {fmt(dm.best)} "
             f"(step {dm.best_step}), final {fmt(dm.final)}"]
    if dm.history:
        first = dm.history[0]["metrics"]
        best = next((h["metrics"] for h in dm.history[1:] if h["step"] == dm.best_step), dm.history[-1]["metrics"])
        for key in sorted(k for k in best if k.startswith("eval_") and k != dm.name
                          and not k.endswith(("runtime", "per_second", "preparation_time", "num_tokens"))):
            lines.append(f"  {key}: before {fmt(first.get(key))} -> at best step {fmt(best.get(key))}")
    if record.trainable_params:
        lines.append(f"trainable parameters: {record.trainable_params:,} of {record.total_params:,} "
                     f"({100 * record.trainable_params / record.total_params:.3f}%)")
    if record.train_tokens_per_s:
        lines.append(f"train tokens: {record.train_tokens:,} ({record.train_tokens_per_s:.1f} tokens/s in the training "
                     f"steps); wall time {record.wall_time_s:.1f} s")
    lines.append(f"record: {os.path.join(record.output_dir, 'run.json')}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://sllmx.conf", config_name="config")
def app(cfg: DictConfig):
    """Run one experiment; return its :class:`~sllmx.records.RunRecord` (a sweeper reads the
    status and dev metric from it).  In a multirun, bad input fails only this job (the
    sweeper records it as a failed trial and goes on); in a single run it ends the command."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sllmx.run import run

    from sllmx.runtime import launched_rank

    try:
        record = run(cfg)
    except SllmxError as exc:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        exit_with(exc)
    if launched_rank() == 0:  # several processes: the main one speaks for the run
        print(summary(record))
    return record


def main() -> None:
    """Console entry point (``sllmx`` / ``python -m sllmx``): load plugins, check the launch
    (:func:`sllmx.runtime.check_launch`), then run the Hydra app."""
    import sys

    from sllmx.runtime import check_launch

    _setup()
    try:
        sys.argv[1:] = check_launch(sys.argv[1:])
    except SllmxError as exc:
        exit_with(exc)
    app()


if __name__ == "__main__":
    main()
