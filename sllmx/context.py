"""``RunContext``: what hooks see of a run in progress (:mod:`sllmx.hookspecs`).  A plain type below the
runner, so the hook specs, plugins and the runner all depend on it and it on none of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sllmx.interfaces import Method, Trainer
from sllmx.records import RunRecord
from sllmx.runtime import Runtime


@dataclass
class RunContext:
    """What hooks see of a run in progress.

    Attributes:
        cfg: the composed config.  record: the run record being filled in.
        training: False until the baseline evaluation (step 0) is recorded, True for the evaluations
            during training.
        trial: the Optuna trial this run reports to (``sllmx_optuna`` sweeps), else None.
        model / tokenizer / hf_trainer / splits: set as the run reaches them.
        general: the forgetting check's rows (``eval.general_data``), else None.
        checkpoint: the checkpoint a resumed run continues from (``resume=``), else None.
        stop: the :class:`~sllmx.callbacks.GracefulStop` that turns SIGINT / SIGTERM into a checkpoint
            and ``INTERRUPTED``.
        step: the optimizer step the run is at (that of the evaluation ``sllmx_after_evaluate`` reports).
        logger: the run's :class:`~sllmx.interfaces.Logger` (``logger=<name>``) on the main process once
            started, else None.

    Which run it is: ``output_dir`` (its folder, holding run.json), ``method.name``, ``trainer.name``,
    ``record`` (the :class:`~sllmx.records.RunRecord` so far: seed, model, data, dev_metric history, ...).
    """

    cfg: DictConfig
    registry: Any  # sllmx.plugins.Registry (not imported: the plugin loader imports the hook specs)
    method: Method
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
