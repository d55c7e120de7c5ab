"""One run, top to bottom: :func:`run` takes the composed config and returns the run record."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sllmx.plugins import typed
from sllmx.data.checks import DATA_CHECK_FILE, check_lengths
from sllmx.errors import Interrupted, SllmxError
from sllmx.interfaces import BUILTIN_NEEDS, LAYOUT_PREFERENCE, NEEDS_PAIR_LOGPROBS, Method, Metric, Trainer
from sllmx.memory import peak_memory
from sllmx.plugins import Registry, registry
from sllmx.records import RUN_FILE, DevMetric, RunRecord, git_commit, library_versions
from sllmx.context import RunContext
from sllmx.dev_metric import dev_metric_of
from sllmx.loggers import finish_logger, start_logger
from sllmx.runtime import (Runtime, detect_runtime, from_main, gather, launched_processes, main_first, on_main,
                           wait_for_everyone)

__all__ = ["RunContext", "dev_metric_of", "run"]  # RunContext lives in sllmx.context (what hooks receive); run.py re-exports it


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_combination(method: Method, trainer: Trainer, cfg: DictConfig, reg: Registry) -> None:
    """Refuse a method × trainer pair that cannot work, before any model is loaded.

    Raises:
        SllmxError: with every reason given by the method and by ``sllmx_check_combination`` hooks.
    """
    reasons = [method.check(trainer, cfg)]
    reasons += reg.pm.hook.sllmx_check_combination(method=method, trainer=trainer, cfg=cfg)
    reasons = [r for r in reasons if r]
    if reasons:
        raise SllmxError(f"method={method.name} trainer={trainer.name} cannot work: " + "; ".join(reasons))


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count their logical elements (PEFT's rule)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    total = trainable = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def training_args(cfg: DictConfig, runtime: Runtime, dev: DevMetric, checkpoints: Path,
                  gradient_checkpointing: bool = False, resuming: bool = False) -> dict[str, Any]:
    """The run-level TRL/``TrainingArguments`` options sllmx decides (see :meth:`Trainer.build`).

    ``gradient_checkpointing`` is the run's decision (``trainer.gradient_checkpointing``, or
    :func:`sllmx.memory.decide_checkpointing` when that is null).  Checkpoints are saved at each dev
    evaluation with the optimizer, scheduler and RNG states (``save_only_model=False``), so that
    ``resume=`` can continue the run (the cost is in docs/resume.md).  ``resuming``: the run continues
    from a checkpoint, whose baseline evaluation is already recorded (no ``eval_on_start``).
    """
    import dataclasses

    from transformers import TrainingArguments

    # transformers 5.23 renamed gradient_checkpointing to activation_checkpointing
    gc_key = ("activation_checkpointing" if "activation_checkpointing" in
              {f.name for f in dataclasses.fields(TrainingArguments)} else "gradient_checkpointing")
    return dict(
        output_dir=str(checkpoints),
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=runtime.accelerator == "cpu",
        bf16=runtime.bf16,
        fp16=runtime.fp16,
        **{gc_key: bool(gradient_checkpointing)},
        # several processes: every trainable weight takes part in each step, so DDP need not search the graph
        # for unused ones (transformers searches for any PEFT model, and with checkpointing that search marks
        # LoRA's weights ready twice: "Expected to mark a variable ready only once", trl #4782, peft #313);
        # +trainer.args.ddp_find_unused_parameters=true for a model whose forward skips some
        ddp_find_unused_parameters=False,
        eval_strategy="steps",
        eval_steps=cfg.eval.eval_steps,
        eval_on_start=bool(cfg.eval.before_training) and not resuming,
        save_strategy="steps",
        save_steps=cfg.eval.eval_steps,
        # the best and the newest checkpoint (transformers keeps both even with 1, but deletes the newest at the
        # end of train(), which would lose the checkpoint an interrupted run resumes from)
        save_total_limit=2,
        # full state (optimizer, scheduler, RNG, trainer state) so resume= can continue the run;
        # +trainer.args.save_only_model=true saves the model only (no resume)
        save_only_model=False,
        load_best_model_at_end=True,
        metric_for_best_model=dev.name,
        greater_is_better=dev.higher_is_better,
        report_to=[],  # the run's logger plugin gets the metrics (sllmx.loggers), not transformers' integrations
        run_name=cfg.logger.get("run_name") or f"{cfg.method.name}-{cfg.trainer.name}-seed{cfg.seed}",
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # the default hides NaN/inf losses from train_loss; a diverged run must FAIL
        disable_tqdm=True,
        dataloader_num_workers=0,
        # sllmx's metrics come from callbacks, not compute_metrics: without this the HF evaluation loop
        # keeps every dev example's logits (examples x tokens x vocabulary floats: 12 GB for 100
        # DialogSum examples with SmolLM2's 49k vocabulary), which got a run OOM-killed
        prediction_loss_only=True,
    )


def run(cfg: DictConfig) -> RunRecord:
    """Fine-tune, evaluate and record one method × trainer × model × data configuration.

    Order (cheap checks first, so bad input fails before anything is loaded or written):
    runtime (device, ranks, precision) → plugins → method/trainer/pair check → model source check →
    dev metric → data →
    ``run.json`` (RUNNING) →
    model source → method.load_model → method.wrap → callbacks → trainer.build →
    baseline evaluation → train → save → ``run.json`` (COMPLETE / PRUNED / FAIL) →
    ``sllmx_after_run``.

    Returns:
        the final :class:`~sllmx.records.RunRecord` (also written to ``<output_dir>/run.json``).

    Raises:
        SllmxError: for bad input or a config that cannot work (nothing is written when
            it is found before training starts).
        Exception: whatever training raised, after ``run.json`` records ``FAIL`` with it.
    """
    from sllmx.data import load_splits

    t0 = time.time()
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SllmxError(f"{missing[0]} is required; set it on the command line ({missing[0]}=...)")
    trainer_args = cfg.trainer.get("args") or {}

    def runtime_now() -> Runtime:
        return detect_runtime(str(cfg.trainer.get("precision", "auto")), trainer_args.get("ddp_backend"),
                              trainer_args.get("ddp_timeout"))

    # several processes: join them first, so that on bad input every rank prints its line before any exits
    # (one process: after the cheap checks below, so bad input is refused before torch is imported)
    runtime = runtime_now() if launched_processes() > 1 else None
    from sllmx.validate import validate_config
    validate_config(cfg)  # every option within its declared range (sllmx.config), before anything loads
    reg = registry()
    method = reg.get("method", cfg.method.name)
    trainer = reg.get("trainer", cfg.trainer.name)
    check_combination(method, trainer, cfg, reg)
    reason = reg.get("model", cfg.model.source).check(typed(cfg.model, "model"))  # options, files, packages: nothing loaded
    if reason:
        raise SllmxError(reason)
    dev = dev_metric_of(cfg, trainer, reg)
    from sllmx.safety import compile_patterns

    compile_patterns(cfg.eval.banned_patterns)  # a bad pattern fails now, before anything is written
    runtime = runtime or runtime_now()
    if runtime.world_size > 1:
        check_sharded_evaluation(cfg, trainer_args)
    # several processes: one run folder, the main process's; and one answer to whether it is taken
    out = Path(from_main(str(cfg.output_dir), runtime))
    previous = None  # resume=: the unfinished run's record
    if from_main((out / RUN_FILE).exists(), runtime):
        from sllmx.resume import check_unfinished, read_run, taken

        if not cfg.get("resume"):
            message = on_main(lambda: taken(out), runtime)  # every rank calls it; the main one reads the file
            raise SllmxError(message or f"{out / RUN_FILE} already exists (the main process's run folder)")

        previous = on_main(lambda: read_run(out), runtime)
        on_main(lambda: check_unfinished(out, previous), runtime)
        previous = from_main(previous, runtime)
        from sllmx.resume import config_difference

        now = OmegaConf.to_container(cfg, resolve=True)
        diff = config_difference(now, previous.get("config", {}))
        if diff:
            raise SllmxError(f"resume={out}: the config differs from the run's ({diff}); resume with the run's own "
                             f"overrides (python -m sllmx resume={out} adds them)")
    elif cfg.get("resume") not in (None, "auto"):
        raise SllmxError(f"resume={cfg.resume}: {out / RUN_FILE} does not exist; nothing to resume")
    splits = load_splits(cfg.data, reg, trainer)
    if cfg.data.get("metric"):
        metric = reg.get("metric", cfg.data.metric)
        if cfg.eval.generation_every > 1 and dev.name.removeprefix("eval_") in metric.keys:
            raise SllmxError(f"eval.generation_every={cfg.eval.generation_every} skips {dev.name} at some "
                             f"evaluations, but it is the dev metric that selects the checkpoint; use 1, or "
                             f"another eval.metric")
        if metric.needs == NEEDS_PAIR_LOGPROBS and tuple(splits.layout) != LAYOUT_PREFERENCE:
            raise SllmxError(f"data.metric={metric.name} scores preference pairs, but trainer={trainer.name} reads "
                             f"the data as {'/'.join(splits.layout)}; use it with trainer=dpo or trainer=orpo")
        if metric.needs not in BUILTIN_NEEDS and type(metric).inputs is Metric.inputs:
            raise SllmxError(f"data.metric={metric.name} needs {metric.needs!r}, which sllmx does not compute "
                             f"({', '.join(BUILTIN_NEEDS)}), and the metric has no inputs() method")
    if cfg.eval.test and not len(splits.test or []):
        raise SllmxError("eval.test=true but the test split is empty; give data.test or data.test_fraction")
    trial = on_main(lambda: _open_trial(cfg), runtime)  # the trial's storage: the main process reports to it
    general = None
    if cfg.eval.general_data:  # read now, so a bad file fails before anything is written
        from sllmx.forgetting import load_general

        general = load_general(cfg.eval.general_data, cfg.eval.general_max_rows, reg)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["output_dir"] = str(out)
    checkpoint = None
    if previous is not None:
        checkpoint = _resume_point(out, runtime)
    record = RunRecord(
        status="RUNNING", method=method.name, trainer=trainer.name, model=resolved["model"],
        data={**resolved["data"], "format": splits.format, "layout": list(splits.layout),
              "splits": splits.provenance},
        seed=cfg.seed, config=resolved, dev_metric=dev, output_dir=str(out), started_at=_now(),
        device=runtime.device, world_size=runtime.world_size, backend=runtime.backend, precision=runtime.record(),
        hostname=socket.gethostname(), pid=os.getpid(), versions=library_versions(), git_commit=git_commit(os.getcwd()))
    main = runtime.is_main  # with several processes, only the main one writes files
    if splits.options.checks:
        record.data_checks = splits.report.summary()
        if main:
            splits.report.write(out / DATA_CHECK_FILE)
        record.artifacts["data_check"] = DATA_CHECK_FILE
    if previous is not None:
        _continue_record(record, previous, checkpoint, out)
    if cfg.trial.number is not None:
        from sllmx.study import mask_url

        record.trial = {"study_name": cfg.trial.study_name, "number": int(cfg.trial.number),
                        "storage": mask_url(cfg.trial.storage)}
    reserve = None
    if main:
        from sllmx.records import Reserve

        record.write(out)
        reserve = Reserve(out)  # the room for the last run.json on a disk that fills up during the run
    ctx = RunContext(cfg=cfg, registry=reg, method=method, trainer=trainer, runtime=runtime, record=record,
                     output_dir=out, splits=splits, trial=trial, general=general)
    ctx.checkpoint = checkpoint
    from sllmx.callbacks import GracefulStop

    try:
        with GracefulStop(runtime) as stop:
            ctx.stop = stop
            ctx.logger = start_logger(ctx) if main else None  # the logger plugin, on the main process only
            record.status = _train(ctx)
    except BaseException as exc:
        if ctx.hf_trainer is not None:
            record.global_steps = ctx.hf_trainer.state.global_step
        if isinstance(exc, (Interrupted, KeyboardInterrupt)):
            if not isinstance(exc, Interrupted):
                exc = Interrupted("SIGINT", record.global_steps)
            exc.step = record.global_steps
            record.status = "INTERRUPTED"  # the checkpoints stay: resume= continues from the last one
            record.error = f"{exc.signal} at step {record.global_steps or 0}"
            raise exc from None
        if type(exc).__name__ != "TrialPruned":
            record.status = "FAIL"
            record.error = f"{type(exc).__name__}: {exc}"
            if disk_full(exc, out):
                raise SllmxError(f"no space left on device under {out} (at step {record.global_steps or 0}); "
                                 f"{RUN_FILE} records FAIL; free space and continue with resume={out}") from exc
            raise
        record.status = "PRUNED"  # the pruner's decision, not an error: the run ends normally
        record.pruned = str(exc)
        if main:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    finally:
        record.finished_at = _now()
        record.wall_time_s = round(time.time() - t0, 3)
        record.peak_rss_bytes, record.peak_gpu_bytes = peak_memory(runtime.device)
        if main:
            reserve.release()
            record.write(out)
            finish_logger(ctx.logger, record)
            reg.observe("sllmx_after_run", record=record)  # an observer's exception is a warning line
    return record


def disk_full(exc: BaseException, out: Path) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a failed write on a full disk:
    ``OSError`` ENOSPC, safetensors' ``StorageFull``, or torch's "file write failed" with under
    1 MiB left under ``out``."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text or "StorageFull" in text:
            return True
        if "write failed" in text or "failed writing" in text:
            try:
                return shutil.disk_usage(out).free < 2**20
            except OSError:
                return False
        exc = exc.__cause__ or exc.__context__
    return False


def _resume_point(out: Path, runtime: Runtime) -> Any:
    """The checkpoint ``resume=`` continues from (None: none was complete; the run starts again in its
    folder).  Half-written checkpoints a kill left are removed (by the main process).

    Raises:
        SllmxError: when the newest checkpoint holds only the model (``save_only_model``), which
            cannot restore the optimizer and data order.
    """
    from sllmx.resume import incomplete_checkpoints, latest_checkpoint

    def find() -> Any:
        for partial in incomplete_checkpoints(out):
            shutil.rmtree(partial, ignore_errors=True)
        found = latest_checkpoint(out)
        if found is not None and not (found / "optimizer.pt").is_file():
            raise SllmxError(f"resume={out}: {found} holds the model only (trainer.args.save_only_model=true), "
                             f"not the optimizer, scheduler and RNG states a resumed run needs")
        return None if found is None else str(found)

    found = on_main(find, runtime)
    found = from_main(found, runtime)
    return None if found is None else Path(found)


def _continue_record(record: RunRecord, previous: dict[str, Any], checkpoint: Any, out: Path) -> None:
    """Carry an unfinished run's record into the resumed one: its start, earlier resumptions and the dev
    history up to the checkpoint's step (later evaluations are made again); note this resumption."""
    step = 0
    if checkpoint is not None:
        step = int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    record.started_at = previous.get("started_at") or record.started_at
    record.resumed = [*previous.get("resumed", []), {
        "step": step, "checkpoint": None if checkpoint is None else str(checkpoint.relative_to(out)),
        "at": _now(), "previous_status": previous.get("status"), "previous_error": previous.get("error")}]
    dev = record.dev_metric
    for h in previous.get("dev_metric", {}).get("history", []) if checkpoint is not None else []:
        if h["step"] <= step:
            dev.add(h["step"], h["metrics"], training=h["step"] > 0)


def _train(ctx: RunContext) -> str:
    """The model part of :func:`run`; fills ``ctx.record`` and returns the final status."""
    import datasets
    from transformers import AutoTokenizer, EarlyStoppingCallback, set_seed

    from transformers import PrinterCallback

    from sllmx.callbacks import ConsoleProgress, GenerationMetricCallback, NonFiniteStop, ObserverCallback
    from sllmx.progress import console

    from sllmx.data.cache import cache_splits

    datasets.disable_progress_bars()
    cfg, record, out, runtime = ctx.cfg, ctx.record, ctx.output_dir, ctx.runtime
    main = runtime.is_main
    source = ctx.registry.get("model", cfg.model.source)

    def build_caches() -> str:  # the main process builds them first; the others then read them
        cache_splits(ctx.splits, cfg.cache_dir)  # a sweep's trials tokenise each split once (datasets' map cache)
        return source.resolve(typed(cfg.model, "model"), os.path.expanduser(cfg.cache_dir))

    path = main_first(build_caches, runtime)
    set_seed(cfg.seed)
    record.model_facts = source.facts(path)
    kwargs = source.from_pretrained_kwargs(typed(cfg.model, "model"))
    ctx.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if ctx.splits.options.checks and ctx.splits.options.lengths:
        check_lengths(ctx.splits, ctx.tokenizer, cfg.trainer.get("max_length"))
        record.data_checks = ctx.splits.report.summary()
        if main:
            ctx.splits.report.write(out / DATA_CHECK_FILE)
            record.write(out)
    model = ctx.method.load_model(path, cfg.method, ctx.runtime, **kwargs)
    ctx.model = ctx.method.wrap(model, cfg.method, ctx.runtime, tokenizer=ctx.tokenizer)
    record.trainable_params, record.total_params = count_parameters(ctx.model)

    callbacks: list[Any] = []
    gen_cb = None
    if cfg.data.get("metric"):
        from sllmx.safety import compile_patterns

        gen_cb = GenerationMetricCallback(ctx.registry.get("metric", cfg.data.metric), ctx.splits.dev,
                                          cfg.eval.max_new_tokens, cfg.eval.generation_batch_size,
                                          out / "generations.jsonl", tuple(compile_patterns(cfg.eval.banned_patterns)),
                                          bool(cfg.eval.expect_json), cfg.eval.generation_every, runtime)
        callbacks.append(gen_cb)
    callbacks.append(ObserverCallback(ctx))
    progress = ConsoleProgress(ctx)
    callbacks += [progress, NonFiniteStop(runtime, scaled=runtime.fp16)]
    if ctx.stop is not None:
        callbacks.append(ctx.stop)
    if cfg.trial.number is not None:  # on every rank: the main process's decision reaches them all
        from sllmx.trial import TrialReporter

        callbacks.append(TrialReporter(ctx.trial, record.dev_metric.name, ctx))
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
                                       cfg.trainer, args, callbacks, **_virtual_tokens(ctx))
    ctx.hf_trainer.remove_callback(PrinterCallback)  # it prints each log as a raw dict: ConsoleProgress instead
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
        record.test_metrics = evaluate_split(ctx, ctx.splits.test, "test", gen_cb)
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


def check_sharded_evaluation(cfg: DictConfig, trainer_args: Any) -> None:
    """Refuse what cannot work with sharded weights (FSDP, DeepSpeed, set in ``trainer.args`` or by
    ``accelerate launch --config_file``): sllmx generates the dev answers (``data.metric``) and scores
    ``eval.general_data`` with each rank's own model, a batch per rank, which with shards would make each
    rank wait for the others' forward passes.

    Raises:
        SllmxError: naming the option and the way out.
    """
    sharded = [name for name, on in (
        ("FSDP", trainer_args.get("fsdp") or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"),
        ("DeepSpeed", trainer_args.get("deepspeed") or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower()
         == "true")) if on]
    if not sharded:
        return
    for option in ("data.metric", "eval.general_data"):
        if OmegaConf.select(cfg, option):
            raise SllmxError(f"{option}={OmegaConf.select(cfg, option)} with {sharded[0]}: each rank holds a shard "
                             f"of the weights, and sllmx scores it with each rank's model; set {option}=null "
                             f"(the dev loss still selects) or train with DDP")


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
    else:
        decision["set_by"] = "memory estimate"
    ctx.record.memory = decision
    return decision["gradient_checkpointing"]


def _virtual_tokens(ctx: RunContext) -> dict[str, int]:
    """``{"virtual_tokens": n}`` for :meth:`Trainer.build` when the method prepends virtual tokens, else ``{}``
    (also for a context without a method plugin: ``sllmx.evaluate`` of a saved model names the method only)."""
    ask = getattr(ctx.method, "num_virtual_tokens", None)
    n = ask(ctx.cfg.method) if ask is not None else 0
    return {"virtual_tokens": n} if n else {}


def _open_trial(cfg: DictConfig) -> Any:
    """The Optuna trial of a sweep job (see :mod:`sllmx.trial`), else None; optuna is imported only then."""
    if cfg.trial.number is None:
        return None
    from sllmx.trial import open_trial

    return open_trial(cfg.trial)


def evaluate_split(ctx: RunContext, dataset: Any, prefix: str, gen_cb: Any) -> dict[str, float]:
    """Evaluate the current (selected) model once on ``dataset``: the trainer's metrics and,
    where the data has a generation metric, that metric on greedy generations, as ``<prefix>_<key>``.

    Raises:
        SllmxError: when ``dataset`` is empty (e.g. ``eval.test=true`` with ``data.test_fraction=0``).
    """
    from sllmx.callbacks import add_loss_metrics, score_split
    from sllmx.atomic import write_text_atomic

    if dataset is None or len(dataset) == 0:
        raise SllmxError(f"eval.{prefix}=true but the {prefix} split is empty; set data.{prefix}_fraction or a "
                         f"{prefix} file")
    # A separate trainer with no callbacks, so the split is prepared by the objective's own
    # preprocessing and nothing here reaches the dev history, early stopping or the trial.
    args = training_args(ctx.cfg, ctx.runtime, ctx.record.dev_metric, ctx.output_dir / f"{prefix}-eval")
    args.update(report_to=[], load_best_model_at_end=False, save_strategy="no", eval_strategy="no", eval_on_start=False)
    evaluator = ctx.trainer.build(ctx.model, ctx.tokenizer, dataset, dataset, ctx.cfg.trainer, args, [],
                                  **_virtual_tokens(ctx))
    metrics = evaluator.evaluate(metric_key_prefix=prefix)
    add_loss_metrics(metrics, ctx.trainer, ctx.registry, prefix)
    wait_for_everyone(ctx.runtime)
    if ctx.runtime.is_main:
        shutil.rmtree(ctx.output_dir / f"{prefix}-eval", ignore_errors=True)
    if gen_cb is not None:
        values, rows, checks = score_split(gen_cb.metric, ctx.model, ctx.tokenizer, dataset, gen_cb.max_new_tokens,
                                           gen_cb.batch_size, gen_cb.banned, gen_cb.expect_json, ctx.runtime)
        metrics.update({f"{prefix}_{k}": v for k, v in values.items()})
        if checks is not None:
            ctx.record.output_checks["dev" if prefix == "eval" else prefix] = checks
        if rows:
            path = ctx.output_dir / f"generations-{prefix}.jsonl"
            on_main(lambda: write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
                    ctx.runtime)
            ctx.record.artifacts[f"generations_{prefix}"] = path.name
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
