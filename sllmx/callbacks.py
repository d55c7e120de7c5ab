"""Trainer callbacks the runner adds to every run.

- :class:`GenerationMetricCallback` scores the dev split with a metric plugin at each
  evaluation (greedy generations, or preference pairs' log-probabilities: the metric's
  ``needs``), and adds ``eval_<key>`` to the evaluation's metrics before early stopping and
  best-checkpoint selection read them.
- :class:`ObserverCallback` records each evaluation in the run's dev-metric history and
  calls the ``sllmx_after_evaluate`` hook.
- :class:`ConsoleProgress`: the bar over the steps (or a line per logging step) and a line per
  evaluation (:mod:`sllmx.progress`).
- :class:`GracefulStop` and :class:`NonFiniteStop`: SIGINT / SIGTERM and a non-finite loss end the
  run at the step, with a checkpoint for ``resume=`` and an honest record.
- :class:`MainDecidesCallback` (several processes only) gives every rank the main process's
  decision to stop training after an evaluation.

Early stopping is ``transformers.EarlyStoppingCallback``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from transformers import TrainerCallback

from sllmx.interfaces import Metric
from sllmx.progress import evaluation_line, fmt, progress_enabled
from sllmx.atomic import write_text_atomic
from sllmx.runtime import Runtime, from_main, map_batches, on_main

_log = logging.getLogger("sllmx")


def dev_prompts_and_references(dataset: Any) -> tuple[list[list[dict]], list[str]]:
    """Prompts (message lists) and reference answers of a dev split, for generation metrics.

    Works for the prompt/completion, preference (reference = ``chosen``) and unpaired
    (only ``label`` true rows) layouts; ``messages`` rows use the last assistant turn.

    Returns:
        ``(prompts, references)`` of equal length; empty when the layout has no reference (plain text).
    """
    prompts, refs = [], []
    cols = set(dataset.column_names)
    for row in dataset:
        if "messages" in cols:
            msgs = row["messages"]
            prompt, answer = msgs[:-1], msgs[-1]["content"]
        elif {"prompt", "chosen"} <= cols:
            prompt, answer = row["prompt"], row["chosen"]
        elif {"prompt", "completion"} <= cols:
            if "label" in cols and not row["label"]:
                continue
            prompt, answer = row["prompt"], row["completion"]
        else:
            return [], []
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(answer, list):
            answer = "".join(m["content"] for m in answer)
        prompts.append(prompt)
        refs.append(answer)
    return prompts, refs


@contextmanager
def inference(model: Any, tokenizer: Any, padding_side: str) -> Iterator[None]:
    """Evaluation mode and the given padding side for the block; both put back afterwards."""
    was_training, side = model.training, tokenizer.padding_side
    tokenizer.padding_side = padding_side
    model.eval()
    try:
        yield
    finally:
        tokenizer.padding_side = side
        model.train(was_training)


def generate(model: Any, tokenizer: Any, prompts: list[list[dict]], max_new_tokens: int,
             batch_size: int, truncated: Optional[list[bool]] = None, runtime: Optional[Runtime] = None,
             progress: bool = True) -> list[str]:
    """Greedy generation of one answer per chat prompt (chat template, left padding).

    Args:
        prompts: message lists; the tokenizer's chat template renders them with the generation prompt.
        max_new_tokens: the most tokens generated per answer.
        batch_size: prompts per ``generate`` call.
        truncated: when given, extended with one flag per prompt: True when the answer reached
            ``max_new_tokens`` without an end-of-sequence token.
        runtime: with several processes, the batches are split across the ranks and every rank
            gets every answer (:func:`sllmx.runtime.map_batches`; a collective call).
        progress: a bar over the prompts on a terminal (:func:`sllmx.progress.batches_bar`); False for none.

    Returns:
        the decoded answers (special tokens removed), one per prompt.
    """
    import torch

    eos = model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or [tokenizer.eos_token_id]))

    def one_batch(batch: list[list[dict]]) -> list[tuple[str, bool]]:
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        ended = torch.isin(new.cpu(), eos).any(dim=1)
        cut = [bool(new.shape[1] >= max_new_tokens and not e) for e in ended]
        if bar is not None:
            bar.update(len(batch))
        return list(zip(tokenizer.batch_decode(new, skip_special_tokens=True), cut))

    from sllmx.progress import batches_bar

    bar = batches_bar(len(prompts), "generate") if progress else None
    try:
        with inference(model, tokenizer, "left"):
            out = map_batches(one_batch, prompts, batch_size, runtime or Runtime())
    finally:
        if bar is not None:
            bar.close()
    if truncated is not None:
        truncated.extend(cut for _, cut in out)
    return [text.strip() for text, _ in out]


def preference_pairs(dataset: Any) -> tuple[list[list[dict]], list[list[dict]], list[list[dict]]]:
    """``(prompts, chosen, rejected)`` message lists of a split in the preference layout (empty otherwise)."""
    if dataset is None or not {"prompt", "chosen", "rejected"} <= set(dataset.column_names):
        return [], [], []
    as_msgs = lambda v, role: [{"role": role, "content": v}] if isinstance(v, str) else list(v)  # noqa: E731
    rows = list(dataset)
    return ([as_msgs(r["prompt"], "user") for r in rows], [as_msgs(r["chosen"], "assistant") for r in rows],
            [as_msgs(r["rejected"], "assistant") for r in rows])


def answer_logprobs(model: Any, tokenizer: Any, prompts: list[list[dict]], answers: list[list[dict]],
                    batch_size: int, counts: Optional[list[int]] = None,
                    runtime: Optional[Runtime] = None) -> list[float]:
    """Summed log-probability (nats) of each answer's tokens given its prompt, under ``model``.

    The conversation ``prompt + answer`` is rendered by the chat template; the answer's tokens
    are those after the rendering of ``prompt`` with the generation prompt (the tokens TRL's
    DPO trainer scores).  Right padding, no gradient, the model left in its previous mode.
    ``counts``, when given, is extended with each answer's number of tokens.  With ``runtime`` of
    several processes the batches are split across the ranks and gathered
    (:func:`sllmx.runtime.map_batches`; a collective call).
    """
    import torch

    def one_batch(pairs: list[tuple[list[dict], list[dict]]]) -> list[tuple[float, int]]:
        full = [tokenizer.apply_chat_template(p + a, tokenize=False) for p, a in pairs]
        heads = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p, _ in pairs]
        enc = tokenizer(full, return_tensors="pt", padding=True, add_special_tokens=False)
        starts = [len(tokenizer(h, add_special_tokens=False)["input_ids"]) for h in heads]
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            logits = model(**enc).logits
        out = []
        for j, start in enumerate(starts):
            end = int(enc["attention_mask"][j].sum())  # right padding: the real tokens come first
            # position t predicts token t + 1; only the answer's rows of the logits are normalised,
            # so memory stays at (answer tokens x vocabulary) per row, not (batch x length x vocabulary)
            rows = torch.log_softmax(logits[j, start - 1:end - 1].float(), dim=-1)
            out.append((float(rows.gather(-1, enc["input_ids"][j, start:end].unsqueeze(-1)).sum()),
                        max(end - start, 0)))
        return out

    with inference(model, tokenizer, "right"):
        scored = map_batches(one_batch, list(zip(prompts, answers)), batch_size, runtime or Runtime())
    if counts is not None:
        counts.extend(n for _, n in scored)
    return [lp for lp, _ in scored]


def score_split(metric: Metric, model: Any, tokenizer: Any, dataset: Any, max_new_tokens: int,
                batch_size: int, banned: tuple = (), expect_json: bool = False, runtime: Optional[Runtime] = None,
                ) -> tuple[dict[str, float], list[dict[str, Any]], Optional[dict[str, Any]]]:
    """The metric's values on ``dataset``, the rows behind them (for ``generations.jsonl``) and
    the guardrail checks of the answers (:func:`sllmx.safety.check_outputs`; None without generations).

    Computes what ``metric.needs``: greedy generations against the references, or each
    preference pair's chosen and rejected log-probabilities.  With generations, the values also
    hold the checks' shares (``empty_answers``, ``truncated_answers``, ``pii_answers``,
    ``banned_answers``, ``invalid_json_answers`` with ``expect_json``).  Returns ``({}, [], None)``
    when the split has nothing the metric can use (e.g. generations of a plain-text split).  With
    ``runtime`` of several processes, the ranks share the batches and all get the same values
    (a collective call: every rank must make it).

    Raises:
        SllmxError: a metric whose ``needs`` sllmx does not know.
    """
    from sllmx.errors import SllmxError
    from sllmx.interfaces import NEEDS_GENERATIONS, NEEDS_LOSS, NEEDS_PAIR_LOGPROBS

    if metric.needs == NEEDS_GENERATIONS:
        from sllmx.safety import as_metrics, check_outputs

        prompts, refs = dev_prompts_and_references(dataset)
        if not prompts:
            return {}, [], None
        cut: list[bool] = []
        preds = generate(model, tokenizer, prompts, max_new_tokens, batch_size, cut, runtime)
        rows = [{"input": p, "reference": r, "prediction": x, "truncated": t}
                for p, r, x, t in zip(prompts, refs, preds, cut)]
        checks = check_outputs(preds, cut, banned, expect_json)
        values = {k: float(v) for k, v in metric.compute(preds, refs).items()}
        return {**values, **as_metrics(checks)}, rows, checks
    if metric.needs == NEEDS_PAIR_LOGPROBS:
        prompts, chosen, rejected = preference_pairs(dataset)
        if not prompts:
            return {}, [], None
        lp_c = answer_logprobs(model, tokenizer, prompts, chosen, batch_size, runtime=runtime)
        lp_r = answer_logprobs(model, tokenizer, prompts, rejected, batch_size, runtime=runtime)
        rows = [{"input": p, "chosen_logp": c, "rejected_logp": r} for p, c, r in zip(prompts, lp_c, lp_r)]
        return {k: float(v) for k, v in metric.compute(lp_c, lp_r).items()}, rows, None
    if metric.needs == NEEDS_LOSS:  # computed from the evaluation's loss (add_loss_metrics)
        return {}, [], None
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "runtime": runtime or Runtime()}
    try:
        got = metric.inputs(model, tokenizer, dataset, settings)
    except NotImplementedError as exc:
        raise SllmxError(str(exc)) from exc
    if got is None:
        return {}, [], None
    return {k: float(v) for k, v in metric.compute(*got.args).items()}, list(got.rows), None


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


def add_loss_metrics(metrics: dict[str, Any], trainer: Any, registry: Any, prefix: str = "eval") -> None:
    """Add ``<prefix>_<key>`` for every registered metric that ``needs`` the loss (the built-in
    ``perplexity`` = exp(loss)), computed from ``<prefix>_loss`` where it is there and finite, and only for a
    trainer whose ``loss_is_token_nll`` (the mean token cross-entropy in nats)."""
    import math

    from sllmx.interfaces import NEEDS_LOSS

    loss = metrics.get(f"{prefix}_loss")
    if not getattr(trainer, "loss_is_token_nll", False) or not isinstance(loss, (int, float)) \
            or not math.isfinite(loss):
        return
    for entry in registry.entries["metric"].values():
        if entry.obj.needs == NEEDS_LOSS:
            metrics.update({f"{prefix}_{k}": float(v) for k, v in entry.obj.compute([float(loss)]).items()})


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
            add_loss_metrics(metrics, self.run.trainer, self.run.registry)
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


class GracefulStop(TrainerCallback):
    """SIGINT / SIGTERM during training: finish the current step, save a full checkpoint (the one
    ``resume=`` continues from), stop, and let the runner record ``INTERRUPTED``.  A second signal,
    or one outside the training loop (loading, saving), raises :class:`~sllmx.errors.Interrupted`
    at once.  With several processes every rank stops at the same step (any rank's signal counts).

    Use as a context manager around the run: it installs the handlers (main thread only) and puts
    the previous ones back.  It also logs the train loss at every checkpoint, so that a resumed run
    can give the mean train loss of all its steps.
    """

    SIGNALS = ("SIGINT", "SIGTERM")
    #: a second SIGTERM within this many seconds is the same request (scancel reaches the process directly
    #: and through torchrun's agent), not a demand to stop at once
    REPEAT_S = 5.0

    def __init__(self, runtime: Optional[Runtime] = None):
        self.runtime = runtime or Runtime()
        self.signal: Optional[str] = None  # the first signal received
        self.in_loop = False
        self.step: Optional[int] = None
        self._at = 0.0  # when the first signal came (time.monotonic)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "GracefulStop":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        import logging
        import signal

        from sllmx.errors import Interrupted

        import time

        name = signal.Signals(signum).name
        if self.signal == "SIGTERM" and name == "SIGTERM" and time.monotonic() - self._at < self.REPEAT_S:
            return  # the same SIGTERM again: SLURM signals every process and torchrun forwards it once more
        if self.signal is not None or not self.in_loop:
            raise Interrupted(self.signal or name, self.step)
        self.signal, self._at = name, time.monotonic()
        logging.getLogger("sllmx").warning("%s: stopping after this step and saving a checkpoint for resume= "
                                           "(send it again to stop at once)", name)

    def on_train_begin(self, args, state, control, **kwargs):
        self.in_loop, self.step = True, state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        stop = self.signal is not None
        if self.runtime.world_size > 1:  # one decision for every rank, or they would wait for each other
            from sllmx.runtime import gather

            names = [n for n in gather(self.signal, self.runtime) if n]
            self.signal, stop = (names[0] if names else None), bool(names)
        if stop:
            control.should_save = True
            control.should_training_stop = True
        if control.should_save:
            # a logging window ends at every checkpoint, so the train loss of a resumed run's earlier steps
            # is in the log history it restores (sllmx.training._whole_run_loss)
            control.should_log = True

    def on_train_end(self, args, state, control, **kwargs):
        self.in_loop = False


class NonFiniteStop(TrainerCallback):
    """Stop training at the step whose loss or gradients are not finite, instead of training on.

    Before each optimizer step the trainable parameters' gradients are summed (a NaN or inf
    anywhere makes the sum non-finite; one pass over the gradients, about 1% of a CPU step for
    full fine-tuning of a 135M model); with several processes any rank's finding stops every rank
    (FSDP ranks hold different gradient shards).  At each logging step the logged loss is checked
    too.  With fp16 (a ``GradScaler``) inf gradients are routine, the scaler skips those steps and
    lowers its scale, so only the logged loss is checked; under DeepSpeed the gradients are not on
    the parameters and likewise only the loss is.

    Args:
        runtime: the run's processes (one decision for all).  scaled: fp16 training with a grad scaler.

    Raises:
        FloatingPointError: ``loss or gradients not finite at step k`` (k counts from 1: the step
            being taken), which the runner records as ``FAIL`` with the last checkpoint kept.
    """

    def __init__(self, runtime: Optional[Runtime] = None, scaled: bool = False):
        self.runtime = runtime or Runtime()
        self.scaled = scaled

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        if self.scaled:
            return
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        bad = bool(grads) and not bool(torch.isfinite(torch.stack([g.detach().float().sum() for g in grads]).sum()))
        if self.runtime.world_size > 1:
            from sllmx.runtime import gather

            bad = any(gather(bad, self.runtime))
        if bad:
            raise FloatingPointError(f"loss or gradients not finite at step {state.global_step + 1}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        import math

        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise FloatingPointError(f"train loss {loss} at step {state.global_step}")


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
