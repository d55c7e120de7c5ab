"""Experiment tracking for a run: Weights & Biases (``logger=wandb``, offline without an API key) or none."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sllmx.errors import SllmxError
from sllmx.records import RunRecord


def wandb_mode(logger_cfg: Any) -> str:
    """``logger.mode``, else ``$WANDB_MODE``, else online with ``WANDB_API_KEY`` and offline without it."""
    return logger_cfg.mode or os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline")


def start_logger(cfg: DictConfig, out: Path, resolved: dict) -> Any:
    """Start a W&B run (``logger=wandb``): offline without an API key, so it never prompts or hangs."""
    if cfg.logger.name == "none":
        return None
    if cfg.logger.name != "wandb":
        raise SllmxError(f"logger={cfg.logger.name}: unknown logger; available: wandb, none")
    mode = wandb_mode(cfg.logger)
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    name = cfg.logger.run_name or f"{cfg.method.name}-{cfg.trainer.name}-seed{cfg.seed}"
    if cfg.trial.number is not None:  # a sweep's trial: grouped by study, named by trial number
        name = cfg.logger.run_name or f"trial-{cfg.trial.number}-{cfg.method.name}-{cfg.trainer.name}"
    return wandb.init(project=cfg.logger.project, group=cfg.logger.group or cfg.trial.study_name,
                      tags=list(cfg.logger.tags), name=name, config=resolved, dir=str(out), mode=mode,
                      reinit="finish_previous")


def finish_logger(wandb_run: Any, record: RunRecord) -> None:
    """Put the run record's summary into the W&B run and close it."""
    if wandb_run is None:
        return
    dm = record.dev_metric
    wandb_run.summary.update({
        "status": record.status, "dev_metric": dm.name, "dev_metric/best": dm.best, "dev_metric/final": dm.final,
        "dev_metric/baseline": dm.baseline, "trainable_params": record.trainable_params,
        "total_params": record.total_params, "train_tokens": record.train_tokens,
        "train_tokens_per_s": record.train_tokens_per_s, "wall_time_s": record.wall_time_s,
        "peak_rss_bytes": record.peak_rss_bytes, "global_steps": record.global_steps,
        **({"trial_number": record.trial["number"], "study_name": record.trial["study_name"]}
           if record.trial else {}),
        **{f"test/{k}": v for k, v in record.test_metrics.items()}})
    wandb_run.finish(exit_code=0 if record.status in ("COMPLETE", "PRUNED") else 1)
