"""Where a trial reports: the job side of a sweep.

A job launched by the ``sllmx_optuna`` sweeper carries ``trial.study_name``,
``trial.storage`` and ``trial.number``.  :func:`open_trial` turns those into an
``optuna.trial.Trial`` — the sweeper's own object when the job runs in the sweeper's
process (Hydra's basic launcher), else one rebuilt from the study's storage (joblib,
submitit, ray launchers; another machine) with the pruner the sweeper stored in the
study's user attributes (:func:`sllmx.study.pruner_from_spec`).  :class:`TrialReporter`
reports every dev-split evaluation to it and raises :class:`~sllmx.errors.RunStopped`
(``PRUNED``) when the pruner says so; the runner then records the run as ``PRUNED``.
The built-in plugin ``sllmx_plugins.trials`` puts both into a run.

Reference: Optuna's pruning protocol, ``Trial.report`` / ``Trial.should_prune``
(https://optuna.readthedocs.io/en/stable/reference/generated/optuna.trial.Trial.html).
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

from sllmx.errors import RunStopped, SllmxError
from sllmx.runtime import Runtime, from_main, on_main
from sllmx.study import ACTIVE, PRUNER_ATTR, make_storage, mask_url, pruner_from_spec


def open_trial(trial_cfg: Any) -> Any:
    """The Optuna trial this run serves, or None outside a sweep.

    Raises:
        SllmxError: when the study or trial cannot be found, or the trial is not running
            (finished, or failed by a stale heartbeat and re-queued).
    """
    if trial_cfg.number is None:
        return None
    if not trial_cfg.study_name or not trial_cfg.storage:
        raise SllmxError("trial.number is set but trial.study_name or trial.storage is not; "
                         "these are set by the sllmx_optuna sweeper")
    key = (trial_cfg.storage, trial_cfg.study_name, int(trial_cfg.number))
    if key in ACTIVE:
        return ACTIVE[key]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(trial_cfg.storage)
    try:
        study = optuna.load_study(study_name=trial_cfg.study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
    except KeyError as exc:
        raise SllmxError(f"trial.study_name={trial_cfg.study_name}: no such study in "
                         f"{mask_url(trial_cfg.storage)}") from exc
    study.pruner = pruner_from_spec(study.user_attrs.get(PRUNER_ATTR))  # none stored: no pruning
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(trial_cfg.study_name), int(trial_cfg.number))
    except KeyError as exc:
        raise SllmxError(f"trial.number={trial_cfg.number}: no such trial in study {trial_cfg.study_name}") from exc
    state = storage.get_trial(trial_id).state
    if state != optuna.trial.TrialState.RUNNING:
        raise SllmxError(f"trial {trial_cfg.number} of study {trial_cfg.study_name} is {state.name}, not RUNNING")
    return optuna.trial.Trial(study, trial_id)


class TrialReporter(TrainerCallback):
    """Reports the dev metric of every evaluation during training to an Optuna trial.

    The step is the optimizer step (``state.global_step``); the baseline evaluation
    before training is not reported.  When ``trial.should_prune()`` is true it raises
    :class:`~sllmx.errors.RunStopped` with status ``PRUNED``, which leaves
    ``trainer.train()`` unchanged (so training stops at once) and makes the run ``PRUNED``.  With several processes only the main
    process reports and asks the pruner; its decision is sent to every rank, which all
    raise at the same step.  Per-run early stopping (``EarlyStoppingCallback``) is
    separate: it ends a run that stopped improving, while pruning ends a run that is
    worse than the other trials of its study.  A multi-objective study takes no intermediate values
    (Optuna's pruning is single-objective): nothing is reported to it.
    """

    def __init__(self, trial: Any, metric: str, run: Any):
        self.trial = trial  # None on the other ranks of a multi-process run
        self.metric = metric
        self.run = run

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.run.training or not metrics or self.metric not in metrics:
            return
        runtime = getattr(self.run, "runtime", None) or Runtime()
        value = float(metrics[self.metric])

        def report() -> bool:
            if len(self.trial.study.directions) > 1:  # Optuna's report/pruning is single-objective only
                return False
            self.trial.report(value, step=state.global_step)
            return self.trial.should_prune()

        # the main process reports and asks; every rank gets its answer (or its error)
        if from_main(on_main(report, runtime), runtime):
            shown = f"{value:.6g}" if math.isfinite(value) else str(value)
            raise RunStopped(f"pruned at step {state.global_step}: {self.metric}={shown}", status="PRUNED")
