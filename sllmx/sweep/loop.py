"""Ask → launch → tell: Optuna's ask-and-tell interface driven through Hydra's launcher.

Ask a batch of ``n_jobs`` trials, turn each into a job's overrides, launch the batch, and tell the study
each job's :class:`Outcome`.  What a job's return value means (which metric, which status) is the
caller's ``judge``: this loop knows nothing of training.  While a batch runs, a thread records heartbeats
for its trials; a trial whose heartbeat stops (its sweeper was killed) is failed by the next sweeper on the
same storage and re-queued with the same parameters; on the same host that sweeper sees at once that the
killed one is gone (:mod:`sllmx.sweep.workers`) and does not wait for the heartbeat to go stale.  When more
than ``max_failure_rate`` of one batch's trials FAIL the sweep stops (Hydra's Optuna sweeper's rule).

References: Optuna ask-and-tell (https://optuna.readthedocs.io/en/stable/tutorial/20_recipes/009_ask_and_tell.html),
heartbeats and ``RetryHeartbeatStaleTrialCallback``
(https://optuna.readthedocs.io/en/stable/reference/generated/optuna.storages.RDBStorage.html), Hydra's
``JobReturn`` (``hydra.core.utils``).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sllmx.errors import SllmxError
from sllmx.study import ACTIVE
from sllmx.sweep.objectives import show
from sllmx.sweep.space import Param, overrides_of, suggest
from sllmx.sweep.study import ERROR_ATTR, RUN_DIR_ATTR, STEPS_ATTR, Samplers, counts_toward_budget
from sllmx.sweep.workers import WORKER_ATTR, fail_trials_of_gone_workers, this_worker

#: Optuna's warning on every ``Study.ask`` of a storage with heartbeats outside ``Study.optimize``
HEARTBEAT_WARNING = "Heartbeat of storage is supposed to be used with Study.optimize"

log = logging.getLogger("sllmx.sweeper")


@dataclass
class Outcome:
    """What the study is told about one trial: ``state`` COMPLETE (with ``value``: a list of them for a
    multi-objective study), PRUNED or FAIL (with
    ``error``); ``steps`` (training steps spent) and ``note`` (why it was pruned) are shown and kept."""

    state: str
    value: Optional[Any] = None
    error: Optional[str] = None
    steps: Optional[int] = None
    note: Optional[str] = None


def failed(exc: BaseException, first_line: bool = False) -> Outcome:
    """A FAIL outcome naming the exception and its message (``first_line``: its first line only)."""
    text = str(exc).strip()
    if first_line:
        text = text.splitlines()[0] if text else ""
    return Outcome("FAIL", error=f"{type(exc).__name__}: {text}")


def outcome_of(ret: Any, judge: Callable[[Any], Outcome]) -> Outcome:
    """The outcome of one launched job: ``judge(return_value)`` when it completed; FAIL with its error
    when it raised (``JobStatus.FAILED``, whose ``return_value`` re-raises) or the launcher failed."""
    from hydra.core.utils import JobStatus

    if isinstance(ret, BaseException):
        return failed(ret, first_line=True)
    if ret.status != JobStatus.COMPLETED:
        try:
            ret.return_value  # raises the job's exception (and names the job's overrides on stderr)
        except BaseException as exc:  # noqa: B036 - a job's SystemExit/KeyboardInterrupt is its failure too
            return failed(exc)
        return Outcome("FAIL", error=f"the job ended {ret.status.name}")
    return judge(ret.return_value)


def check_failures(outcomes: list[tuple[int, Outcome]], max_failure_rate: float) -> None:
    """Stop the sweep when more than ``max_failure_rate`` of one batch's ``(trial number, outcome)`` FAIL, as
    Hydra's Optuna sweeper does (``_impl.py``: ``len(failures) / len(returns) > max_failure_rate``).

    Raises:
        SllmxError: naming the count and the first failed trial's error.
    """
    failures = [(number, o) for number, o in outcomes if o.state == "FAIL"]
    if outcomes and len(failures) / len(outcomes) > max_failure_rate:
        number, first = failures[0]
        raise SllmxError(f"{len(failures)} of {len(outcomes)} trials of the batch failed, more than "
                         f"hydra.sweeper.max_failure_rate={max_failure_rate} allows (trial {number}: "
                         f"{first.error}); the sweep stops")


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
class AskTellLoop:
    """Runs trials until the study has ``n_trials`` COMPLETE/PRUNED/FAIL trials (:func:`counts_toward_budget`).

    Attributes:
        study: the Optuna study (in an RDB storage).  space: the parameters.  samplers: the sampler per trial.
        launcher: Hydra's launcher.  key: ``(storage URL, study name)``, under which the trials in flight are
            put in :data:`sllmx.study.ACTIVE` for jobs run in this process.
        job_overrides: ``(trial) -> overrides`` of its job.  run_dir: ``(trial number) -> folder``.
        judge: ``(a completed job's return value) -> Outcome``.  after_batch: called after each batch.
        max_failure_rate: the largest share of a batch's trials that may FAIL before the sweep stops.
        extend: ``(trial) -> None``, called after the space is sampled (``custom_search_space``).
    """

    study: Any
    space: list[Param]
    samplers: Samplers
    launcher: Any
    key: tuple[str, str]
    n_trials: int
    n_jobs: int
    heartbeat_interval: int
    job_overrides: Callable[[Any], list[str]]
    run_dir: Callable[[int], str]
    judge: Callable[[Any], Outcome]
    after_batch: Callable[[], None] = lambda: None
    max_failure_rate: float = 1.0
    extend: Optional[Callable[[Any], None]] = None

    def run(self) -> None:
        """Ask, launch and tell batches until the budget is spent; wait for other workers' trials.

        Raises:
            SllmxError: when more than ``max_failure_rate`` of a batch's trials FAIL.
        """
        import optuna
        from optuna.trial import TrialState

        while True:
            fail_trials_of_gone_workers(self.study)  # a killed sweeper on this host: no need to wait for staleness
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            done = sum(counts_toward_budget(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            todo = self.n_trials - done - running
            if todo <= 0:
                if running == 0:
                    return
                time.sleep(self.heartbeat_interval)  # other workers' trials: wait, they may die and be re-queued
                continue
            outcomes = self.run_batch([self.ask() for _ in range(min(self.n_jobs, todo))])
            self.after_batch()
            check_failures(outcomes, self.max_failure_rate)

    def ask(self) -> Any:
        """Ask for one trial, record this process as its worker, and sample its parameters with the sampler for
        its number (see :class:`Samplers`), then ``extend`` it."""
        from optuna.trial import TrialState

        with warnings.catch_warnings():
            # Optuna warns on every ask() outside Study.optimize when the storage has heartbeats, because nothing
            # would record them; this loop records them itself (_Heartbeat), so the warning is noise here
            warnings.filterwarnings("ignore", message=HEARTBEAT_WARNING, category=UserWarning)
            if self.samplers.grid:
                self.study.sampler = self.samplers.for_trial(0)
                trial = self.study.ask()
            else:
                trial = self.study.ask()
                self.study.sampler = self.samplers.for_trial(trial.number)
        trial.set_user_attr(WORKER_ATTR, this_worker(trial.number))
        try:
            suggest(trial, self.space)
            if self.extend is not None:
                self.extend(trial)
        except BaseException:
            self.study.tell(trial, state=TrialState.FAIL)  # not a run: its slot stays free
            raise
        return trial

    def run_batch(self, batch: list[Any]) -> list[tuple[int, Outcome]]:
        """Launch one batch of trials (heartbeats while it runs), tell the study their outcomes, return them."""
        storage = self.study._storage
        study_id = storage.get_study_id_from_name(self.key[1])
        for trial in batch:
            trial.set_user_attr(RUN_DIR_ATTR, self.run_dir(trial.number))
            ACTIVE[(*self.key, trial.number)] = trial
            print(f"[sllmx] trial {trial.number}: {', '.join(overrides_of(self.space, trial.params))}", flush=True)
        ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in batch]
        try:
            with _Heartbeat(storage, ids, self.heartbeat_interval):
                returns = self.launcher.launch([self.job_overrides(t) for t in batch],
                                               initial_job_idx=batch[0].number)
        except Exception as exc:  # the launcher itself failed (e.g. an override names no config): FAIL the batch
            returns = [exc] * len(batch)
        finally:
            for trial in batch:
                ACTIVE.pop((*self.key, trial.number), None)
        outcomes = [(trial.number, outcome_of(ret, self.judge)) for trial, ret in zip(batch, returns)]
        for trial, (_, outcome) in zip(batch, outcomes):
            self.tell(trial, outcome)
        return outcomes

    def tell(self, trial: Any, outcome: Outcome) -> None:
        """Record ``outcome`` in the study (and its steps and error as user attributes); print it."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        state = TrialState[outcome.state]
        try:
            if outcome.steps is not None:
                trial.set_user_attr(STEPS_ATTR, int(outcome.steps))
            if outcome.error is not None:
                trial.set_user_attr(ERROR_ATTR, outcome.error[:2000])
            self.study.tell(trial, outcome.value if state == TrialState.COMPLETE else None, state=state)
        except UpdateFinishedTrialError:
            log.warning("trial %d was finished elsewhere (stale heartbeat?); its outcome here is ignored",
                        trial.number)
            return
        shown = show(outcome.value) if outcome.value is not None else (outcome.error or outcome.note or "")
        print(f"[sllmx] trial {trial.number} {state.name} {shown}", flush=True)
