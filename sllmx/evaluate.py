"""``python -m sllmx.evaluate``: evaluate a base model or a finished run on a data config, no training.

    python -m sllmx.evaluate data=dialogsum eval.metric=rougeL            # the base model
    python -m sllmx.evaluate outputs/2026-11-21/10-00-00-lora-sft         # a run: its base model + adapter,
    python -m sllmx.evaluate RUN_DIR eval.test=true --out evals/lora      # on its own data config

It writes the same ``run.json`` as a training run (``status: COMPLETE``, ``global_steps: 0``;
the dev metric's ``baseline``, ``best`` and ``final`` are the one evaluation), so
``python -m sllmx.report`` places base models and fine-tuned runs side by side.  A base model's
record has ``method: base``; a run's record keeps the run's method.  The dev split is scored
with the trainer's loss and the data's metric plugin; with ``eval.test=true`` the test split
too (``test_metrics``).  The config is the run's own (from its ``run.json``) or the one
``python -m sllmx`` composes, with the overrides given here applied on top.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from sllmx.plugins import typed
from sllmx.errors import OneLineParser, SllmxError, exit_with
from sllmx.records import RUN_FILE, RunRecord


def load_config(run_dir: Optional[str], overrides: list[str]) -> Any:
    """The config to evaluate with: ``run_dir``'s resolved config plus ``overrides`` (dotted
    ``key=value``), or the composed default config with ``overrides`` (Hydra's grammar).

    Raises:
        SllmxError: no ``run.json`` in ``run_dir``, or an override Hydra or OmegaConf refuses.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if run_dir is None:
        from sllmx.compose import compose

        return compose(overrides)
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise SllmxError(f"{path}: not found; give a run directory (one with run.json)")
    try:
        record = RunRecord.read(path)
    except ValueError as exc:
        raise SllmxError(f"{path}: {exc}") from exc
    if not (Path(run_dir) / "model").is_dir():
        raise SllmxError(f"{run_dir}/model: not found; the run did not save its model (save_model=false)")
    try:
        cfg = OmegaConf.merge(OmegaConf.create(record.config), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise SllmxError(f"overrides {overrides}: {exc}") from exc
    return cfg


def load_model(cfg: Any, run_dir: Optional[str], reg: Any, runtime: Any) -> tuple[Any, Any, str]:
    """``(model, tokenizer, method name)``: the base model of ``cfg.model``, or the run's model
    (its method's base model with the saved PEFT adapter; a full fine-tune's saved weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = reg.get("model", cfg.model.source)
    path = source.resolve(typed(cfg.model, "model"), os.path.expanduser(cfg.cache_dir))
    kwargs = source.from_pretrained_kwargs(typed(cfg.model, "model"))
    if run_dir is None:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        return (AutoModelForCausalLM.from_pretrained(path, dtype=runtime.compute_dtype, **kwargs), tokenizer,
                "base")
    saved = Path(run_dir) / "model"
    tokenizer = AutoTokenizer.from_pretrained(saved if (saved / "tokenizer_config.json").exists() else path,
                                              **kwargs)
    if (saved / "adapter_config.json").exists():
        from peft import PeftModel

        method = reg.get("method", cfg.method.name)
        base = method.load_model(path, cfg.method, runtime, **kwargs)
        return PeftModel.from_pretrained(base, str(saved)), tokenizer, cfg.method.name
    return AutoModelForCausalLM.from_pretrained(saved, dtype=runtime.compute_dtype), tokenizer, cfg.method.name


def evaluate(run_dir: Optional[str], overrides: list[str], out: str) -> RunRecord:
    """Evaluate and write ``<out>/run.json``; return the record.

    Raises:
        SllmxError: bad input, or ``out`` already holding a ``run.json``.
    """
    from omegaconf import OmegaConf

    from sllmx.data.pipeline import load_splits
    from sllmx.plugins import registry
    from sllmx.records import library_versions
    from sllmx.memory import peak_memory
    from sllmx.run import RunContext, count_parameters, detect_runtime, dev_metric_of, evaluate_split

    t0 = time.time()
    out_dir = Path(out)
    if (out_dir / RUN_FILE).exists():
        raise SllmxError(f"{out_dir / RUN_FILE} already exists; choose another --out (nothing is overwritten)")
    cfg = load_config(run_dir, overrides)
    reg = registry()
    trainer = reg.get("trainer", cfg.trainer.name)
    dev = dev_metric_of(cfg, trainer, reg)
    splits = load_splits(cfg.data, reg, trainer)
    runtime = detect_runtime(str(cfg.trainer.get("precision", "auto")))
    model, tokenizer, method_name = load_model(cfg, run_dir, reg, runtime)
    OmegaConf.set_struct(cfg, False)
    cfg.output_dir = str(out_dir)  # not Hydra's run dir: this is no Hydra run
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved = {**resolved, "output_dir": str(out_dir), "evaluated": {"run": run_dir, "model": dict(resolved["model"])}}
    if run_dir is None:
        resolved["method"] = {"name": "base"}
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record = RunRecord(status="RUNNING", method=method_name, trainer=trainer.name, model=resolved["model"],
                       data={**resolved["data"], "format": splits.format, "layout": list(splits.layout),
                             "splits": splits.provenance},
                       seed=cfg.seed, config=resolved, dev_metric=dev, output_dir=str(out_dir), started_at=now,
                       device=runtime.device, precision=runtime.record(), hostname=socket.gethostname(),
                       pid=os.getpid(),
                       versions=library_versions(), global_steps=0)
    _, record.total_params = count_parameters(model)
    # what was trained: nothing for a base model; the run's own count for a run (PEFT loads adapters frozen)
    record.trainable_params = RunRecord.read(Path(run_dir) / RUN_FILE).trainable_params if run_dir else 0
    # the run's method plugin where it is one (the trainers ask it about virtual tokens), else just its name
    entry = reg.entries["method"].get(method_name)
    ctx = RunContext(cfg=cfg, registry=reg, method=entry.obj if entry else SimpleNamespace(name=method_name),
                     trainer=trainer,
                     runtime=runtime, record=record, output_dir=out_dir, model=model, tokenizer=tokenizer,
                     splits=splits)
    out_dir.mkdir(parents=True, exist_ok=True)
    scorer = None
    if cfg.data.get("metric"):
        from sllmx.safety import compile_patterns

        scorer = SimpleNamespace(metric=reg.get("metric", cfg.data.metric), max_new_tokens=cfg.eval.max_new_tokens,
                                 batch_size=cfg.eval.generation_batch_size,
                                 banned=tuple(compile_patterns(cfg.eval.get("banned_patterns", []))),
                                 expect_json=bool(cfg.eval.get("expect_json", False)))
    metrics = evaluate_split(ctx, splits.dev, "eval", scorer)
    dev.add(0, metrics, training=False)
    dev.best, dev.best_step, dev.final = dev.baseline, 0, dev.baseline
    if dev.baseline is None:
        raise SllmxError(f"{dev.name} was not computed on the dev split; metrics: {', '.join(sorted(metrics))}")
    if cfg.eval.test:
        record.test_metrics = evaluate_split(ctx, splits.test, "test", scorer)
    record.status = "COMPLETE"
    record.finished_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record.wall_time_s = round(time.time() - t0, 3)
    record.peak_rss_bytes, record.peak_gpu_bytes = peak_memory(runtime.device)
    record.write(out_dir)
    return record


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input)."""
    parser = OneLineParser(prog="python -m sllmx.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("args", nargs="*", metavar="RUN_DIR|OVERRIDE",
                        help="a run directory (optional) and overrides (data=..., eval.metric=..., eval.test=true)")
    parser.add_argument("--out", help="where run.json goes; default: outputs/eval/<time>-<method>")
    args = parser.parse_intermixed_args(argv)
    runs = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    try:
        from sllmx.runtime import launched_processes

        if launched_processes() > 1:
            raise SllmxError("python -m sllmx.evaluate runs as one process; start it without torchrun or "
                             "accelerate launch")
        if len(runs) > 1:
            raise SllmxError(f"one run directory at a time, got {len(runs)}: {', '.join(runs)}")
        run_dir = runs[0] if runs else None
        out = args.out or os.path.join("outputs", "eval", _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S") + "-"
                                       + (Path(run_dir).name if run_dir else "base"))
        record = evaluate(run_dir, overrides, out)
    except SllmxError as exc:
        exit_with(exc)
        return 2
    from sllmx.summary import summary

    print(summary(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
