"""Evaluating a model once: on a split after training (``eval.test``), or as the whole work of an
evaluation-only run (``python -m sllmx.evaluate``: a base model, or a finished run's model), which goes
through the same record lifecycle as a training run (:func:`sllmx.lifecycle.lifecycle`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from sllmx.arguments import training_args
from sllmx.context import GenerationSettings, RunContext
from sllmx.data.checks import DATA_CHECK_FILE
from sllmx.data.lengths import ROUND_TO, check_lengths, token_lengths
from sllmx.errors import SllmxError
from sllmx.plugins import typed
from sllmx.runtime import main_first, on_main, wait_for_everyone

log = logging.getLogger(__name__)


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


def virtual_tokens(ctx: RunContext) -> dict[str, int]:
    """``{"virtual_tokens": n}`` for :meth:`Trainer.build` when the method prepends virtual tokens, else ``{}``
    (also for an evaluation-only run of a base model, which has no method)."""
    ask = getattr(ctx.method, "num_virtual_tokens", None)
    n = ask(typed(ctx.cfg.method, "method", ctx.registry)) if ask is not None else 0
    return {"virtual_tokens": n} if n else {}


def load_tokenizer(ctx: RunContext, trains: bool = True) -> tuple[str, dict[str, Any]]:
    """Resolve the run's model source (the main process first: it builds caches the others then read; the
    data splits are saved by content beside them), set ``ctx.tokenizer`` and check the splits' token
    lengths with it (``trains`` False: an evaluation-only run, see :func:`fit_rewritten_prompts`).  Returns the model's local path (or hub id) and its ``from_pretrained`` options."""
    from transformers import AutoTokenizer

    from sllmx.data.cache import cache_splits

    cfg, record, runtime = ctx.cfg, ctx.record, ctx.runtime
    source = ctx.registry.get("model", cfg.model.source)
    model_cfg = typed(cfg.model, "model", ctx.registry)

    def build_caches() -> str:
        cache_splits(ctx.splits, cfg.cache_dir)  # a sweep's trials tokenise each split once (datasets' map cache)
        return source.resolve(model_cfg, os.path.expanduser(cfg.cache_dir))

    path = main_first(build_caches, runtime)
    record.model_facts = source.facts(path)
    lineage = source.lineage(model_cfg)
    if lineage:  # a finished run as the base (model=run): the chain of stages
        record.model_facts["lineage"] = lineage
    kwargs = source.from_pretrained_kwargs(model_cfg)
    ctx.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if record.prompting:
        fit_rewritten_prompts(ctx, trains)
    options = ctx.splits.options
    if options is not None and options.checks and options.lengths:
        check_lengths(ctx.splits, ctx.tokenizer, ctx.trainer.truncation_length(cfg.trainer))
        record.data_checks = ctx.splits.report.summary()
        if runtime.is_main:
            ctx.splits.report.write(ctx.output_dir / DATA_CHECK_FILE)
            record.write(ctx.output_dir)
    return path, kwargs


def fit_rewritten_prompts(ctx: RunContext, trains: bool) -> None:
    """Make ``trainer.max_length`` hold the longest dev/test example whose prompt sllmx rewrote (few-shot
    examples, retrieved passages: :func:`sllmx.run.prompting_of`), so that no answer is cut off the end (TRL then
    drops an example with no completion token left as fully masked, and a split of them has no ``eval_loss``).

    An evaluation-only run (``trains`` False: a prompting baseline, ``sllmx.evaluate RUN eval.rag=...``) trains nothing, so the
    limit is raised to that length rounded up to a multiple of 16 and ``run.json``'s ``prompting`` records
    ``max_length`` ``{"from", "to"}``.  A training run keeps the limit it trains with (the same as the run
    without retrieval) and is refused instead.

    Raises:
        SllmxError: a training run whose rewritten dev/test prompts do not fit ``trainer.max_length``, with
            the value that fits (one line, before the model loads).
    """
    cfg = ctx.cfg
    max_length = cfg.trainer.get("max_length")
    if not max_length:
        return
    longest = {name: max(token_lengths(ds, ctx.tokenizer)) for name in ("dev", "test")
               if (ds := getattr(ctx.splits, name)) is not None and len(ds)}
    if not longest or max(longest.values()) <= max_length:
        return
    name = max(longest, key=longest.get)
    need = -(-longest[name] // ROUND_TO) * ROUND_TO
    if trains:
        raise SllmxError(f"trainer.max_length={max_length} cuts the rewritten {ctx.record.prompting.get('kind')} "
                         f"prompts of the {name} split (the longest has {longest[name]} tokens), which would drop "
                         f"their answers from eval_loss; give trainer.max_length={need}, or a smaller eval.rag_k")
    log.info("trainer.max_length %d -> %d for this evaluation: the rewritten %s prompts' longest %s example has %d "
             "tokens", max_length, need, ctx.record.prompting.get("kind"), name, longest[name])
    cfg.trainer.max_length = need
    ctx.record.prompting["max_length"] = {"from": int(max_length), "to": int(need)}


def evaluate_only(ctx: RunContext, run_dir: Optional[Path] = None) -> str:
    """The work of an evaluation-only run: load the base model (``ctx.method`` None) or the model a finished
    run saved in ``run_dir/model`` (its method's base with the PEFT adapter, or the full model), score the
    dev split once (the dev metric's ``baseline``, ``best`` and ``final``) and, with ``eval.test``, the test
    split.  Returns ``COMPLETE``.

    Raises:
        SllmxError: the dev metric was not computed on the dev split.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sllmx.records import RUN_FILE, RunRecord

    cfg, record, runtime = ctx.cfg, ctx.record, ctx.runtime
    record.global_steps = 0  # an evaluation trains nothing, whatever happens
    path, kwargs = load_tokenizer(ctx, trains=False)
    saved = None if run_dir is None else Path(run_dir) / "model"
    if saved is not None and (saved / "tokenizer_config.json").exists():
        ctx.tokenizer = AutoTokenizer.from_pretrained(saved, **kwargs)
    if saved is None and ctx.method is not None:  # a prompting baseline of the runner: the method loads the base
        ctx.model = ctx.method.load_model(path, typed(cfg.method, "method", ctx.registry), runtime, **kwargs)
    elif saved is None:
        ctx.model = AutoModelForCausalLM.from_pretrained(path, dtype=runtime.compute_dtype, **kwargs)
    elif (saved / "adapter_config.json").exists():
        from peft import PeftModel

        base = ctx.method.load_model(path, typed(cfg.method, "method", ctx.registry), runtime, **kwargs)
        ctx.model = PeftModel.from_pretrained(base, str(saved))
    else:
        ctx.model = AutoModelForCausalLM.from_pretrained(saved, dtype=runtime.compute_dtype)
    _, record.total_params = count_parameters(ctx.model)
    # what was trained: nothing for a base model; the run's own count for a run (PEFT loads adapters frozen)
    record.trainable_params = RunRecord.read(Path(run_dir) / RUN_FILE).trainable_params if run_dir else 0
    settings = GenerationSettings.of(cfg, ctx.registry)
    dev = record.dev_metric
    metrics = evaluate_split(ctx, ctx.splits.dev, "eval", settings)
    dev.add(0, metrics, training=False)
    dev.best, dev.best_step, dev.final = dev.baseline, 0, dev.baseline
    if dev.baseline is None:
        raise SllmxError(f"{dev.name} was not computed on the dev split; metrics: {', '.join(sorted(metrics))}")
    if cfg.eval.test:
        record.test_metrics = evaluate_split(ctx, ctx.splits.test, "test", settings)
    return "COMPLETE"


def evaluate_split(ctx: RunContext, dataset: Any, prefix: str,
                   settings: Optional[GenerationSettings]) -> dict[str, float]:
    """Evaluate the current (selected) model once on ``dataset``: the trainer's metrics and,
    where the data has a generation metric (``settings``), that metric, as ``<prefix>_<key>``; the rows
    behind it go to ``generations-<prefix>.jsonl``.

    Raises:
        SllmxError: when ``dataset`` is empty (e.g. ``eval.test=true`` with ``data.test_fraction=0``).
    """
    from sllmx.callbacks import add_loss_metrics
    from sllmx.generation import score_split
    from sllmx.atomic import write_text_atomic

    if dataset is None or len(dataset) == 0:
        raise SllmxError(f"eval.{prefix}=true but the {prefix} split is empty; set data.{prefix}_fraction or a "
                         f"{prefix} file")
    # A separate trainer with no callbacks, so the split is prepared by the objective's own
    # preprocessing and nothing here reaches the dev history, early stopping or the trial.
    args = training_args(ctx.cfg, ctx.runtime, ctx.record.dev_metric, ctx.output_dir / f"{prefix}-eval")
    args.update(report_to=[], load_best_model_at_end=False, save_strategy="no", eval_strategy="no", eval_on_start=False)
    evaluator = ctx.trainer.build(ctx.model, ctx.tokenizer, dataset, dataset, typed(ctx.cfg.trainer, "trainer", ctx.registry),
                                  args, [],
                                  **virtual_tokens(ctx))
    from transformers import PrinterCallback

    evaluator.remove_callback(PrinterCallback)  # it prints the metrics as a raw dict; the summary has them
    metrics = evaluator.evaluate(metric_key_prefix=prefix)
    if prefix != "eval":  # TRL's trainers add their own metrics as eval_* whatever the prefix (DPO's rewards/...)
        metrics = {(f"{prefix}_{k[5:]}" if k.startswith("eval_") else k): v for k, v in metrics.items()}
    add_loss_metrics(metrics, ctx.trainer, ctx.registry, prefix, ctx.cfg)
    wait_for_everyone(ctx.runtime)
    if ctx.runtime.is_main:
        shutil.rmtree(ctx.output_dir / f"{prefix}-eval", ignore_errors=True)
    if settings is not None:
        values, rows, checks = score_split(settings.metric, ctx.model, ctx.tokenizer, dataset, settings.max_new_tokens,
                                           settings.batch_size, settings.banned, settings.expect_json, ctx.runtime)
        metrics.update({f"{prefix}_{k}": v for k, v in values.items()})
        if checks is not None:
            ctx.record.output_checks["dev" if prefix == "eval" else prefix] = checks
        if rows:
            path = ctx.output_dir / f"generations-{prefix}.jsonl"
            on_main(lambda: write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
                    ctx.runtime)
            ctx.record.artifacts[f"generations_{prefix}"] = path.name
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
