"""``python -m sllmx.data check``: the data-quality report of a data config, without training.

    python -m sllmx.data check data=ko_chatbot                   # a preset, with the run's model tokenizer
    python -m sllmx.data check data=ko_chatbot data.max_rows=null data.duplicates=drop --out report.json
    python -m sllmx.data check train.jsonl --dev dev.jsonl model=tiny data.format=alpaca
    python -m sllmx.data check rows.csv data.columns='{prompt: Q, completion: A}' --write-splits splits/

Everything after ``check`` that contains ``=`` is a Hydra override of the run config (the same
``data=`` / ``model=`` / ``trainer=`` as ``python -m sllmx``); a plain path is the train file of
the ``files`` source.  Every check reports instead of stopping: invalid rows are all listed, and
leakage that would stop a run (``data.leakage=error``) is reported and makes the exit status 1.
Exit status: 0 clean, 1 a run with this config would stop (leakage, or invalid rows without
``data.skip_invalid``), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from sllmx.plugins import typed
from sllmx.errors import OneLineParser, SllmxError, exit_with


def check(overrides: list[str], out: Optional[str] = None, write_splits: Optional[str] = None) -> int:
    """Run the checks of the composed config; print the summary; return the exit status (0 or 1).

    Raises:
        SllmxError: bad input (an unknown option, an unreadable file), or an existing ``out`` file.
    """
    from omegaconf import OmegaConf

    from sllmx.data.lengths import check_lengths
    from sllmx.data.pipeline import load_splits
    from sllmx.plugins import registry

    if out and Path(out).exists():
        raise SllmxError(f"{out}: the file exists; nothing is overwritten")
    from sllmx.compose import compose

    cfg = compose(overrides)
    stop_on_leakage = cfg.data.get("leakage", "error") == "error"
    OmegaConf.set_struct(cfg, False)
    if stop_on_leakage:
        cfg.data.leakage = "report"  # report it all; the exit status says a run would stop
    cfg.data.checks = True
    logging.getLogger("sllmx.data").setLevel(logging.ERROR)  # the warnings are printed with the report
    reg = registry()
    trainer = reg.get("trainer", cfg.trainer.name)
    splits = load_splits(cfg.data, reg, trainer, collect_invalid=True)
    report = splits.report
    if stop_on_leakage:
        report.options["leakage"] = "error (reported, not stopped, by the check command)"
    if cfg.data.get("lengths", True):
        from transformers import AutoTokenizer

        source, model_cfg = reg.get("model", cfg.model.source), typed(cfg.model, "model", reg)
        path = source.resolve(model_cfg, os.path.expanduser(cfg.cache_dir))
        check_lengths(splits, AutoTokenizer.from_pretrained(path, **source.from_pretrained_kwargs(model_cfg)),
                      trainer.truncation_length(cfg.trainer))
    print("\n".join(report.lines()))
    leaked = sum(d["exact"] + d["near"] + d["exact_prompt"] + d["near_prompt"]
                 for d in report.leakage.get("pairs", {}).values())
    status = 0
    if stop_on_leakage and leaked:
        print("a run with this config would stop: leakage between splits (data.leakage=error); "
              "data.leakage=drop removes the shared rows from train")
        status = 1
    if report.invalid and not cfg.data.get("skip_invalid", False):
        print(f"a run with this config would stop at the first invalid row ({report.invalid[0]['where']}); "
              f"data.skip_invalid=true skips them")
        status = 1
    if out:
        report.write(out)
        print(f"wrote {out}")
    if write_splits:
        folder = Path(write_splits)
        for name in ("train", "dev", "test"):
            if (folder / f"{name}.jsonl").exists():
                raise SllmxError(f"{folder / f'{name}.jsonl'}: the file exists; nothing is overwritten")
        _write_splits(splits, folder)
    return status


def _write_splits(splits, folder: Path) -> None:
    """Each split's converted examples as ``<split>.jsonl`` (TRL's columns), written atomically."""
    import json

    from sllmx.atomic import write_text_atomic

    for name in ("train", "dev", "test"):
        ds = getattr(splits, name)
        if ds is not None and len(ds):
            text = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in ds)
            print(f"wrote {write_text_atomic(folder / f'{name}.jsonl', text)} ({len(ds)} examples)")


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = OneLineParser(prog="python -m sllmx.data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p = parser
    p.add_argument("command", choices=["check"], help="check: the data-quality report of a data config (no training)")
    p.add_argument("args", nargs="*", metavar="FILE|OVERRIDE",
                   help="a train file of the files source, and Hydra overrides (data=ko_chatbot, model=tiny, ...)")
    p.add_argument("--dev", metavar="FILE", help="dev file (data.dev)")
    p.add_argument("--test", metavar="FILE", help="test file (data.test)")
    p.add_argument("--out", metavar="FILE", help="write the whole report as JSON (an existing file is refused)")
    p.add_argument("--write-splits", metavar="DIR",
                   help="write train/dev/test as JSONL after the checks (the split a run would use)")
    args = parser.parse_intermixed_args(argv)
    files = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    try:
        if len(files) > 1:
            raise SllmxError(f"one train file, got {len(files)}: {', '.join(files)}; give dev and test files "
                             f"with --dev and --test")
        if files or args.dev or args.test:
            if not files and not any(o.startswith("data.path=") for o in overrides):
                raise SllmxError("--dev / --test need a train file")
            overrides = ["data=files", *(f"data.path={f}" for f in files), *overrides]
            overrides += [f"data.dev={args.dev}"] * bool(args.dev) + [f"data.test={args.test}"] * bool(args.test)
        return check(overrides, args.out, args.write_splits)
    except SllmxError as exc:
        exit_with(exc)
    return 2


if __name__ == "__main__":
    sys.exit(main())
