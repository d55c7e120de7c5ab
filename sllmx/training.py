"""Training: the work of a training run (:func:`train`), between the record's start and end
(:func:`sllmx.lifecycle.lifecycle`): load and wrap the model, build the objective's TRL trainer with sllmx's
callbacks and the plugins', train (resuming from a checkpoint when asked), check the run did not diverge,
evaluate the selected checkpoint on test, save the model."""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

from sllmx.arguments import training_args
from sllmx.context import GenerationSettings, RunContext
from sllmx.errors import Interrupted
from sllmx.evaluation import count_parameters, evaluate_split, load_tokenizer, virtual_tokens
from sllmx.generation import contiguous_head_input
from sllmx.plugins import typed
from sllmx.runtime import from_main, gather, on_main, wait_for_everyone


def train(ctx: RunContext) -> str:
    """Load the model, train it, evaluate and save it: the work of a training run (:func:`sllmx.run.run`).
    Fills ``ctx.record`` and returns the final status (``COMPLETE``).

    Raises:
        Interrupted: SIGINT / SIGTERM stopped training (after the checkpoint of that step).
        FloatingPointError: the train loss or a dev metric is not finite (the run diverged).
    """
    import datasets
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed

    from sllmx.callbacks import ConsoleProgress, GenerationMetricCallback, ObserverCallback
    from sllmx.stops import NonFiniteStop
    from sllmx.progress import console

    datasets.disable_progress_bars()
    cfg, record, out, runtime = ctx.cfg, ctx.record, ctx.output_dir, ctx.runtime
    main = runtime.is_main
    path, kwargs = load_tokenizer(ctx)
    set_seed(cfg.seed)
    method_cfg = typed(cfg.method, "method", ctx.registry)  # the plugins get their own config dataclass
    model = ctx.method.load_model(path, method_cfg, ctx.runtime, **kwargs)
    adapter = ctx.registry.get("model", cfg.model.source).adapter(typed(cfg.model, "model", ctx.registry))
    if adapter:  # a finished run's adapter, trained further (model=run model.adapter=continue)
        ctx.model = ctx.method.continue_adapter(model, adapter, method_cfg, ctx.runtime)
    else:
        ctx.model = ctx.method.wrap(model, method_cfg, ctx.runtime, tokenizer=ctx.tokenizer)
    contiguous_head_input(ctx.model)  # generation's prefill with a frozen head (dev answers, GRPO's completions)
    record.trainable_params, record.total_params = count_parameters(ctx.model)

    callbacks: list[Any] = []
    gen_cb = None
    settings = GenerationSettings.of(cfg, ctx.registry)
    if settings is not None:
        gen_cb = GenerationMetricCallback(settings.metric, ctx.splits.dev, settings.max_new_tokens, settings.batch_size,
                                          out / "generations.jsonl", settings.banned, settings.expect_json,
                                          cfg.eval.generation_every, runtime)
        callbacks.append(gen_cb)
    callbacks.append(ObserverCallback(ctx))
    progress = ConsoleProgress(ctx)
    callbacks += [progress, NonFiniteStop(runtime, scaled=runtime.fp16)]
    if ctx.stop is not None:
        callbacks.append(ctx.stop)
    if cfg.eval.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(cfg.eval.early_stopping_patience, cfg.eval.early_stopping_threshold))
    for extra in ctx.pm.hook.sllmx_callbacks(run=ctx):
        callbacks.extend(extra)
    if runtime.world_size > 1:
        from sllmx.callbacks import MainDecidesCallback

        callbacks.append(MainDecidesCallback(runtime))  # last: every rank stops when the main process does

    checkpoints = out / "checkpoints"
    args = training_args(cfg, ctx.runtime, record.dev_metric, checkpoints, _checkpointing(ctx),
                         resuming=ctx.checkpoint is not None)
    ctx.hf_trainer = ctx.trainer.build(ctx.model, ctx.tokenizer, ctx.splits.train, ctx.splits.dev,
                                       typed(cfg.trainer, "trainer", ctx.registry), args, callbacks,
                                       **virtual_tokens(ctx))
    ctx.hf_trainer.remove_callback(PrinterCallback)  # it prints each log as a raw dict: ConsoleProgress instead
    optimizer = ctx.method.optimizer(ctx.model, method_cfg, ctx.hf_trainer.args)
    if optimizer is not None:  # the method's own (e.g. LoRA+); Trainer.create_optimizer keeps a set one
        ctx.hf_trainer.optimizer = optimizer
    built = ctx.hf_trainer.args  # trainer.args may have set the batch or the accumulation
    record.global_batch_size = (built.per_device_train_batch_size * built.gradient_accumulation_steps
                                * runtime.world_size)
    if gen_cb is not None:
        gen_cb.trainer = ctx.hf_trainer
        gen_cb.evaluations = len(record.dev_metric.history)  # resumed: the evaluations already made

    general = ctx.general
    if general is not None:
        from sllmx import forgetting

        before = forgetting.score(ctx.model, ctx.tokenizer, general, cfg.trainer.per_device_eval_batch_size)
    ctx.registry.observe("sllmx_before_train", run=ctx)  # an observer's exception is a warning line
    # the baseline evaluation (eval.before_training) is TrainingArguments.eval_on_start: inside train(), after
    # the model is prepared; an evaluate() before train() leaves it unwrapped by DDP, so that with several
    # processes each rank trained alone on its own gradients (accelerate marks the model as prepared)
    resumed_at = record.resumed[-1]["step"] if ctx.checkpoint is not None else 0
    tokens_before = _tokens_at(ctx.checkpoint)
    with console(progress.show_bar):
        result = ctx.hf_trainer.train(resume_from_checkpoint=None if ctx.checkpoint is None else str(ctx.checkpoint))

    state = ctx.hf_trainer.state
    record.global_steps = state.global_step
    if ctx.stop is not None and ctx.stop.signal and not (state.max_steps and state.global_step >= state.max_steps):
        raise Interrupted(ctx.stop.signal, state.global_step)  # after the checkpoint of this step
    record.train_runtime_s = round(result.metrics.get("train_runtime", 0.0), 3)
    record.train_tokens = int(state.num_input_tokens_seen) or None
    # throughput of the training steps: train() also runs the dev evaluations (loss and generation metrics);
    # a resumed run: of this part only (train_runtime is this train() call's)
    eval_s = sum(h.get("eval_runtime", 0.0) + h.get("eval_generation_runtime", 0.0) for h in state.log_history
                 if h.get("step", 0) > resumed_at or (resumed_at == 0 and h.get("step", 0) == 0))
    tokens_now = (record.train_tokens or 0) - tokens_before
    if tokens_now > 0 and record.train_runtime_s > eval_s:
        record.train_tokens_per_s = round(tokens_now / (record.train_runtime_s - eval_s), 2)
    record.metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    if runtime.world_size > 1 and "train_loss" in record.metrics:
        # transformers adds the loss since the last logging step to train_loss without averaging it over the
        # ranks; the mean of the ranks' train_loss is the mean over every rank's examples
        losses = gather(record.metrics["train_loss"], runtime)
        record.metrics["train_loss"] = sum(losses) / len(losses)
    if resumed_at and "train_loss" in record.metrics:
        record.metrics["train_loss"] = _whole_run_loss(state.log_history, resumed_at, record.metrics["train_loss"],
                                                       state.global_step)
    loss = record.metrics.get("train_loss")
    if loss is not None and not math.isfinite(loss):
        raise FloatingPointError(f"train_loss is {loss}")
    bad = next((h for h in record.dev_metric.history[1:] if h["value"] is not None and not math.isfinite(h["value"])),
               None)
    if bad is not None:
        raise FloatingPointError(f"{record.dev_metric.name} is {bad['value']} at step {bad['step']}")
    if general is not None:
        after = forgetting.score(ctx.model, ctx.tokenizer, general, cfg.trainer.per_device_eval_batch_size)
        record.forgetting = {"data": cfg.eval.general_data, "rows": len(general),
                             **forgetting.compare(before, after, cfg.eval.forgetting_threshold)}
        if record.forgetting["flagged"]:
            import logging

            logging.getLogger("sllmx").warning(
                "forgetting: perplexity on %s rose from %.3f to %.3f (x%.3f, threshold %.0f%%)",
                cfg.eval.general_data, before["perplexity"], after["perplexity"],
                record.forgetting["perplexity_ratio"], 100 * cfg.eval.forgetting_threshold)
    if gen_cb is not None and gen_cb.last_checks is not None:
        record.output_checks["dev"] = gen_cb.last_checks
    if cfg.eval.test:
        record.test_metrics = evaluate_split(ctx, ctx.splits.test, "test", settings)
    if cfg.save_model:
        # written beside, then renamed into place: a model/ folder is always whole
        partial = out / ".model.partial"
        on_main(lambda: shutil.rmtree(partial, ignore_errors=True), runtime)
        ctx.hf_trainer.save_model(str(partial))  # every rank calls it (FSDP gathers); the main one writes
        wait_for_everyone(runtime)

        def into_place() -> None:
            shutil.rmtree(out / "model", ignore_errors=True)  # a resumed run's earlier partial save
            os.replace(partial, out / "model")  # sllmx.atomic's rule; one fixed name, as every rank must know it

        on_main(into_place, runtime)
        record.artifacts["model"] = "model"
    if (out / "generations.jsonl").exists():
        record.artifacts["generations"] = "generations.jsonl"
    wait_for_everyone(runtime)
    if main:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return "COMPLETE"


def _whole_run_loss(log_history: list[dict], resumed_at: int, part_loss: float, last_step: int) -> float:
    """The mean train loss over every step of a resumed run: transformers' ``train_loss`` covers only the
    steps of the last ``train()`` call, so the steps before ``resumed_at`` come from the logged losses
    (each the mean of its logging window).  Returns ``part_loss`` unchanged when the windows do not
    end exactly at ``resumed_at``."""
    done, total, previous = 0, 0.0, 0
    for h in log_history:
        if "loss" in h and h["step"] <= resumed_at:
            total += h["loss"] * (h["step"] - previous)
            done, previous = h["step"], h["step"]
    if done != resumed_at or last_step <= resumed_at:
        return part_loss
    return (total + part_loss * (last_step - resumed_at)) / last_step


def _tokens_at(checkpoint: Any) -> int:
    """Train tokens seen up to a checkpoint (its ``trainer_state.json``); 0 for None."""
    if checkpoint is None:
        return 0
    return int(json.loads((checkpoint / "trainer_state.json").read_text()).get("num_input_tokens_seen") or 0)


def _checkpointing(ctx: RunContext) -> bool:
    """``trainer.gradient_checkpointing``, or when null the memory estimate's decision; recorded in
    run.json ``memory``."""
    from sllmx.memory import decide_checkpointing

    cfg = ctx.cfg.trainer
    # the longest train example when the length check ran, else max_length
    longest = (ctx.splits.report.lengths.get("by_split", {}).get("train", {}).get("max")
               or cfg.get("max_length") or 2048)
    seq_len = min(longest, cfg.get("max_length") or longest)
    runtime = ctx.runtime
    # on a CPU the processes of one run share the host's memory; a GPU is each process's own
    sharing = runtime.world_size if runtime.accelerator == "cpu" else 1
    decision = decide_checkpointing(ctx.model.config, cfg.per_device_train_batch_size, seq_len, runtime.device,
                                    4 if runtime.precision == "fp32" else 2, sharing)
    decision = from_main(decision, runtime)  # one decision for every rank (their free memory differs)
    if cfg.gradient_checkpointing is not None:
        decision["gradient_checkpointing"] = bool(cfg.gradient_checkpointing)
        decision["set_by"] = "trainer.gradient_checkpointing"
    elif not ctx.method.gradient_checkpointing:
        decision["gradient_checkpointing"] = False
        decision["set_by"] = f"method={ctx.method.name} cannot train with it"
    else:
        decision["set_by"] = "memory estimate"
    ctx.record.memory.update(decision)
    return decision["gradient_checkpointing"]
