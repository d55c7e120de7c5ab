"""``RunContext``: what hooks see of a run in progress (:mod:`sllmx.hookspecs`).  A plain type below the
runner, so the hook specs, plugins and the runner all depend on it and it on none of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sllmx.interfaces import Method, Metric, Trainer
from sllmx.records import RunRecord
from sllmx.runtime import Runtime


@dataclass(frozen=True)
class GenerationSettings:
    """How a split's generation metric is computed (``data.metric`` with the ``eval.*`` options): during
    training at each dev evaluation (:class:`~sllmx.callbacks.GenerationMetricCallback`) and once on a split
    (:func:`sllmx.evaluation.evaluate_split`).

    Attributes:
        metric: the metric plugin (its ``needs`` says what is computed: greedy generations, pair log-probs, ...).
        max_new_tokens: greedy generation length (``eval.max_new_tokens``).
        batch_size: prompts per ``generate()`` call (``eval.generation_batch_size``).
        banned: compiled patterns an answer must not match (``eval.banned_patterns``).
        expect_json: count answers that are not JSON (``eval.expect_json``).
    """

    metric: Metric
    max_new_tokens: int = 128
    batch_size: int = 16
    banned: tuple = ()
    expect_json: bool = False

    @classmethod
    def of(cls, cfg: DictConfig, registry: Any) -> "GenerationSettings | None":
        """The settings of a composed config; None when it has no ``data.metric``.

        Raises:
            SllmxError: an unknown metric, or a banned pattern that is not a valid regular expression.
        """
        if not cfg.data.get("metric"):
            return None
        from sllmx.safety import compile_patterns

        return cls(metric=registry.get("metric", cfg.data.metric), max_new_tokens=int(cfg.eval.max_new_tokens),
                   batch_size=int(cfg.eval.generation_batch_size),
                   banned=tuple(compile_patterns(cfg.eval.get("banned_patterns") or [])),
                   expect_json=bool(cfg.eval.get("expect_json", False)))


@dataclass
class RunContext:
    """What hooks see of a run in progress.

    Attributes:
        cfg: the composed config.  record: the run record being filled in.
        method: the method plugin; None in an evaluation-only run of a base model (``record.method`` is
            ``base``).
        training: False until the baseline evaluation (step 0) is recorded, True for the evaluations
            during training.
        trial: the Optuna trial this run reports to (set by the ``sllmx_plugins.trials`` plugin in a sweep
            job), else None.
        model / tokenizer / hf_trainer / splits: set as the run reaches them.
        general: the forgetting check's rows (``eval.general_data``), else None.
        checkpoint: the checkpoint a resumed run continues from (``resume=``), else None.
        stop: the :class:`~sllmx.stops.GracefulStop` that turns SIGINT / SIGTERM into a checkpoint
            and ``INTERRUPTED``.
        step: the optimizer step the run is at (that of the evaluation ``sllmx_after_evaluate`` reports).
        logger: the run's :class:`~sllmx.interfaces.Logger` (``logger=<name>``) on the main process once
            started, else None.

    Which run it is: ``output_dir`` (its folder, holding run.json), ``method.name``, ``trainer.name``,
    ``record`` (the :class:`~sllmx.records.RunRecord` so far: seed, model, data, dev_metric history, ...).
    """

    cfg: DictConfig
    registry: Any  # sllmx.plugins.Registry (not imported: the plugin loader imports the hook specs)
    method: "Method | None"
    trainer: Trainer
    runtime: Runtime
    record: RunRecord
    output_dir: Path
    training: bool = False
    model: Any = None
    tokenizer: Any = None
    hf_trainer: Any = None
    splits: Any = None
    trial: Any = None
    general: Any = None
    checkpoint: Any = None
    stop: Any = None
    step: int = 0
    logger: Any = None

    @property
    def pm(self) -> Any:
        """The pluggy plugin manager (``ctx.pm.hook.<name>(...)``)."""
        return self.registry.pm
