""":class:`OptunaSweep`: what a ``hydra/sweeper=sllmx_optuna`` run does, from the composed config to ``sweep.json``.

It parses the search space, picks the dev metric and the study's name and folder, opens the study, and runs
the :class:`~sllmx.sweep.loop.AskTellLoop` with two pieces of sllmx knowledge: the job overrides (the trial's
parameters plus ``trial.*``, which tells a job which trial it serves; the job's trial plugin,
``sllmx_plugins.trials``, reports every dev evaluation to it) and :func:`judge`, which reads a job's run
record as an outcome.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sllmx.errors import SllmxError
from sllmx.study import mask_url
from sllmx.sweep.loop import AskTellLoop, Outcome
from sllmx.sweep.objectives import NOP_PRUNER, pruner_for, resolve, values_of
from sllmx.sweep.results import SweepResults
from sllmx.sweep.space import format_value, overrides_of, parse_search_space
from sllmx.sweep.study import Samplers, default_study_name, open_study

log = logging.getLogger("sllmx.sweeper")


def judge(record: Any, metric: str, objectives: Optional[list[str]] = None) -> Outcome:
    """A completed job's run record as the study's outcome: COMPLETE with the best ``metric`` value (or, for
    other ``objectives``, their values: a list when there are several), PRUNED, or FAIL (another dev metric,
    a non-finite value, a missing objective, another status)."""
    steps = getattr(record, "global_steps", None)
    status = getattr(record, "status", None)
    dev = getattr(record, "dev_metric", None)
    if dev is None or dev.name != metric:
        return Outcome("FAIL", error=f"the job's dev metric is {getattr(dev, 'name', None)}, not the study's {metric}",
                       steps=steps)
    if status == "PRUNED":
        return Outcome("PRUNED", steps=steps, note=record.pruned)
    if status != "COMPLETE":
        return Outcome("FAIL", error=f"the job returned status {status}", steps=steps)
    if dev.best is None or not math.isfinite(dev.best):
        return Outcome("FAIL", error=f"{metric} is {dev.best} (no finite dev metric)", steps=steps)
    if not objectives or objectives == [metric]:
        return Outcome("COMPLETE", value=dev.best, steps=steps)
    values, why = values_of(record, objectives, metric)
    if values is None:
        return Outcome("FAIL", error=why, steps=steps)
    return Outcome("COMPLETE", value=values if len(values) > 1 else values[0], steps=steps)


def _node(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})


def rerun_command(config: DictConfig) -> str:
    """``python -m sllmx``, with the ``--config-dir`` and ``--config-name`` the sweep was started with."""
    import shlex

    words = ["python", "-m", "sllmx"]
    for source in config.hydra.runtime.get("config_sources") or []:
        if source.provider == "command-line":
            words.append(f"--config-dir={shlex.quote(str(source.path).removeprefix('file://'))}")
    name = config.hydra.job.get("config_name")
    if name and name != "config":
        words.append(f"--config-name={shlex.quote(str(name))}")
    return " ".join(words)


def custom_space(path: str, config: DictConfig, fixed: list[str]) -> Callable[[Any], None]:
    """``hydra.sweeper.custom_search_space``: the function ``path`` names (``module.function``, Hydra's
    ``get_method``), called as Hydra's Optuna sweeper calls it, ``function(config, trial)``, after the search
    space is sampled.  A parameter it suggests that a fixed override also sets is an error, as in the peer.

    Raises:
        SllmxError: when ``path`` names no function; (from the returned function) when the function raises or
            suggests a fixed key.
    """
    from hydra.utils import get_method

    try:
        function = get_method(path)
    except Exception as exc:  # Hydra's ImportError/ValueError text names the module and what is missing
        raise SllmxError(f"hydra.sweeper.custom_search_space={path}: {str(exc).strip().splitlines()[0]}") from None
    fixed_keys = {line.split("=", 1)[0].lstrip("+~") for line in fixed}

    def extend(trial: Any) -> None:
        try:
            function(config, trial)
        except Exception as exc:  # its own bug, or a suggestion Optuna refuses: one line (SLLMX_TRACEBACK=1: all)
            raise SllmxError(f"hydra.sweeper.custom_search_space={path} raised {type(exc).__name__}: {exc}") from exc
        overlap = sorted(fixed_keys & {name.lstrip("+~") for name in trial.params})
        if overlap:
            raise SllmxError(f"hydra.sweeper.custom_search_space={path} suggested {overlap[0]}, which an override "
                             "fixes; remove one of them")

    return extend


class OptunaSweep:
    """The sweep a ``hydra/sweeper=sllmx_optuna`` run performs; arguments: ``SllmxOptunaSweeperConf``'s fields
    (:mod:`sllmx.sweep.config`), ``sampler`` and ``pruner`` being their config nodes (not instantiated)."""

    def __init__(self, sampler: Any, pruner: Any, study_name: Optional[str] = None, storage: Optional[str] = None,
                 direction: Any = None, n_trials: int = 20, n_jobs: int = 1,
                 params: Optional[dict[str, str]] = None, heartbeat_interval: int = 60, max_retry: int = 2,
                 max_failure_rate: float = 1.0, custom_search_space: Optional[str] = None,
                 objectives: Optional[list[str]] = None):
        self.sampler, self.pruner = _node(sampler), _node(pruner)
        self.study_name, self.storage, self.direction, self.objectives = study_name, storage, direction, objectives
        self.n_trials, self.n_jobs, self.params = n_trials, n_jobs, dict(params or {})
        self.heartbeat_interval, self.max_retry = heartbeat_interval, max_retry
        self.max_failure_rate, self.custom_search_space = max_failure_rate, custom_search_space

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> Any:
        """Run trials until the study has ``n_trials`` COMPLETE/PRUNED/FAIL trials; write ``sweep.json``.

        Returns:
            the study's best ``FrozenTrial`` (None when no trial completed; for several objectives: see sweep.json).

        Raises:
            SllmxError: for a bad search space, sampler or pruner argument, storage or study (before any job).
        """
        import optuna

        self._prepare(arguments)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = open_study(self.study_name, self.storage, self.directions, self.metric, self.samplers.build(
            self.samplers.seed), self.pruner, self.heartbeat_interval, self.max_retry, self.objectives)
        choices = self.config.hydra.runtime.choices  # the group options' names; a node given otherwise: its class
        sampler = choices.get("hydra/sweeper/sampler") or self.sampler.get("_target_")
        pruner = "nop" if self.pruner == NOP_PRUNER else choices.get("hydra/sweeper/pruner") or self.pruner["_target_"]
        print(f"[sllmx] study {self.study_name}: {self.n_trials} trials, "
              f"{', '.join(f'{d} {o}' for d, o in zip(self.directions, self.objectives))}, "
              f"sampler {sampler}, pruner {pruner}\n"
              f"[sllmx] storage {mask_url(self.storage)}; sweep dir {self.sweep_dir}", flush=True)
        for p in self.space:  # what each parameter means to Optuna (range() excludes its stop, as in Hydra)
            print(f"[sllmx]   {p.key}: {p.distribution!r}", flush=True)
        if self.extend:
            print(f"[sllmx]   and what custom_search_space={self.custom_search_space} suggests", flush=True)
        results = SweepResults(self.study_name, self.storage, self.direction, self.metric, self.sampler,
                               self.pruner, self.n_trials, self.space, self.fixed, self.sweep_dir,
                               rerun_command(self.config), self.objectives, self.directions)
        AskTellLoop(study, self.space, self.samplers, self.launcher, (self.storage, self.study_name), self.n_trials,
                    self.n_jobs, self.heartbeat_interval, self._job_overrides,
                    lambda number: str(self.sweep_dir / str(number)),
                    lambda record: judge(record, self.metric, self.objectives),
                    lambda: results.write(study), self.max_failure_rate, self.extend).run()
        best = results.write(study)
        results.print_best(study, best)
        from sllmx.plugins import registry

        results.publish(self.config.get("logger"), registry())
        return best

    def _prepare(self, arguments: list[str]) -> None:
        """Check the options, parse the search space, build the sampler and pruner once (fail fast), and fix
        the dev metric, direction, study name, sweep folder and storage."""
        from sllmx.study import pruner_from_spec

        if self.n_trials < 1 or self.n_jobs < 1:
            raise SllmxError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be at least 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise SllmxError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: must be between 0.0 and 1.0")
        self.space, self.fixed = parse_search_space(arguments, self.params)
        if not self.space:
            raise SllmxError("nothing to sweep: give a search space, e.g. 'trainer.learning_rate=tag(log, "
                             "interval(1e-5, 1e-3))' or sweep=<name> (see sweeps/)")
        self.metric, higher = self._dev_metric()
        self.objectives, self.directions = resolve(self.direction, self.objectives, self.metric, higher)
        self.samplers = Samplers(self.sampler, self.space)
        self.samplers.check(len(self.objectives))
        self.extend = self.custom_search_space and custom_space(self.custom_search_space, self.config, self.fixed)
        pruner_from_spec(self.pruner)
        self.pruner = pruner_for(self.objectives, self.metric, self.pruner)
        self.direction = self.directions[0] if len(self.directions) == 1 else self.directions
        choices = self.config.hydra.runtime.choices
        swept = {p.name for p in self.space}
        prefix = choices.get("sweep") or "-".join(
            "any" if group in swept else str(choices.get(group)) for group in ("method", "trainer"))
        settings = {"sampler": self.sampler, "pruner": self.pruner, "direction": self.direction,
                    "metric": self.metric, **({"custom_search_space": self.custom_search_space} if self.extend else {}),
                    **({"objectives": self.objectives} if self.objectives != [self.metric] else {})}
        self.study_name = self.study_name or default_study_name(prefix, self.fixed, self.space, settings)
        with read_write(self.config.hydra), open_dict(self.config.hydra):
            self.config.hydra.sweeper.study_name = self.study_name  # hydra.sweep.dir may name it
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage = self.storage or f"sqlite:///{self.sweep_dir / 'optuna.db'}"
        size = self.samplers.grid_size()
        if size is not None and self.n_trials > size:
            log.warning("sampler=grid: the grid has %d points; n_trials %d lowered to %d", size, self.n_trials, size)
            self.n_trials = size

    def _dev_metric(self) -> tuple[str, bool]:
        """The dev metric the trials report and its direction, from the composed config."""
        from sllmx.dev_metric import dev_metric_of
        from sllmx.plugins import registry

        reg = registry()
        trainer = reg.get("trainer", self.config.trainer.name)
        dm = dev_metric_of(self.config, trainer, reg)
        return dm.name, dm.higher_is_better

    def _job_overrides(self, trial: Any) -> list[str]:
        """A job's overrides: the fixed ones, the trial's parameters, where it runs (the study's folder,
        whatever ``hydra.sweep.dir`` would resolve to in the job), and which trial it serves."""
        q = format_value
        return [*self.fixed, *overrides_of(self.space, trial.params),
                f"hydra.sweeper.study_name={q(self.study_name)}", f"hydra.sweep.dir={q(str(self.sweep_dir))}",
                f"hydra.sweep.subdir={trial.number}", f"trial.study_name={q(self.study_name)}",
                f"trial.storage={q(self.storage)}", f"trial.number={trial.number}"]
