"""Built-in plugin: a sweep job reports to its Optuna trial, and the study's pruner may stop it.

A job launched by the ``sllmx_optuna`` sweeper carries ``trial.study_name``, ``trial.storage`` and
``trial.number`` (the ``trial:`` node of the config, the sweeper → job contract).  For such a run this
plugin:

* (``sllmx_before_run``, before run.json is written or anything loads) opens the trial on the main process (:func:`sllmx.trial.open_trial`: the sweeper's own object in its
  process, else rebuilt from the study's storage with the pruner the study recorded) and records which
  trial the run served in the record's ``trial`` field (study name, number, storage with its password
  hidden);
* (``sllmx_callbacks``) returns a :class:`sllmx.trial.TrialReporter`, which reports every dev evaluation during training and,
  when the pruner says so, raises :class:`sllmx.errors.RunStopped` (``PRUNED``) on every rank at the same
  step (the main process decides and sends the decision to all).

Outside a sweep (``trial.number`` null) it adds nothing.  Registered through the ``sllmx`` entry-point group
like any third-party plugin; nothing heavy is imported outside a sweep job.
Reference: Optuna's pruning protocol, ``Trial.report`` / ``Trial.should_prune``
(https://optuna.readthedocs.io/en/stable/reference/generated/optuna.trial.Trial.html).
"""

from __future__ import annotations

from typing import Any

from sllmx import hookimpl


@hookimpl
def sllmx_before_run(run: Any) -> None:
    """A sweep job opens its trial before anything is written or loaded (the main process, which alone reports
    to the storage) and records which trial it serves in ``run.record.trial``; nothing outside a sweep.

    Raises:
        SllmxError: (on every rank) when the study or the trial cannot be found, or the trial is not running.
    """
    spec = run.cfg.get("trial")
    if spec is None or spec.get("number") is None:
        return
    from sllmx.runtime import on_main
    from sllmx.study import mask_url
    from sllmx.trial import open_trial

    run.trial = on_main(lambda: open_trial(spec), run.runtime)
    run.record.trial = {"study_name": spec.study_name, "number": int(spec.number), "storage": mask_url(spec.storage)}


@hookimpl(tryfirst=True)  # first among the plugins' callbacks: a pruned step reaches no other plugin's
def sllmx_callbacks(run: Any) -> list[Any]:
    """The trial reporter of a sweep job (every rank; the trial opened in :func:`sllmx_before_run`); none
    outside a sweep."""
    spec = run.cfg.get("trial")
    if spec is None or spec.get("number") is None:
        return []
    from sllmx.trial import TrialReporter

    return [TrialReporter(run.trial, run.record.dev_metric.name, run)]
