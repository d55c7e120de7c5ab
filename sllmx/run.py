"""One run, top to bottom: :func:`run` takes the composed config and returns the run record."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from sllmx.context import RunContext
from sllmx.dev_metric import dev_metric_of
from sllmx.errors import SllmxError
from sllmx.interfaces import BUILTIN_NEEDS, LAYOUT_PREFERENCE, NEEDS_PAIR_LOGPROBS, Method, Metric, Trainer
from sllmx.launch import launched_processes
from sllmx.lifecycle import continue_record, lifecycle, new_record, resume_point, run_folder
from sllmx.plugins import Registry, registry, typed
from sllmx.records import RunRecord
from sllmx.runtime import Runtime, detect_runtime
from sllmx.training import train

__all__ = ["run", "check_combination", "check_sharded_evaluation", "prompting_of"]

log = logging.getLogger("sllmx.prompting")


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


def run(cfg: DictConfig) -> RunRecord:
    """Fine-tune, evaluate and record one method × trainer × model × data configuration.

    Order (cheap checks first, so bad input fails before anything is loaded or written):
    runtime (device, ranks, precision) → plugins → method/trainer/pair check → model source check →
    dev metric → data →
    ``run.json`` (RUNNING) →
    model source → method.load_model → method.wrap → callbacks → trainer.build →
    baseline evaluation → train → save → ``run.json`` (COMPLETE / PRUNED / FAIL) →
    ``sllmx_after_run``.  The record's start and end are :func:`sllmx.lifecycle.lifecycle`'s, the training
    :func:`sllmx.training.train`.

    Returns:
        the final :class:`~sllmx.records.RunRecord` (also written to ``<output_dir>/run.json``).

    Raises:
        SllmxError: for bad input or a config that cannot work (nothing is written when
            it is found before training starts).
        Exception: whatever training raised, after ``run.json`` records ``FAIL`` with it.
    """
    from sllmx.data.pipeline import load_splits

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
    out, previous = run_folder(cfg, runtime)  # several processes: one run folder, the main process's
    splits = load_splits(cfg.data, reg, trainer)
    prompting = prompting_of(cfg, method, reg, splits)  # few-shot examples, retrieval: before anything loads
    if cfg.data.get("metric"):
        metric = reg.get("metric", cfg.data.metric)
        if cfg.eval.generation_every > 1 and dev.name.removeprefix("eval_") in metric.keys:
            raise SllmxError(f"eval.generation_every={cfg.eval.generation_every} skips {dev.name} at some "
                             f"evaluations, but it is the dev metric that selects the checkpoint; use 1, or "
                             f"another eval.metric")
        if metric.needs == NEEDS_PAIR_LOGPROBS and tuple(splits.layout) != LAYOUT_PREFERENCE:
            raise SllmxError(f"data.metric={metric.name} scores preference pairs, but trainer={trainer.name} reads "
                             f"the data as {'/'.join(splits.layout)}; use it with a preference objective (trainer=dpo, orpo, cpo or simpo)")
        if metric.needs not in BUILTIN_NEEDS and type(metric).inputs is Metric.inputs:
            raise SllmxError(f"data.metric={metric.name} needs {metric.needs!r}, which sllmx does not compute "
                             f"({', '.join(BUILTIN_NEEDS)}), and the metric has no inputs() method")
    if cfg.eval.test and not len(splits.test or []):
        raise SllmxError("eval.test=true but the test split is empty; give data.test or data.test_fraction")
    general = None
    if cfg.eval.general_data:  # read now, so a bad file fails before anything is written
        from sllmx.forgetting import load_general

        general = load_general(cfg.eval.general_data, cfg.eval.general_max_rows, reg)

    checkpoint = None if previous is None else resume_point(out, runtime)
    record = new_record(cfg, out, method.name, trainer.name, splits, dev, runtime)
    record.baseline = not method.trains
    record.prompting = prompting.record() if prompting is not None else {}
    if previous is not None:
        continue_record(record, previous, checkpoint, out)
    ctx = RunContext(cfg=cfg, registry=reg, method=method, trainer=trainer, runtime=runtime, record=record,
                     output_dir=out, splits=splits, general=general, checkpoint=checkpoint)
    if not method.trains:  # a prompting baseline: the base model, scored once (sllmx.evaluation)
        from sllmx.evaluation import evaluate_only

        return lifecycle(ctx, evaluate_only, t0)
    return lifecycle(ctx, train, t0)


def prompting_of(cfg: DictConfig, method: Optional[Method], reg: Registry, splits: Any) -> Any:
    """How the dev/test prompts are built: the method's :meth:`~sllmx.interfaces.Method.prompting` (few-shot
    examples; none for ``method`` None, a base model), then ``eval.rag``'s retrieval; the dev and test splits of
    ``splits`` are rewritten with it, their provenance gaining ``prompts_sha256``.  Returns the
    :class:`sllmx.prompting.Prompting`, or None for the data's own prompts.

    Raises:
        SllmxError: a bad option or corpus (one line, before any model is loaded).
    """
    from sllmx.data.pipeline import sha256_of
    from sllmx.prompting import chain, leaked, rag, rewrite_split

    # few-shot examples and retrieved answers come from train as the data has it (not its augmented copies)
    train = splits.train if getattr(splits, "train_original", None) is None else splits.train_original
    own = None if method is None else method.prompting(typed(cfg.method, "method", reg), train, int(cfg.seed))
    retrieval = None
    if cfg.eval.get("rag"):
        from sllmx.config import EvalConfig

        default = EvalConfig()  # a finished run's config (sllmx.evaluate RUN_DIR) may predate these keys
        retrieval = rag(str(cfg.eval.rag), int(cfg.eval.get("rag_k", default.rag_k)),
                        str(cfg.eval.get("rag_template", default.rag_template)), train,
                        embedding_model=cfg.eval.get("rag_embedding_model"))
    prompting = chain(own, retrieval)
    if prompting is None:
        return None
    for name in ("dev", "test"):  # train stays as it is
        original = getattr(splits, name)
        dataset = rewrite_split(original, prompting)
        setattr(splits, name, dataset)
        rows = leaked(original, dataset) if dataset is not None and len(dataset) else []
        if rows:
            log.warning("prompts (%s): %d of %d %s prompts now contain their own reference answer (first: row "
                        "%d); the model is shown the answer it is scored against: check the corpus",
                        prompting.kind, len(rows), len(dataset), name, rows[0])
        if dataset is not None and name in splits.provenance:
            # the data's own hash stays (the same examples as a run with the data's prompts); the split as
            # evaluated has its own, which keys the tokenised-data cache (sllmx.data.cache)
            splits.provenance[name]["prompts_sha256"] = sha256_of(list(dataset))
    return prompting


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


