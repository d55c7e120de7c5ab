"""Trainer callbacks the runner adds to every run.

- :class:`GenerationMetricCallback` scores the dev split with a metric plugin at each
  evaluation (greedy generations, or preference pairs' log-probabilities: the metric's
  ``needs``), and adds ``eval_<key>`` to the evaluation's metrics before early stopping and
  best-checkpoint selection read them.
- :class:`ObserverCallback` records each evaluation in the run's dev-metric history and
  calls the ``sllmx_after_evaluate`` hook.
- :class:`ConsoleProgress`: the bar over the steps (or a line per logging step) and a line per
  evaluation (:mod:`sllmx.progress`).
- :class:`sllmx.stops.GracefulStop` and :class:`sllmx.stops.NonFiniteStop` (their own module): SIGINT / SIGTERM
  and a non-finite loss end the run at the step, with a checkpoint for ``resume=`` and an honest record.
- :class:`MainDecidesCallback` (several processes only) gives every rank the main process's
  decision to stop training after an evaluation.

Early stopping is ``transformers.EarlyStoppingCallback``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from transformers import TrainerCallback

from sllmx.generation import score_split
from sllmx.interfaces import Metric
from sllmx.progress import evaluation_line, fmt, progress_enabled
from sllmx.atomic import write_text_atomic
from sllmx.runtime import Runtime, from_main, on_main

_log = logging.getLogger("sllmx")


class GenerationMetricCallback(TrainerCallback):
    """At each evaluation, score the dev split with a metric plugin and add its values as ``eval_<key>``.

    The metric's ``needs`` decides what is computed (:func:`score_split`): greedy generations,
    or preference pairs' log-probabilities.  Must come before ``EarlyStoppingCallback`` in the
    callback list: it writes into the same metrics dict that early stopping and
    ``metric_for_best_model`` read, with ``eval_generation_runtime`` (seconds spent scoring).  The
    latest rows (input, reference, prediction; or the pair log-probabilities) are written to
    ``generations_path`` as JSONL (atomically, by the main process).
    With several processes (``runtime``) every rank scores its share of the batches and receives
    all values, so every rank's metrics, early stopping and checkpoint choice agree.
    """

    def __init__(self, metric: Metric, dev_dataset: Any, max_new_tokens: int, batch_size: int,
                 generations_path: Path, banned: tuple = (), expect_json: bool = False, every: int = 1,
                 runtime: Optional[Runtime] = None):
        self.metric = metric
        self.runtime = runtime or Runtime()
        self.every, self.evaluations = max(1, every), 0
        self.banned, self.expect_json = banned, expect_json
        self.last_checks: Optional[dict[str, Any]] = None  # the guardrail checks of the latest evaluation
        self.dataset = dev_dataset
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.generations_path = generations_path
        self.trainer: Any = None  # set by the runner once the trainer exists, to log the values

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        if metrics is None:
            return
        self.evaluations += 1
        first, last = self.evaluations == 1, state.max_steps and state.global_step >= state.max_steps
        if not (first or last or (self.evaluations - 1) % self.every == 0):
            return  # eval.generation_every: this evaluation has the loss only
        start = time.perf_counter()
        values, rows, checks = score_split(self.metric, model, processing_class, self.dataset, self.max_new_tokens,
                                           self.batch_size, self.banned, self.expect_json, self.runtime)
        if not rows and not values:
            return
        if checks is not None:
            self.last_checks = {"step": state.global_step, **checks}
        values = {f"eval_{k}": v for k, v in values.items()}
        # seconds (the main process's, so every rank logs the same metrics)
        values["eval_generation_runtime"] = from_main(round(time.perf_counter() - start, 3), self.runtime)
        metrics.update(values)
        if self.trainer is not None:
            self.trainer.log(values)
        if rows:
            on_main(lambda: write_text_atomic(self.generations_path, "".join(
                json.dumps({"step": state.global_step, **row}, ensure_ascii=False) + "\n" for row in rows)),
                self.runtime)


def add_loss_metrics(metrics: dict[str, Any], trainer: Any, registry: Any, prefix: str = "eval",
                     cfg: Any = None) -> None:
    """Add ``<prefix>_<key>`` for the metrics that ``needs`` the loss which the trainer lists in ``loss_metrics``
    (``perplexity`` = exp(loss)) or the config names (``data.metric``, ``eval.metric``), computed from
    ``<prefix>_loss`` where it is there and finite, and only for a trainer whose ``loss_is_token_nll`` (the
    mean token cross-entropy in nats).  A key the metrics already have is not replaced."""
    import math

    from sllmx.interfaces import NEEDS_LOSS

    loss = metrics.get(f"{prefix}_loss")
    if not getattr(trainer, "loss_is_token_nll", False) or not isinstance(loss, (int, float)) \
            or not math.isfinite(loss):
        return
    wanted = set(getattr(trainer, "loss_metrics", ()) or ())
    if cfg is not None:
        for key in ("data.metric", "eval.metric"):
            value = OmegaConf.select(cfg, key)
            if value:
                wanted.add(str(value).removeprefix("eval_"))
    for name, entry in registry.entries["metric"].items():
        if name in wanted and entry.obj.needs == NEEDS_LOSS:
            for k, v in entry.obj.compute([float(loss)]).items():
                metrics.setdefault(f"{prefix}_{k}", float(v))


class ObserverCallback(TrainerCallback):
    """Adds the metrics computed from the loss (``eval_perplexity``: :func:`add_loss_metrics`), then feeds
    every evaluation to the run's dev-metric history (and ``run.json``, rewritten with it), the run's logger
    (main process) and the ``sllmx_after_evaluate`` hook (whose exceptions are reported, not raised).  The
    evaluation at step 0 is the baseline (``eval_on_start``); it sets ``run.training`` (False for it, True after)."""

    def __init__(self, run: Any):
        self.run = run

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        from sllmx.loggers import log_metrics

        if metrics is not None:
            add_loss_metrics(metrics, self.run.trainer, self.run.registry, cfg=self.run.cfg)
        metrics = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        self.run.training = state.global_step > 0  # step 0: the baseline (eval.before_training)
        self.run.step = state.global_step
        self.run.record.dev_metric.add(state.global_step, metrics, training=self.run.training)
        self.run.record.global_steps = state.global_step
        if self.run.runtime.is_main:  # a killed run's record shows its evaluations so far
            self.run.record.write(self.run.output_dir)
            log_metrics(self.run.logger, metrics, state.global_step)
        self.run.registry.observe("sllmx_after_evaluate", run=self.run, metrics=metrics)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Training logs (loss, learning rate, the end-of-training summary) to the run's logger; evaluations
        go at ``on_evaluate``, with every metric added."""
        from sllmx.loggers import log_metrics

        if logs and self.run.runtime.is_main and not any(k.startswith("eval_") for k in logs):
            self.run.step = state.global_step
            log_metrics(self.run.logger, logs, state.global_step)


class MainDecidesCallback(TrainerCallback):
    """With several processes: after every evaluation, every rank takes the main process's decision
    to stop training (``control.should_training_stop``, e.g. ``EarlyStoppingCallback``'s), so all
    ranks stop at the same step.  Goes last in the callback list."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def on_evaluate(self, args, state, control, **kwargs):
        control.should_training_stop = bool(from_main(bool(control.should_training_stop), self.runtime))


class ConsoleProgress(TrainerCallback):
    """Training progress for a person watching: a tqdm bar over the optimizer steps (step, loss, train
    tokens/s, ETA) when stdout is a terminal, else (a log file, CI, a SLURM job's output) one line per
    logging step, ``train step 40/80 (50%): loss 0.8123 | 412 tokens/s | elapsed 1:02 | ETA 1:02`` (the ETA
    from the steps' own pace: the time of the dev evaluations is left out);
    and one line per dev evaluation (:func:`evaluation_line`).  The lines go through the ``sllmx``
    logger (console and Hydra's log file).  Must come after the callbacks that add metrics (generation
    metrics, perplexity) and the one that records the evaluation.
    """

    def __init__(self, run: Any, bar: Optional[bool] = None):
        self.run = run
        self.show_bar = (progress_enabled() and sys.stdout.isatty()) if bar is None else bar
        self.bar: Any = None
        self._mark: Optional[tuple[float, int]] = None  # (time, tokens seen) at the last log
        self._start: Optional[tuple[float, int]] = None  # (time, step) when this train() began
        self._last = 0.0  # when the last step or evaluation ended
        self._eval_s = 0.0  # seconds spent in evaluations since train() began (left out of the step rate)

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark = (time.perf_counter(), state.num_input_tokens_seen or 0)
        self._start = (time.perf_counter(), state.global_step)
        self._last, self._eval_s = self._start[0], 0.0
        if not self.show_bar or not state.is_world_process_zero:
            return
        from tqdm.auto import tqdm

        # stdout: where Hydra's console log goes, so the log lines (through logging_redirect_tqdm) clear the bar
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                        dynamic_ncols=True, file=sys.stdout)

    def on_step_end(self, args, state, control, **kwargs):
        self._last = time.perf_counter()
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        now, seen = time.perf_counter(), state.num_input_tokens_seen or 0
        rate = None
        if self._mark is not None and seen > self._mark[1] and now > self._mark[0]:
            rate = (seen - self._mark[1]) / (now - self._mark[0])
        self._mark = (now, seen)
        if self.bar is not None:
            self.bar.set_postfix({"loss": fmt(logs["loss"]), **({"tok/s": f"{rate:.0f}"} if rate else {})},
                                 refresh=False)
            return
        from tqdm import tqdm

        step, total = state.global_step, state.max_steps or 0
        elapsed = now - self._start[0]
        done = step - self._start[1]
        # the steps' own pace (evaluations left out), times the steps left
        eta = (elapsed - self._eval_s) / done * (total - step) if done > 0 and total >= step else None
        parts = [f"loss {fmt(logs['loss'])}"] + ([f"{rate:.0f} tokens/s"] if rate else [])
        parts += [f"elapsed {tqdm.format_interval(elapsed)}"] + ([f"ETA {tqdm.format_interval(eta)}"]
                                                                   if eta is not None else [])
        pct = f" ({100 * step / total:.0f}%)" if total else ""
        _log.info(f"train step {step}/{total}{pct}: " + " | ".join(parts))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or metrics is None:
            return
        line = evaluation_line(state.global_step, state.max_steps,
                               {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                               self.run.record.dev_metric)
        _log.info(line)  # through the bar while it is drawn (:func:`console`)
        now = time.perf_counter()
        self._eval_s += now - self._last
        self._last = now
        self._mark = (now, state.num_input_tokens_seen or 0)  # tokens/s of the steps only

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
