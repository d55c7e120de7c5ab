"""What a person watching a run sees: a tqdm bar over the optimizer steps and one line per evaluation.

This module imports neither torch nor transformers (the command line uses it before a run loads them).

- :class:`sllmx.callbacks.ConsoleProgress` replaces transformers' ``PrinterCallback`` (which prints each log as a
  raw dict of strings): a bar with the step, loss, train tokens/s and ETA on a terminal (a line
  per logging step elsewhere), and one readable line per dev evaluation through the ``sllmx``
  logger (the dev metric first, with its direction and the best so far; numbers as numbers).
- :func:`progress_enabled` decides whether bars are drawn: only on the main process, not with
  ``--quiet`` (``SLLMX_QUIET=1``), and not in a Hydra multirun, where each trial's full output
  goes to its ``sllmx.log`` and the console keeps one line per trial (:func:`quiet_console`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

log = logging.getLogger("sllmx")

#: metrics left out of the evaluation line (timings and counters, not results)
_NOISE = ("runtime", "per_second", "preparation_time", "num_tokens", "epoch", "tokens_seen")


def progress_enabled() -> bool:
    """True when progress bars should be drawn: the main process (``RANK`` 0 or unset), not ``--quiet``
    (``SLLMX_QUIET=1``), and the ``sllmx`` logger shows INFO (``hydra/job_logging`` at WARNING, or a
    multirun's console, turns bars off too)."""
    from sllmx.launch import launched_rank

    if os.environ.get("SLLMX_QUIET") or launched_rank() != 0:
        return False
    return log.isEnabledFor(logging.INFO) and not _multirun()


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # outside a Hydra app (tests, python -m sllmx.evaluate)
        return False


def quiet_console() -> None:
    """In a multirun or with ``--quiet``: raise the console handlers of the root logger to WARNING, so
    a run's INFO lines (its evaluations) go only to its log file (Hydra's ``<job>.log``), and turn off
    transformers' own progress bars (loading weights)."""
    if not (_multirun() or os.environ.get("SLLMX_QUIET")):
        return
    # transformers reads it when it is imported (after this): no "Loading weights" bars
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


#: TRL's per-step statistics of GRPO's clipping and completion lengths, and standard deviations
_DETAIL_GROUPS = ("clip_ratio/", "completions/")


def is_detail(key: str) -> bool:
    """Whether a logged metric is a detail left out of the console lines (still in run.json and the logger): GRPO's
    ``eval_clip_ratio/low_min``, ``eval_completions/max_length``, ``eval_rewards/json_fields/std``; DPO's
    ``eval_rewards/accuracies`` and GRPO's ``eval_rewards/json_fields/mean`` are shown."""
    bare = key.removeprefix("eval_").removeprefix("test_")
    return bare.startswith(_DETAIL_GROUPS) or ("/" in bare and bare.endswith("/std"))


def fmt(value: Any) -> str:
    """A metric value for people: 4 significant digits, integers as integers, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or (isinstance(value, int)):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def evaluation_line(step: int, max_steps: int, metrics: dict[str, float], dev: Any) -> str:
    """One line for one dev evaluation, e.g.
    ``eval step 20/80: eval_json_exact 0.125 (higher is better; best 0.125 at step 20) | eval_loss 0.9022``.

    Args:
        step: the optimizer step (0: the baseline before training).  max_steps: the run's total.
        metrics: the evaluation's numbers (``eval_``-prefixed keys).  dev: the run's
            :class:`~sllmx.records.DevMetric` (name, direction, best so far).
    """
    where = "baseline (before training)" if step == 0 else f"step {step}/{max_steps}"
    direction = "higher" if dev.higher_is_better else "lower"
    head = f"{dev.name} {fmt(metrics.get(dev.name))} ({direction} is better"
    head += f"; best {fmt(dev.best)} at step {dev.best_step})" if step and dev.best is not None else ")"
    rest = [f"{k} {fmt(v)}" for k, v in sorted(metrics.items())
            if k != dev.name and not k.endswith(_NOISE) and not is_detail(k) and isinstance(v, (int, float))]
    return f"eval {where}: " + " | ".join([head, *rest])


def console(show_bar: bool) -> Any:
    """A context in which log lines to the console pass through tqdm (``logging_redirect_tqdm``), so a
    bar being drawn is not broken by them; a no-op without bars."""
    import contextlib

    if not show_bar:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def batches_bar(total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` items on a terminal's stdout that vanishes when done (``leave=False``), or
    None when bars are off (:func:`progress_enabled`, stdout not a terminal) or there is nothing to count."""
    if total <= 0 or not progress_enabled():
        return None
    from tqdm.auto import tqdm

    if not sys.stdout.isatty():
        return None
    return tqdm(total=total, desc=desc, unit="ex", leave=False, dynamic_ncols=True, file=sys.stdout)
