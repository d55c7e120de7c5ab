"""``python -m sllmx``: the Hydra app.  Plugins are loaded and their config schemas stored
in Hydra's ConfigStore before Hydra composes the config; torch, transformers, peft and
trl are imported only when a run starts (``--help`` and ``--cfg job`` stay fast)."""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from sllmx.compose import setup
from sllmx.errors import Interrupted, SllmxError, exit_with
from sllmx.summary import summary

__all__ = ["app", "main"]


@hydra.main(version_base="1.3", config_path="pkg://sllmx.conf", config_name="config")
def app(cfg: DictConfig):
    """Run one experiment; return its :class:`~sllmx.records.RunRecord` (a sweeper reads the
    status and dev metric from it).  In a multirun, bad input fails only this job (the
    sweeper records it as a failed trial and goes on); in a single run it ends the command."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sllmx.progress import quiet_console
    from sllmx.run import run
    from sllmx.launch import launched_rank

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
        exit_with(exc, f"training diverged: {exc}; {cfg.output_dir}/run.json records FAIL (a lower "
                       f"trainer.learning_rate may help)", status=1)
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

    from sllmx.launch import launched_rank

    if launched_rank() == 0:
        out = cfg.output_dir
        sys.stderr.write(f"sllmx: {exc.signal}: run stopped at step {exc.step or 0}; {out}/run.json says "
                         f"INTERRUPTED; continue it with: python -m sllmx resume={out}\n")
        sys.stderr.flush()
    sys.exit(exc.exit_status)


def main() -> None:
    """Console entry point (``sllmx`` / ``python -m sllmx``): load plugins, check the launch
    (:func:`sllmx.launch.check_launch`), then run the Hydra app."""
    import sys

    from sllmx.resume import AlreadyComplete, prepare_argv
    from sllmx.launch import check_launch

    setup()
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
