"""The Optuna sweeper behind ``hydra/sweeper=sllmx_optuna``, in Hydra's Optuna sweeper's shape.

:mod:`~sllmx.sweep.config`
    the sweeper's config and the ``hydra/sweeper/sampler`` and ``hydra/sweeper/pruner`` groups of
    ``_target_`` nodes (registered in Hydra's ConfigStore when this module is imported by the plugin).
:mod:`~sllmx.sweep.space`
    the search space: Hydra's override grammar and ``params:`` → Optuna distributions.
:mod:`~sllmx.sweep.study`
    the study: samplers seeded per trial, the pruner, its name, heartbeats, the trial budget.
:mod:`~sllmx.sweep.loop`
    ask → launch → tell, through Hydra's launcher; knows nothing of training.
:mod:`~sllmx.sweep.results`
    ``sweep.json``, the best trial on the console, the W&B summary.
:mod:`~sllmx.sweep.sweeper`
    :class:`~sllmx.sweep.sweeper.OptunaSweep`: the glue, and what a job's record means to the study.

This package imports nothing heavy: Hydra imports the plugin at every start-up.
"""
