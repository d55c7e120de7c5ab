"""``python -m sllmx``: the Hydra app.  Plugins are loaded and their config schemas stored
in Hydra's ConfigStore before Hydra composes the config; torch, transformers, peft and
trl are imported only when a run starts (``--help`` and ``--cfg job`` stay fast)."""

from __future__ import annotations

import os

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from sllmx.config import SllmxConfig
from sllmx.errors import Interrupted, SllmxError, exit_with
from sllmx.plugins import register_configs, registry


def _setup() -> None:
    """Load plugins and store every config schema (top level, methods, trainers, sources); register the
    config tree's resolvers (:mod:`sllmx.validate`)."""
    import sllmx.validate  # noqa: F401  (the sllmx_help_config and sllmx_sft_learning_rate resolvers)

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

    _setup()
    try:
        with initialize_config_module(config_module="sllmx.conf", version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise SllmxError(str(exc).splitlines()[0]) from exc
    validate_config(cfg)  # every option within its declared range, as python -m sllmx checks it
    return cfg


def summary(record) -> str:
    """The lines printed at the end of a run: the task metric before → after (the data's generation metric,
    e.g. json_exact, when it has one), the dev metric that selected the checkpoint, the cost, where
    run.json is."""
    from sllmx.progress import fmt

    dm = record.dev_metric
    direction = lambda higher: "higher" if higher else "lower"  # noqa: E731
    steps = f"{record.global_steps} steps" if record.global_steps is not None else "no steps"
    lines = [f"status: {record.status} ({steps}, wall time {fmt(record.wall_time_s)} s)"]
    first = dm.history[0]["metrics"] if dm.history else {}
    best = next((h["metrics"] for h in dm.history[1:] if h["step"] == dm.best_step),
                dm.history[-1]["metrics"] if dm.history else {})
    shown = {dm.name}
    task = (record.config.get("data") or {}).get("metric")
    if task and best:
        try:
            metric = registry().get("metric", task)
        except SllmxError:
            metric = None
        keys = [f"eval_{k}" for k in (metric.keys if metric else ()) if f"eval_{k}" in best]
        if keys:
            lines.append(f"task metric {task} on the dev split ({direction(metric.higher_is_better)} is better), "
                         f"before training -> the selected checkpoint (step {dm.best_step}):")
            width = max(len(k) for k in keys) - 5
            lines += [f"  {k[5:]:<{width}}  {fmt(first.get(k))} -> {fmt(best.get(k))}" for k in keys]
            shown.update(keys)
    lines.append(f"dev metric {dm.name} ({direction(dm.higher_is_better)} is better; selects the checkpoint): "
                 f"before {fmt(dm.baseline)} -> best {fmt(dm.best)} (step {dm.best_step}), final {fmt(dm.final)}")
    rest = [k for k in sorted(best) if k.startswith("eval_") and k not in shown
            and not k.endswith(("runtime", "per_second", "preparation_time", "num_tokens"))]
    if rest:
        lines.append("  at the selected step: " + ", ".join(f"{k} {fmt(first.get(k))} -> {fmt(best[k])}"
                                                           for k in rest))
    if record.trainable_params:
        lines.append(f"trainable parameters: {record.trainable_params:,} of {record.total_params:,} "
                     f"({100 * record.trainable_params / record.total_params:.3f}%)")
    if record.train_tokens_per_s:
        lines.append(f"train tokens: {record.train_tokens:,} ({record.train_tokens_per_s:.1f} tokens/s in the training "
                     f"steps)")
    lines.append(f"record: {os.path.join(record.output_dir, 'run.json')}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://sllmx.conf", config_name="config")
def app(cfg: DictConfig):
    """Run one experiment; return its :class:`~sllmx.records.RunRecord` (a sweeper reads the
    status and dev metric from it).  In a multirun, bad input fails only this job (the
    sweeper records it as a failed trial and goes on); in a single run it ends the command."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sllmx.progress import quiet_console
    from sllmx.run import run
    from sllmx.runtime import launched_rank

    quiet_console()  # a multirun's console keeps one line per trial; the run's lines go to its log file
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        record = run(cfg)
    except SllmxError as exc:
        if multirun:
            raise
        exit_with(exc)
    except Interrupted as exc:
        if multirun:
            raise KeyboardInterrupt(str(exc)) from None
        _interrupted(exc, cfg)
    except FloatingPointError as exc:  # training diverged: a fault of the run, told in one line (exit 1)
        if multirun:
            raise
        import sys
        import traceback

        if os.environ.get("SLLMX_TRACEBACK"):
            traceback.print_exception(exc)
        sys.stderr.write(f"sllmx: error: training diverged: {exc}; {cfg.output_dir}/run.json records FAIL "
                         f"(a lower trainer.learning_rate may help)\n")
        sys.exit(1)
    if launched_rank() == 0:  # several processes: the main one speaks for the run
        if multirun:  # the sweeper prints the trial's line; the summary goes to the trial's log file
            import logging

            logging.getLogger("sllmx").info(summary(record))
        else:
            print(summary(record))
    return record


def _interrupted(exc: Interrupted, cfg: DictConfig) -> None:
    """One line for a run stopped by a signal (run.json says INTERRUPTED), then exit 128 + the signal."""
    import sys

    from sllmx.runtime import launched_rank

    if launched_rank() == 0:
        out = cfg.output_dir
        sys.stderr.write(f"sllmx: {exc.signal}: run stopped at step {exc.step or 0}; {out}/run.json says "
                         f"INTERRUPTED; continue it with: python -m sllmx resume={out}\n")
        sys.stderr.flush()
    sys.exit(exc.exit_status)


def main() -> None:
    """Console entry point (``sllmx`` / ``python -m sllmx``): load plugins, check the launch
    (:func:`sllmx.runtime.check_launch`), then run the Hydra app."""
    import sys

    from sllmx.resume import AlreadyComplete, prepare_argv
    from sllmx.runtime import check_launch

    _setup()
    argv = sys.argv[1:]
    if "--quiet" in argv:  # no bars and no per-evaluation lines on the console (the log file keeps them)
        argv = [a for a in argv if a != "--quiet"]
        os.environ["SLLMX_QUIET"] = "1"
    try:
        sys.argv[1:] = check_launch(prepare_argv(argv))
    except AlreadyComplete as exc:
        print(f"sllmx: {exc}")
        sys.exit(0)
    except SllmxError as exc:
        exit_with(exc)
    try:
        app()
    except KeyboardInterrupt:  # a signal outside the run (Hydra starting, a sweep between trials)
        sys.stderr.write("sllmx: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
