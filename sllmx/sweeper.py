"""The Optuna sweeper behind ``hydra/sweeper=sllmx_optuna``: search space, study, trial loop, ``sweep.json``.

The loop is Optuna's ask-and-tell interface driven through Hydra's launcher: ask a batch
of ``n_jobs`` trials, turn their parameters into Hydra overrides (plus ``trial.*``, which
tells each job which trial it serves), launch the batch, and tell the study each job's
outcome (COMPLETE with the best dev metric, PRUNED, or FAIL with its error).  The jobs
report every dev evaluation to their trial themselves (:mod:`sllmx.trial`), so pruning
works with any launcher.  While a batch runs, a thread records heartbeats for its
trials; a trial whose heartbeat stops (its sweeper was killed) is failed by the next
sweeper on the same storage and re-queued with the same parameters.

References: Optuna ask-and-tell (https://optuna.readthedocs.io/en/stable/tutorial/20_recipes/009_ask_and_tell.html),
heartbeat and ``RetryHeartbeatStaleTrialCallback`` (https://optuna.readthedocs.io/en/stable/reference/generated/optuna.storages.RDBStorage.html),
Hydra's extended override grammar (https://hydra.cc/docs/advanced/override_grammar/extended/).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, open_dict, read_write

from sllmx.errors import SllmxError
from sllmx.records import write_json_atomic
from sllmx.study import ACTIVE, METRIC_ATTR, PRUNER_ATTR, build_pruner, make_storage, mask_url

log = logging.getLogger("sllmx.sweeper")

SWEEP_FILE = "sweep.json"
SAMPLERS = ("tpe", "random", "grid", "cmaes")
#: trial user attributes the sweeper writes
RUN_DIR_ATTR, ERROR_ATTR, STEPS_ATTR = "sllmx_run_dir", "sllmx_error", "sllmx_global_steps"
#: study user attribute: the best configuration's one test-split evaluation
BEST_ON_TEST_ATTR = "sllmx_best_on_test"


@dataclass
class Param:
    """One swept parameter: its Optuna distribution and how to write a value back as an override."""

    name: str            # the config key or group, e.g. ``trainer.learning_rate`` or ``method``
    key: str             # as written on the command line, with any ``+``/``++`` prefix
    distribution: Any    # optuna.distributions.BaseDistribution
    grid: Optional[list] = None  # the finite values, for the grid sampler

    def override(self, value: Any) -> str:
        return f"{self.key}={format_value(value)}"


def format_value(value: Any) -> str:
    """A parameter value as Hydra override text (strings quoted unless they are plain words)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not re.fullmatch(r"[\w.\-/]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def parse_search_space(arguments: list[str], params: dict[str, str]) -> tuple[list[Param], list[str]]:
    """Split Hydra overrides into swept parameters and fixed overrides.

    Grammar (Hydra's, as in the Hydra Optuna sweeper): ``choice(a, b, ...)`` and
    ``a,b,...`` → categorical; ``range(start, stop[, step])`` → int or float with a step
    (``stop`` excluded, as in Python); ``interval(low, high)`` → float, or int when cast
    with ``int(interval(...))``; ``tag(log, ...)`` samples on a log scale.
    ``params`` (``hydra.sweeper.params``, from a ``sweeps/`` file) use the same
    grammar; a command-line override of the same key replaces it.

    Returns:
        ``(params, fixed)``: the swept parameters in order, and the non-sweep overrides as written.

    Raises:
        SllmxError: for text the grammar rejects or a sweep Optuna cannot sample (shuffled,
            list-valued or log-scaled choices; a log range with a step other than 1).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()

    def parse(line: str) -> Any:
        try:
            return parser.parse_override(line)
        except HydraException as exc:
            raise SllmxError(f"cannot parse the override {line!r}: {str(exc).splitlines()[0]}") from None

    given = [parse(a) for a in arguments]
    given_keys = {o.key_or_group for o in given}
    from_params = [parse(f"{k}={v}") for k, v in params.items() if k not in given_keys]
    space, fixed = [], []
    for o in from_params + given:
        if o.is_sweep_override():
            space.append(Param(o.key_or_group, o.get_key_element(), *_distribution(o)))
        else:
            fixed.append(o.input_line)
    return space, fixed


def _distribution(override: Any) -> tuple[Any, Optional[list]]:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    name, value = override.key_or_group, override.value()
    log = "log" in value.tags
    if getattr(value, "shuffle", False):
        raise SllmxError(f"{name}: shuffle() has no meaning for the Optuna sweeper; remove it")
    if isinstance(value, ChoiceSweep):
        if log:
            raise SllmxError(f"{name}: tag(log, ...) applies to range() and interval(), not choice()")
        bad = [v for v in value.list if not isinstance(v, (str, int, float, bool, type(None)))]
        if bad:
            raise SllmxError(f"{name}: choice() values must be numbers, strings, booleans or null, not {bad[0]!r}")
        return CategoricalDistribution(list(value.list)), list(value.list)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step <= 0 or stop <= start:
            raise SllmxError(f"{name}: range({start}, {stop}, {step}) is empty; Optuna needs an increasing range")
        count = math.ceil((stop - start) / step - 1e-9)
        values = [start + i * step for i in range(count)]
        if all(isinstance(v, int) for v in (start, stop, step)):
            if log and step != 1:
                raise SllmxError(f"{name}: tag(log, range(...)) needs step 1")
            return IntDistribution(start, values[-1], log=log, step=1 if log else step), values
        if log:
            raise SllmxError(f"{name}: a float range() cannot be log-scaled; use tag(log, interval(low, high))")
        values = [round(v, 12) for v in values]
        return FloatDistribution(start, values[-1], step=step), values
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if not low < high:
            raise SllmxError(f"{name}: interval({low}, {high}) is empty")
        if log and low <= 0:
            raise SllmxError(f"{name}: tag(log, interval({low}, {high})) needs a positive lower bound")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log), None
        return FloatDistribution(float(low), float(high), log=log), None
    raise SllmxError(f"{name}: unsupported sweep {value!r}")


def build_sampler(name: str, kwargs: dict[str, Any], seed: Optional[int], space: list[Param]) -> Any:
    """The Optuna sampler ``name`` (``tpe``, ``random``, ``grid``, ``cmaes``) with Optuna's keyword arguments.

    ``grid`` walks every combination of the ``choice``/``range`` values; ``cmaes``
    (Hansen, 2016, via the ``cmaes`` package) samples int and float parameters and falls
    back to random sampling for categorical ones.

    Raises:
        SllmxError: for an unknown name, bad keyword arguments, an ``interval`` under
            ``grid``, or ``cmaes`` without a numeric parameter.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution

    kwargs = dict(kwargs)
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **kwargs)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **kwargs)
        if name == "grid":
            continuous = [p.name for p in space if p.grid is None]
            if continuous:
                raise SllmxError(f"sampler=grid needs choice() or range() for every swept parameter; "
                                 f"{continuous[0]} is an interval()")
            return _grid_sampler()({p.name: p.grid for p in space}, seed=seed, **kwargs)
        if name == "cmaes":
            if all(isinstance(p.distribution, CategoricalDistribution) for p in space):
                raise SllmxError("sampler=cmaes needs at least one range() or interval() parameter; "
                                 "use tpe or grid for categorical spaces")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **kwargs)
    except (TypeError, ValueError) as exc:
        raise SllmxError(f"hydra.sweeper.sampler_kwargs for {name}: {exc}") from exc
    except ImportError as exc:
        raise SllmxError(f"sampler={name} needs a package that is missing: {exc}") from exc
    raise SllmxError(f"hydra.sweeper.sampler={name}: unknown sampler; available: {', '.join(SAMPLERS)}")


def _grid_sampler() -> type:
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """``GridSampler`` for ask-and-tell: its ``after_trial`` calls ``study.stop()``, which only works
        inside ``study.optimize``; the sweeper stops at the grid's size by itself."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskTellGridSampler


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


class _Heartbeat:
    """Records heartbeats for the running trials of one batch every ``interval`` seconds."""

    def __init__(self, storage: Any, trial_ids: list[int], interval: int):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="sllmx-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as exc:  # a lost connection must not kill the sweep; the next beat retries
                    log.warning("heartbeat of trial id %s failed: %s", trial_id, exc)
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> "_Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class OptunaSweep:
    """The sweep a ``hydra/sweeper=sllmx_optuna`` run performs (fields: see ``SllmxOptunaSweeperConf``)."""

    study_name: Optional[str] = None
    storage: Optional[str] = None
    direction: Optional[str] = None
    n_trials: int = 20
    n_jobs: int = 1
    seed: Optional[int] = 0
    sampler: str = "tpe"
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    heartbeat_interval: int = 60
    max_retry: int = 2
    evaluate_best_on_test: bool = False

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    # -- the study -------------------------------------------------------------------------
    def _prepare(self, arguments: list[str]) -> None:
        if self.n_trials < 1 or self.n_jobs < 1:
            raise SllmxError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be at least 1")
        if self.direction not in (None, "minimize", "maximize"):
            raise SllmxError(f"hydra.sweeper.direction={self.direction}: use minimize, maximize or null "
                             "(null: from the dev metric)")
        self.space, self.fixed = parse_search_space(arguments, dict(self.params or {}))
        if not self.space:
            raise SllmxError("nothing to sweep: give a search space, e.g. 'trainer.learning_rate=tag(log, "
                             "interval(1e-5, 1e-3))' or sweep=<name> (see sweeps/)")
        # fail fast on a bad name or argument, before anything is written
        build_sampler(self.sampler, dict(self.sampler_kwargs or {}), self.seed, self.space)
        build_pruner(self.pruner, dict(self.pruner_kwargs or {}))
        self.metric, higher = self._dev_metric()
        self.direction = self.direction or ("maximize" if higher else "minimize")
        choices = self.config.hydra.runtime.choices
        swept = {p.name for p in self.space}
        prefix = choices.get("sweep") or "-".join(
            "any" if group in swept else str(choices.get(group)) for group in ("method", "trainer"))
        settings = {"sampler": self.sampler, "sampler_kwargs": dict(self.sampler_kwargs or {}), "pruner": self.pruner,
                    "pruner_kwargs": dict(self.pruner_kwargs or {}), "seed": self.seed, "direction": self.direction,
                    "metric": self.metric}
        self.study_name = self.study_name or default_study_name(prefix, self.fixed, self.space, settings)
        with read_write(self.config.hydra), open_dict(self.config.hydra):
            self.config.hydra.sweeper.study_name = self.study_name  # hydra.sweep.dir may name it
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage = self.storage or f"sqlite:///{self.sweep_dir / 'optuna.db'}"
        if self.sampler == "grid":
            size = math.prod(len(p.grid or []) for p in self.space)
            if self.n_trials > size:
                log.warning("sampler=grid: the grid has %d points; n_trials %d lowered to %d",
                            size, self.n_trials, size)
                self.n_trials = size

    def _dev_metric(self) -> tuple[str, bool]:
        """The dev metric the trials report and its direction, from the composed config."""
        from sllmx.plugins import registry
        from sllmx.dev_metric import dev_metric_of

        reg = registry()
        trainer = reg.get("trainer", self.config.trainer.name)
        dm = dev_metric_of(self.config, trainer, reg)
        return dm.name, dm.higher_is_better

    def _open_study(self) -> Any:
        import optuna

        storage = make_storage(self.storage, self.heartbeat_interval, self.max_retry)
        sampler = build_sampler(self.sampler, dict(self.sampler_kwargs or {}), self.seed, self.space)
        pruner = build_pruner(self.pruner, dict(self.pruner_kwargs or {}))
        for attempt in range(3):  # workers started together race to create the study; the losers load it
            try:
                study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=sampler,
                                            pruner=pruner, direction=self.direction, load_if_exists=True)
                break
            except optuna.exceptions.DuplicatedStudyError:
                time.sleep(1 + attempt)
        else:
            raise SllmxError(f"cannot create or load study {self.study_name} in {mask_url(self.storage)}")
        if study.direction.name.lower() != self.direction:
            raise SllmxError(f"study {self.study_name} in {mask_url(self.storage)} was created to "
                             f"{study.direction.name.lower()}, not {self.direction}; choose another study_name")
        known = study.user_attrs.get(METRIC_ATTR)
        if known and known != self.metric:
            raise SllmxError(f"study {self.study_name} optimises {known}, not {self.metric}; choose another study_name")
        study.set_user_attr(METRIC_ATTR, self.metric)
        study.set_user_attr(PRUNER_ATTR, {"name": self.pruner, "kwargs": dict(self.pruner_kwargs or {})})
        return study

    # -- the loop --------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        """Run trials until the study has ``n_trials`` COMPLETE/PRUNED/FAIL trials; write ``sweep.json``.

        Returns:
            the study's best ``FrozenTrial`` (None when no trial completed).
        """
        import optuna
        from optuna.trial import TrialState

        self._prepare(arguments)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self._open_study()
        print(f"[sllmx] study {self.study_name}: {self.n_trials} trials, {self.direction} {self.metric}, "
              f"sampler {self.sampler}, pruner {self.pruner}\n[sllmx] storage {mask_url(self.storage)}; "
              f"sweep dir {self.sweep_dir}", flush=True)
        study_id = study._storage.get_study_id_from_name(self.study_name)
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            done = sum(counts_toward_budget(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            todo = self.n_trials - done - running
            if todo <= 0:
                if running == 0:
                    break
                time.sleep(self.heartbeat_interval)  # other workers' trials: wait, they may die and be re-queued
                continue
            batch = [self._ask(study) for _ in range(min(self.n_jobs, todo))]
            self._run_batch(study, study_id, batch)
            self.write_results(study)
        best = self.write_results(study)
        self._print_best(study, best)
        if self.evaluate_best_on_test and best is not None:
            self._evaluate_on_test(study, best)
        self._log_to_wandb(study)
        return best

    def _ask(self, study: Any) -> Any:
        """Ask for one trial and sample its parameters with a sampler seeded by ``seed + trial number``.

        A sampler seeded once per process would replay the same random draws in every
        worker and in every resumed run (and so repeat finished trials); trial numbers are
        unique across workers, so this stays reproducible without collisions.  The grid
        sampler keeps the study's seed (it shuffles its grid with it, then gives trial ``n``
        grid point ``n``).  A re-queued trial (a killed worker's) keeps its parameters.
        """
        from optuna.distributions import CategoricalDistribution, IntDistribution

        def sampler(offset: int) -> Any:
            seed = None if self.seed is None else self.seed + offset
            return build_sampler(self.sampler, dict(self.sampler_kwargs or {}), seed, self.space)

        if self.sampler == "grid":
            study.sampler = sampler(0)
            trial = study.ask()
        else:
            trial = study.ask()
            study.sampler = sampler(trial.number)
        for p in self.space:
            d = p.distribution
            if isinstance(d, CategoricalDistribution):
                trial.suggest_categorical(p.name, d.choices)
            elif isinstance(d, IntDistribution):
                trial.suggest_int(p.name, d.low, d.high, step=d.step, log=d.log)
            else:
                trial.suggest_float(p.name, d.low, d.high, step=d.step, log=d.log)
        return trial

    def _overrides(self, params: dict[str, Any], subdir: str) -> list[str]:
        """A job's overrides: the fixed ones, the trial's parameters, and where it runs (the study's
        folder, whatever ``hydra.sweep.dir`` would resolve to in the job)."""
        q = format_value
        return [*self.fixed, *(p.override(params[p.name]) for p in self.space if p.name in params),
                f"hydra.sweeper.study_name={q(self.study_name)}", f"hydra.sweep.dir={q(str(self.sweep_dir))}",
                f"hydra.sweep.subdir={subdir}"]

    def _job_overrides(self, trial: Any) -> list[str]:
        q = format_value
        return [*self._overrides(trial.params, str(trial.number)), f"trial.study_name={q(self.study_name)}",
                f"trial.storage={q(self.storage)}", f"trial.number={trial.number}"]

    def _run_batch(self, study: Any, study_id: int, batch: list[Any]) -> None:
        from hydra.core.utils import JobStatus
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        storage = study._storage
        for trial in batch:
            trial.set_user_attr(RUN_DIR_ATTR, str(self.sweep_dir / str(trial.number)))
            ACTIVE[(self.storage, self.study_name, trial.number)] = trial
            shown = ", ".join(p.override(trial.params[p.name]) for p in self.space)
            print(f"[sllmx] trial {trial.number}: {shown}", flush=True)
        ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in batch]
        try:
            with _Heartbeat(storage, ids, self.heartbeat_interval):
                returns = self.launcher.launch([self._job_overrides(t) for t in batch],
                                               initial_job_idx=batch[0].number)
        except Exception as exc:  # the launcher itself failed (e.g. an override names no config): FAIL the batch
            returns = [exc] * len(batch)
        finally:
            for trial in batch:
                ACTIVE.pop((self.storage, self.study_name, trial.number), None)
        for trial, ret in zip(batch, returns):
            state, value, error, steps, note = TrialState.FAIL, None, None, None, None
            if isinstance(ret, Exception):
                error = f"{type(ret).__name__}: {str(ret).strip().splitlines()[0] if str(ret).strip() else ''}"
            elif ret.status == JobStatus.COMPLETED:
                record = ret._return_value
                steps = getattr(record, "global_steps", None)
                status = getattr(record, "status", None)
                if getattr(record, "dev_metric", None) is None or record.dev_metric.name != self.metric:
                    error = (f"the job's dev metric is {getattr(getattr(record, 'dev_metric', None), 'name', None)}, "
                             f"not the study's {self.metric}")
                elif status == "PRUNED":
                    state, note = TrialState.PRUNED, record.pruned
                elif status == "COMPLETE":
                    value = record.dev_metric.best
                    if value is None or not math.isfinite(value):
                        error = f"{self.metric} is {value} (no finite dev metric)"
                    else:
                        state = TrialState.COMPLETE
                else:
                    error = f"the job returned status {status}"
            else:
                exc = ret._return_value
                error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
            try:
                if steps is not None:
                    trial.set_user_attr(STEPS_ATTR, int(steps))
                if error is not None:
                    trial.set_user_attr(ERROR_ATTR, error[:2000])
                study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            except UpdateFinishedTrialError:
                log.warning("trial %d was finished elsewhere (stale heartbeat?); its outcome here is ignored",
                            trial.number)
                continue
            shown = f"{value:.6g}" if value is not None else (error or note or "")
            print(f"[sllmx] trial {trial.number} {state.name} {shown}", flush=True)

    # -- results ---------------------------------------------------------------------------
    def write_results(self, study: Any) -> Any:
        """Write ``sweep.json`` (atomically) from the study's storage; return the best trial or None."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        best = None
        if any(t.state == TrialState.COMPLETE for t in trials):
            best = study.best_trial
        path = self.sweep_dir / SWEEP_FILE
        doc = {
            "schema_version": 1,
            "study_name": self.study_name,
            "storage": mask_url(self.storage),
            "direction": self.direction,
            "metric": self.metric,
            "sampler": {"name": self.sampler, "kwargs": dict(self.sampler_kwargs or {}), "seed": self.seed},
            "pruner": {"name": self.pruner, "kwargs": dict(self.pruner_kwargs or {})},
            "n_trials": self.n_trials,
            "search_space": {p.key: repr(p.distribution) for p in self.space},
            "fixed_overrides": list(self.fixed),
            "counts": {s.name: sum(t.state == s for t in trials) for s in TrialState},
            "total_train_steps": sum(t.user_attrs.get(STEPS_ATTR) or 0 for t in trials),
            "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "trials": [_trial_entry(t) for t in trials],
            "best_trial": None if best is None else {
                **_trial_entry(best),
                "overrides": [*self.fixed, *(p.override(best.params[p.name])
                                             for p in self.space if p.name in best.params)]},
            "best_on_test": study.user_attrs.get(BEST_ON_TEST_ATTR),
        }
        write_json_atomic(path, doc)
        return best

    def _print_best(self, study: Any, best: Any) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = ", ".join(f"{sum(t.state == s for t in trials)} {s.name}"
                           for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        print(f"[sllmx] study {self.study_name}: {len(trials)} trials ({counts}); "
              f"results: {self.sweep_dir / SWEEP_FILE}", flush=True)
        if best is None:
            print("[sllmx] no trial completed", flush=True)
            return
        overrides = " ".join(p.override(best.params[p.name]) for p in self.space if p.name in best.params)
        print(f"[sllmx] best trial {best.number}: {self.metric}={best.value:.6g}  {overrides}\n"
              f"[sllmx] re-run it: python -m sllmx {' '.join([*self.fixed, overrides])}", flush=True)

    def _evaluate_on_test(self, study: Any, best: Any) -> None:
        """Train the best trial's configuration once more (same seed) with ``eval.test=true``:
        the one look at the test split, after selection is over."""
        from hydra.core.utils import JobStatus

        subdir = f"best-{best.number}-test"
        target = self.sweep_dir / subdir
        if (target / "run.json").exists():
            print(f"[sllmx] test evaluation of trial {best.number} already in {target}", flush=True)
            return
        overrides = [*self._overrides(best.params, subdir), "eval.test=true"]
        ret = self.launcher.launch([overrides], initial_job_idx=10 ** 6 + best.number)[0]
        if ret.status != JobStatus.COMPLETED:
            print(f"[sllmx] test evaluation failed: {ret._return_value}", flush=True)
            return
        record = ret._return_value
        result = {"trial": best.number, "run_dir": str(target), "dev_best": record.dev_metric.best,
                  "test_metrics": record.test_metrics}
        study.set_user_attr(BEST_ON_TEST_ATTR, result)
        self.write_results(study)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in record.test_metrics.items() if not k.endswith(
            ("runtime", "per_second")))
        print(f"[sllmx] best trial {best.number} on test: {shown}", flush=True)

    def _log_to_wandb(self, study: Any) -> None:
        """With ``logger=wandb``: one run in the study's group holding the trials table and the best trial."""
        logger = self.config.get("logger")
        if logger is None or logger.name != "wandb":
            return
        from sllmx.loggers import wandb_mode

        mode = wandb_mode(logger)
        if mode == "disabled":
            return
        import wandb

        doc = json.loads((self.sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
        keys = [p.name for p in self.space]
        table = wandb.Table(columns=["number", "state", "value", "global_steps", "duration_s", *keys, "run_dir"])
        for t in doc["trials"]:
            table.add_data(t["number"], t["state"], t["value"], t["global_steps"], t["duration_s"],
                           *[t["params"].get(k) for k in keys], t["run_dir"])
        run = wandb.init(project=logger.project, group=logger.group or self.study_name, job_type="sweep",
                         name=f"{self.study_name}-summary", dir=str(self.sweep_dir), mode=mode,
                         config={"study": {k: doc[k] for k in ("study_name", "direction", "metric", "sampler",
                                                                "pruner", "n_trials", "search_space")}},
                         reinit="finish_previous")
        run.log({"trials": table})
        best = doc["best_trial"]
        run.summary.update({"counts": doc["counts"], "total_train_steps": doc["total_train_steps"],
                            **({"best/number": best["number"], "best/value": best["value"],
                                **{f"best/{k}": v for k, v in best["params"].items()}} if best else {})})
        run.finish()


def _trial_entry(t: Any) -> dict[str, Any]:
    """One trial as ``sweep.json`` lists it."""
    duration = None
    if t.datetime_start and t.datetime_complete:
        duration = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
    return {
        "number": t.number,
        "state": t.state.name,
        "params": dict(t.params),
        "value": t.value if t.values else None,
        "last_value": t.intermediate_values[t.last_step] if t.last_step is not None else None,
        "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "global_steps": t.user_attrs.get(STEPS_ATTR),
        "duration_s": duration,
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "run_dir": t.user_attrs.get(RUN_DIR_ATTR),
        "error": t.user_attrs.get(ERROR_ATTR) or (
            "its worker stopped (stale heartbeat); re-queued" if t.state.name == "FAIL" else None),
        "retry_of": t.system_attrs.get("failed_trial"),
    }
