"""``python -m sllmx.export RUN_DIR --out DIR``: a finished run's model as a folder others can load.

What is written depends on what the run trained (its ``model/`` folder) and the flags:

- a LoRA-family adapter (lora, dora, qlora; any PEFT tuner with ``merge_and_unload``): by default the
  **merged** standalone model: the base loaded in float32, the adapter merged into its weights
  (``peft``'s ``merge_and_unload``), saved with ``save_pretrained`` as safetensors with the run's
  tokenizer and chat template.  ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it without PEFT.
  A QLoRA run trained its adapter against a 4-bit base; merging into 4-bit weights would round the update
  away, so the adapter is merged into the base in full precision and the card says so, with the measured
  logit difference to the model as trained.
- ``--adapter-only``: the adapter as the run saved it (``adapter_config.json``,
  ``adapter_model.safetensors``, byte for byte) with the tokenizer, for engines that load LoRA adapters
  on a base model (vLLM multi-LoRA); the card lists which of vLLM's limits the adapter meets.
- prompt tuning: a soft prompt is input embeddings prepended to every input, not a weight update, so it
  cannot be merged: the PEFT adapter and a reference to the base are exported (``--merged`` is refused).
- full fine-tuning: the saved model itself, re-saved as safetensors with the tokenizer.
- ``--quantize 8bit|4bit``: the merged or fully fine-tuned model reloaded through transformers'
  ``BitsAndBytesConfig`` and saved by bitsandbytes' own serialisation (works on CPU with
  bitsandbytes 0.50, checked; the 4-bit weights are saved before any forward pass, since bitsandbytes 0.50
  repacks CPU 4-bit weights into an inference layout on the first no-grad forward and a save after
  that reloads different weights: measured max |Δlogit| 0.023 on the tiny model).

Every export holds a model card (``README.md``, the Hugging Face format: YAML front matter with
``base_model`` where the base is a hub id, ``library_name``, ``tags``, ``pipeline_tag``; no licence, since
the run does not record one) with the run's method, data hashes, dev and test metrics and the command,
and ``sllmx_export.json`` (what was exported, from which run, the generation settings
``python -m sllmx.chat`` uses, the verification and every file's sha256).

The export is written to a temporary folder beside ``--out`` and renamed into place at the end; an
existing non-empty ``--out`` is refused.  Bad input ends in one line ``sllmx: error: ...`` (exit status 2)
before torch is imported.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from sllmx.atomic import atomic_path
from sllmx.atomic import umask as file_mask
from sllmx.errors import OneLineParser, SllmxError, exit_with, say
from sllmx.export_weights import export_adapter, export_weights, sha256_file
from sllmx.model_card import command_of, hub_id, model_card
from sllmx.run_folder import EXPORT_FILE, RunInfo, read_run

EXPORT_SCHEMA = 1
CARD_FILE = "README.md"
QUANTIZE = ("8bit", "4bit")
DTYPES = ("float32", "bfloat16", "float16")

# ----------------------------------------------------------------------------- planning (no torch)


def plan_export(info: RunInfo, merged: bool = False, adapter_only: bool = False,
                quantize: Optional[str] = None) -> str:
    """What to write for this run: ``merged``, ``adapter`` or ``full`` (see the module docstring).

    Raises:
        SllmxError: a flag this run's model cannot honour (``--merged`` for prompt tuning,
            ``--adapter-only`` for a full fine-tune, ``--quantize`` of an adapter), naming the option and why.
    """
    method = info.record.method
    if quantize is not None and quantize not in QUANTIZE:
        raise SllmxError(f"--quantize {quantize}: use one of {', '.join(QUANTIZE)}")
    if not info.is_adapter:
        if adapter_only:
            raise SllmxError(f"--adapter-only: method={method} trained every weight; there is no adapter "
                             f"to export (drop the flag to export the model)")
        return "full"
    if not info.mergeable:
        if merged:
            raise SllmxError(f"--merged: method={method} ({info.peft_type}) learns virtual-token embeddings that "
                             f"are prepended to every input, not a weight update, so it cannot be merged into the "
                             f"weights; drop --merged to export the adapter with a reference to its base")
        if quantize:
            raise SllmxError(f"--quantize {quantize}: method={method} exports a PEFT adapter on the unchanged "
                             f"base, so there are no weights of its own to quantize")
        return "adapter"
    if adapter_only:
        init = info.adapter.get("init_lora_weights")
        if init in ("pissa", "olora"):
            raise SllmxError(f"--adapter-only: the run's LoRA was initialised with {init}, which moved part of each "
                             f"base weight into the adapter; an engine that puts the adapter on the original base "
                             f"would serve another model; export it merged (drop --adapter-only)")
        if quantize:
            raise SllmxError(f"--quantize {quantize} with --adapter-only: the adapter stays in the precision it "
                             f"was trained in; quantize a merged export (drop --adapter-only)")
        return "adapter"
    return "merged"


def check_quantize_available(quantize: Optional[str]) -> None:
    """Refuse ``--quantize`` when bitsandbytes is not installed (checked without importing it).

    Raises:
        SllmxError: naming the package to install.
    """
    import importlib.util

    if quantize and importlib.util.find_spec("bitsandbytes") is None:
        raise SllmxError(f"--quantize {quantize} needs bitsandbytes, which is not installed "
                         f"(pip install bitsandbytes)")


def check_out(out: str | os.PathLike) -> Path:
    """The ``--out`` folder, refused when it exists and is not empty (nothing is overwritten).

    Raises:
        SllmxError: naming the path.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "folder is not empty" if out.is_dir() else "path is a file"
        raise SllmxError(f"--out {out}: the {what}; choose a new folder (nothing is overwritten)")
    if out.parent.exists() and not out.parent.is_dir():
        raise SllmxError(f"--out {out}: {out.parent} is not a folder")
    return out


def export(run_dir: str | os.PathLike, out: str | os.PathLike, *, merged: bool = False, adapter_only: bool = False,
           quantize: Optional[str] = None, dtype: str = "float32", verify: bool = True,
           log: Callable[[str], None] = say) -> dict[str, Any]:
    """Export a COMPLETE run's model into the new folder ``out`` (see the module docstring for what is written).

    Args:
        run_dir: the run folder (holding run.json and model/).
        out: the folder to create; must not exist or be empty.
        merged: insist on a merged model (refused for prompt tuning).  adapter_only: the adapter alone.
        quantize: None, ``8bit`` or ``4bit`` (bitsandbytes), for merged and full exports.
        dtype: the saved weights' dtype (``float32``, ``bfloat16``, ``float16``); the merge is always float32.
        verify: compare the export's logits, reloaded from disk, with the unmerged model (and, for QLoRA,
            the 4-bit model as trained) on up to :data:`VERIFY_PROMPTS` dev prompts; recorded in the card.
            A float32 export further than :data:`MERGE_TOLERANCE` (relative to the largest logit) from the
            unmerged model is refused.
        log: where the progress lines go (one per stage).

    Returns:
        the export record, also written to ``out/sllmx_export.json``.

    Raises:
        SllmxError: bad input (see :func:`read_run`, :func:`plan_export`, :func:`check_out`), before anything
            heavy is loaded or written; or a float32 export that fails its verification (nothing is written).
    """
    if dtype not in DTYPES:
        raise SllmxError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    info = read_run(run_dir)
    kind = plan_export(info, merged, adapter_only, quantize)
    check_quantize_available(quantize)
    out = check_out(out)
    if quantize and dtype != "float32":
        raise SllmxError(f"--dtype {dtype} with --quantize {quantize}: bitsandbytes keeps its own dtypes; drop --dtype")

    record: dict[str, Any] = {
        "sllmx_export": EXPORT_SCHEMA, "kind": kind, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"),
        "run": {"dir": str(info.path.resolve()), "method": info.record.method, "trainer": info.record.trainer,
                "peft_type": info.peft_type, "seed": info.record.seed, "status": info.record.status,
                "dev_metric": {"name": info.record.dev_metric.name, "best": info.record.dev_metric.best,
                               "best_step": info.record.dev_metric.best_step},
                "test_metrics": info.record.test_metrics, "data_splits": (info.record.data or {}).get("splits"),
                "command": command_of(info)},
        "base": {"model": info.record.model, "hub_id": hub_id(info.record.model)},
        "dtype": None if kind == "adapter" else dtype, "quantize": quantize,
        "generation": {"do_sample": False, "max_new_tokens": info.max_new_tokens, "system": info.system,
                       "batch_size": info.generation_batch_size},
        "notes": [], "verification": [],
    }
    with atomic_path(out, directory=True) as tmp:
        umask = file_mask()
        if kind == "adapter":
            export_adapter(info, tmp, record, log)
        else:
            export_weights(info, tmp, kind, record, quantize, dtype, verify, log)
        for p in tmp.iterdir():  # safetensors files are written 0600; give them a plain open()'s mode
            if p.is_file():
                os.chmod(p, 0o666 & ~umask)
        record["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                           for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CARD_FILE).write_text(model_card(info, kind, record), encoding="utf-8")
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n",
                                       encoding="utf-8")
        check_out(out)  # still free (another process may have taken it meanwhile)
    total = sum(f["bytes"] for f in record["files"].values())
    log(f"wrote {out} ({kind}{', ' + quantize if quantize else ''}; {len(record['files']) + 2} files, "
        f"{total / 1e6:.1f} MB)")
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (``python -m sllmx.export``); returns the exit status (2 on bad input)."""
    parser = OneLineParser(prog="python -m sllmx.export", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a COMPLETE run's folder (holding run.json and model/)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write; must not exist or be empty")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--merged", action="store_true",
                       help="the merged standalone model (the default for LoRA, DoRA, QLoRA; refused for "
                            "prompt tuning)")
    which.add_argument("--adapter-only", action="store_true",
                       help="the PEFT adapter alone, for engines that load adapters (vLLM --enable-lora)")
    parser.add_argument("--quantize", choices=QUANTIZE, help="save the merged / full model quantised by bitsandbytes")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of the saved weights (default float32; the merge is done in float32)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reloading the export and comparing its logits with the run's model")
    args = parser.parse_args(argv)
    try:
        export(args.run_dir, args.out, merged=args.merged, adapter_only=args.adapter_only, quantize=args.quantize,
               dtype=args.dtype, verify=not args.no_verify)
    except SllmxError as exc:
        exit_with(exc)
    except KeyboardInterrupt:
        sys.stderr.write(f"sllmx: interrupted; nothing was written to {args.out}\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
