"""Hook specifications: every extension point of sllmx.

A plugin is a module or object with functions named like the stubs below and
decorated with :data:`sllmx.hookimpl`.  It is found through the ``sllmx``
entry-point group of its distribution::

    # pyproject.toml of a third-party package
    [project.entry-points.sllmx]
    my_methods = "my_package.sllmx_plugin"

The built-in methods, trainers, model sources and data formats are loaded the
same way (see sllmx's own pyproject.toml).  Modelled on pytest's ``hookspec.py``.

Registration hooks (``sllmx_methods`` ... ``sllmx_loggers``) are called once at
start-up, before Hydra composes the config, so they must not import heavy
libraries.  Names must be unique within a kind; a clash is an error naming both
distributions.

Observer hooks (``sllmx_before_train``, ``sllmx_after_evaluate``, ``sllmx_after_run``) cannot break a
run: an exception in one is reported as one line on stderr,
``sllmx: warning: plugin <name>: <hook> raised <Type>: <message>``, and the run goes on with its
status and exit code unchanged.  The page for plugin authors is docs/plugins.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from sllmx.interfaces import DataFormat, DataSource, Logger, Method, Metric, ModelSource, Reward, Trainer
    from sllmx.records import RunRecord
    from sllmx.context import RunContext

hookspec = pluggy.HookspecMarker("sllmx")

# -------------------------------------------------------------------------
# Registration: what a plugin provides.  Each returns a list (may be empty).
# -------------------------------------------------------------------------


@hookspec
def sllmx_methods() -> list[Method]:
    """Return the fine-tuning methods (``method=<name>``) this plugin provides.

    Each :class:`~sllmx.interfaces.Method` carries its ``config`` dataclass, which
    sllmx stores in Hydra's ConfigStore under the ``method`` group.
    """


@hookspec
def sllmx_trainers() -> list[Trainer]:
    """Return the training objectives (``trainer=<name>``) this plugin provides.

    Each :class:`~sllmx.interfaces.Trainer` declares the data layouts it needs and its
    default dev metric with its direction.
    """


@hookspec
def sllmx_model_sources() -> list[ModelSource]:
    """Return the model sources (``model.source=<name>``) this plugin provides.

    A source's config dataclass is stored in the ConfigStore ``model`` group under its
    name, so ``model=<name>`` selects it directly and YAML presets can extend it.
    """


@hookspec
def sllmx_data_sources() -> list[DataSource]:
    """Return the data sources (``data.source=<name>``) this plugin provides: files,
    a hub dataset, a generated task, ...  Stored in the ConfigStore ``data`` group."""


@hookspec
def sllmx_data_formats() -> list[DataFormat]:
    """Return the row formats (``data.format=<name>``) this plugin can read, e.g. chat
    ``messages``, Alpaca, ShareGPT pairs."""


@hookspec
def sllmx_metrics() -> list[Metric]:
    """Return the dev/test metrics (``data.metric=<name>``) this plugin provides, each with
    ``higher_is_better`` and ``needs`` (what it is computed from: generations, preference pairs'
    log-probabilities, the loss, or its own :meth:`~sllmx.interfaces.Metric.inputs`)."""


@hookspec
def sllmx_rewards() -> list[Reward]:
    """Return the reward functions (``trainer=grpo trainer.rewards=[<name>, ...]``) this plugin provides, each with
    ``higher_is_better`` and ``reads`` (the completion, the reference answer, the prompt)."""


@hookspec
def sllmx_loggers() -> list[Logger]:
    """Return the experiment trackers (``logger=<name>``) this plugin provides.

    Each :class:`~sllmx.interfaces.Logger` carries its ``config`` dataclass, stored in the ConfigStore
    ``logger`` group.  sllmx calls a logger on the main process only."""


# -------------------------------------------------------------------------
# Run: what a plugin adds to one run, and what it may observe.
# -------------------------------------------------------------------------


@hookspec
def sllmx_check_combination(method: Method, trainer: Trainer, cfg: Any) -> str | None:
    """Return a reason why this method × trainer × config cannot work, or ``None``.

    Called before any model is loaded; every non-``None`` answer is reported and the run
    stops.  (The method's own :meth:`~sllmx.interfaces.Method.check` is asked too.)
    """


@hookspec
def sllmx_callbacks(run: RunContext) -> list[Any]:
    """Return extra ``transformers.TrainerCallback`` objects for this run's trainer.

    With several processes (``run.runtime.world_size > 1``) this is called on every rank and the
    callbacks run on every rank; write files only where ``run.runtime.is_main``.  A decision to
    stop training (``control.should_training_stop``) is taken from the main process after each
    evaluation.  A callback may end the run with another status by raising
    :class:`sllmx.errors.RunStopped` (e.g. ``PRUNED``, as the built-in trial plugin does): the record
    says that status and the run returns normally; raise it on every rank at the same step."""


@hookspec
def sllmx_before_run(run: RunContext) -> None:
    """Called on every rank once the run's record exists (``run.record``), before ``run.json`` is first written
    and before any model is loaded: a plugin checks what it needs and may add to the record (the trial plugin
    opens a sweep job's trial here and fills ``record.trial``).  Raising :class:`~sllmx.errors.SllmxError`
    stops the run with one line and nothing written; with several processes, raise it on every rank
    (:func:`sllmx.runtime.on_main` sends the main process's error to all)."""


@hookspec
def sllmx_before_train(run: RunContext) -> None:
    """Called once the trainer is built, just before ``trainer.train()`` (on every rank).

    An observer: an exception is reported as one warning line and the run goes on."""


@hookspec
def sllmx_after_evaluate(run: RunContext, metrics: dict[str, float]) -> None:
    """Called after each dev-split evaluation (the baseline at step 0 included), on every rank with the
    same metrics.

    ``run`` says which run and where it is (``run.output_dir``, ``run.method.name``,
    ``run.trainer.name``, ``run.step``: the optimizer step of this evaluation).  ``metrics`` are named
    as transformers logs them: ``eval_loss``, and each metric key as ``eval_<key>`` (``eval_perplexity``,
    ``eval_rougeL``, ...).  An observer: an exception is reported as one warning line and the run goes on."""


@hookspec
def sllmx_after_run(record: RunRecord) -> None:
    """Called after ``run.json`` is written, with the final record (any status); with several
    processes, on the main process only.

    An observer: an exception is reported as one warning line; the run's status and exit code stay."""
