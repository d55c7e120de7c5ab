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
import sys
import time
from pathlib import Path
from typing import Any, Optional

from sllmx.errors import Interrupted, OneLineParser, SllmxError, exit_with
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
    if record.baseline:
        raise SllmxError(f"{run_dir}: a baseline run (method={record.method}) trained nothing and has no model; run "
                         f"python -m sllmx method={record.method} ... with the options to change")
    if not (Path(run_dir) / "model").is_dir():
        raise SllmxError(f"{run_dir}/model: not found; the run did not save its model (save_model=false)")
    try:
        cfg = OmegaConf.merge(OmegaConf.create(record.config), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise SllmxError(f"overrides {overrides}: {exc}") from exc
    return cfg


def evaluate(run_dir: Optional[str], overrides: list[str], out: str) -> RunRecord:
    """Evaluate and write ``<out>/run.json`` through the runner's record lifecycle
    (:func:`sllmx.lifecycle.lifecycle` around :func:`sllmx.evaluation.evaluate_only`); return the record.

    Raises:
        SllmxError: bad input, or ``out`` already holding a ``run.json``.
    """
    from omegaconf import OmegaConf

    from sllmx.context import RunContext
    from sllmx.data.pipeline import load_splits
    from sllmx.dev_metric import dev_metric_of
    from sllmx.evaluation import evaluate_only
    from sllmx.lifecycle import lifecycle, new_record
    from sllmx.plugins import registry
    from sllmx.run import prompting_of
    from sllmx.runtime import detect_runtime

    t0 = time.time()
    out_dir = Path(out)
    if (out_dir / RUN_FILE).exists():
        raise SllmxError(f"{out_dir / RUN_FILE} already exists; choose another --out (nothing is overwritten)")
    cfg = load_config(run_dir, overrides)
    reg = registry()
    trainer = reg.get("trainer", cfg.trainer.name)
    method = reg.get("method", cfg.method.name) if run_dir else None  # a base model has no method
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("method=")]
    if run_dir is None and chosen and not reg.get("method", chosen[-1]).trains:
        raise SllmxError(f"method={chosen[-1]} is a prompting baseline: run it with python -m sllmx method={chosen[-1]} "
                         "(python -m sllmx.evaluate scores a base model with the data's prompts, or a finished run)")
    dev = dev_metric_of(cfg, trainer, reg)
    splits = load_splits(cfg.data, reg, trainer)
    prompting = prompting_of(cfg, method, reg, splits)  # eval.rag=...: the model evaluated with retrieval
    runtime = detect_runtime(str(cfg.trainer.get("precision", "auto")))
    OmegaConf.set_struct(cfg, False)
    cfg.output_dir = str(out_dir)  # not Hydra's run dir: this is no Hydra run
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["evaluated"] = {"run": run_dir, "model": dict(resolved["model"])}
    if run_dir is None:
        resolved["method"] = {"name": "base"}
    record = new_record(cfg, out_dir, method.name if method else "base", trainer.name, splits, dev, runtime,
                        config=resolved)
    record.baseline = run_dir is None  # a base model is a baseline; a fine-tuned run stays one
    record.prompting = prompting.record() if prompting is not None else {}
    ctx = RunContext(cfg=cfg, registry=reg, method=method, trainer=trainer, runtime=runtime, record=record,
                     output_dir=out_dir, splits=splits)
    return lifecycle(ctx, lambda c: evaluate_only(c, Path(run_dir) if run_dir else None), t0)


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
        from sllmx.launch import launched_processes

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
    except Interrupted as exc:
        sys.stderr.write(f"sllmx: {exc.signal}: evaluation stopped; {out}/run.json says INTERRUPTED\n")
        return exc.exit_status
    from sllmx.summary import summary

    print(summary(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
