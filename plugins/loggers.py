"""Built-in experiment trackers: ``logger=wandb`` (Weights & Biases, offline without an API key) and ``logger=none``.

Registered through the ``sllmx`` entry-point group like any third-party logger (:class:`sllmx.interfaces.Logger`).
W&B is initialised in one place, :func:`init_wandb`, which the run's logger and other W&B runs of sllmx (a
sweep's summary, a report) call; transformers' own ``report_to`` integration is not used.

    python -m sllmx logger=wandb logger.project=my-project   # offline unless WANDB_API_KEY is set
    python -m sllmx logger=none
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from sllmx import hookimpl
from sllmx.config import LoggerConfig
from sllmx.interfaces import Logger


def wandb_mode(logger_cfg: Any) -> str:
    """``logger.mode``, else ``$WANDB_MODE``, else online with ``WANDB_API_KEY`` and offline without it."""
    return getattr(logger_cfg, "mode", None) or os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline")


def init_wandb(logger_cfg: Any, **init_kwargs: Any) -> Any:
    """Start a W&B run: ``wandb.init(project=logger.project, mode=..., **init_kwargs)``, offline without an API
    key so that it never prompts or hangs, silent unless ``WANDB_SILENT`` says otherwise.

    Args:
        logger_cfg: a ``logger=wandb`` config node (``project``, ``mode``; any object with those attributes).
        init_kwargs: the other ``wandb.init`` arguments (``group``, ``name``, ``job_type``, ``config``, ``dir``,
            ``tags``, ...); ``project`` and ``mode`` given here win over the config's.

    Returns:
        the ``wandb`` run.
    """
    mode = init_kwargs.pop("mode", None) or wandb_mode(logger_cfg)
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    init_kwargs.setdefault("project", getattr(logger_cfg, "project", None) or "sllmx")
    if os.environ.get("WANDB_DIR"):  # explicit: wandb keeps the settings of its first run in this process
        init_kwargs.setdefault("dir", os.environ["WANDB_DIR"])
    return wandb.init(mode=mode, reinit="finish_previous", **init_kwargs)


def wandb_key(key: str) -> str:
    """A transformers log key as W&B shows it (transformers' ``rewrite_logs``): ``eval_loss`` → ``eval/loss``,
    ``test_x`` → ``test/x``, anything else → ``train/<key>``."""
    for prefix in ("eval", "test"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1:]}"
    return f"train/{key}"


@dataclass
class WandbLoggerConfig(LoggerConfig):
    """Weights & Biases (``logger=wandb``): offline unless ``WANDB_API_KEY`` is set or ``logger.mode`` says."""

    name: str = "wandb"


class WandbLogger(Logger):
    """Weights & Biases: the resolved config, every logged metric and the run record's summary."""

    name = "wandb"
    config = WandbLoggerConfig

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, run: Any, cfg: Any) -> None:
        """One W&B run per sllmx run, in the run folder; a sweep's trial is grouped by study, named by trial."""
        c, record = run.cfg, run.record
        name = cfg.run_name or f"{record.method}-{record.trainer}-seed{record.seed}"  # method "base": an evaluation
        if c.trial.number is not None:
            name = cfg.run_name or f"trial-{c.trial.number}-{c.method.name}-{c.trainer.name}"
        self.run = init_wandb(cfg, group=cfg.group or c.trial.study_name, tags=list(cfg.tags), name=name,
                              config=run.record.config, dir=str(run.output_dir))
        self.run.define_metric("train/global_step")
        self.run.define_metric("*", step_metric="train/global_step", step_sync=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """``eval_loss`` as ``eval/loss``, ``loss`` as ``train/loss`` (transformers' W&B names), at ``step``."""
        if self.run is not None:
            self.run.log({**{wandb_key(k): v for k, v in metrics.items()}, "train/global_step": step})

    def finish(self, record: Any) -> None:
        """Put the run record's summary into the W&B run and close it."""
        if self.run is None:
            return
        run, self.run = self.run, None
        dm = record.dev_metric
        run.summary.update({
            "status": record.status, "dev_metric": dm.name, "dev_metric/best": dm.best, "dev_metric/final": dm.final,
            "dev_metric/baseline": dm.baseline, "trainable_params": record.trainable_params,
            "total_params": record.total_params, "train_tokens": record.train_tokens,
            "train_tokens_per_s": record.train_tokens_per_s, "wall_time_s": record.wall_time_s,
            "peak_rss_bytes": record.peak_rss_bytes, "global_steps": record.global_steps,
            **({"trial_number": record.trial["number"], "study_name": record.trial["study_name"]}
               if record.trial else {}),
            **{f"test/{k}": v for k, v in record.test_metrics.items()}})
        run.finish(exit_code=0 if record.status in ("COMPLETE", "PRUNED") else 1)

    def publish(self, cfg: Any, title: str, rows: list[dict[str, Any]], summary: dict[str, Any],
                config: dict[str, Any], group: Optional[str] = None, kind: str = "report",
                figures: Sequence[Any] = (), folder: Any = None) -> None:
        """One W&B run (job type ``kind``) in ``group`` holding ``rows`` as a ``wandb.Table``, each PNG of
        ``figures`` as an image and ``summary`` in its summary; nothing when ``logger.mode`` is disabled."""
        if wandb_mode(cfg) == "disabled":
            return
        import json

        import wandb

        columns = sorted({k for r in rows for k in r}, key=lambda k: next(i for i, r in enumerate(rows) if k in r))
        table = wandb.Table(columns=columns)
        for r in rows:
            table.add_data(*[v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v, default=str)
                             for v in (r.get(c) for c in columns)])
        run = init_wandb(cfg, group=group or cfg.group, job_type=kind, name=title, config=config,
                         **({"dir": str(folder)} if folder is not None else {}))
        run.log({kind if kind != "sweep" else "trials": table,
                 **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures if str(p).endswith(".png")}})
        run.summary.update(summary)
        run.finish()


@dataclass
class NoLoggerConfig(LoggerConfig):
    """No experiment tracking (``logger=none``); the W&B options are accepted and ignored."""

    name: str = "none"


class NoLogger(Logger):
    """No experiment tracking: run.json and the log file only."""

    name = "none"
    config = NoLoggerConfig


@hookimpl
def sllmx_loggers() -> list[Logger]:
    """Register wandb and none."""
    return [WandbLogger(), NoLogger()]
