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

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from sllmx.plugins import typed
from sllmx.atomic import atomic_path
from sllmx.atomic import umask as file_mask
from sllmx.errors import SllmxError, exit_with
from sllmx.records import RUN_FILE, RunRecord

#: the machine-readable record of an export (read by ``python -m sllmx.chat EXPORT_DIR``)
EXPORT_FILE = "sllmx_export.json"
EXPORT_SCHEMA = 1
CARD_FILE = "README.md"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: PEFT types whose parameters are virtual tokens (prompt learning): nothing to merge into weights
PROMPT_LEARNING = frozenset({"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING", "CPT"})
QUANTIZE = ("8bit", "4bit")
DTYPES = ("float32", "bfloat16", "float16")
#: vLLM's allowed ``--max-lora-rank`` values and its default (vllm/config/lora.py, ``MaxLoRARanks`` and
#: ``LoRAConfig.max_lora_rank``, v0.26 and later)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
#: dev prompts (from ``generations.jsonl``) whose logits are compared in the verification
VERIFY_PROMPTS = 4
#: the largest |logit difference| a float32 export may have against the unmerged model, as a share of the largest
#: |logit| (at least 1): float32 rounding of W + BA against W x + B(A x) over SmolLM2's 30 layers gave 1.8e-4 on
#: logits up to 46 (4e-6 of it); the tiny model under 1e-6
MERGE_TOLERANCE = 1e-5


class _Parser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, missing argument) are one ``sllmx: error:`` line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        exit_with(SllmxError(f"{self.prog}: {message} (see {self.prog} --help)"))


def say(message: str) -> None:
    """One progress line on stderr (``sllmx: ...``), flushed at once."""
    sys.stderr.write(f"sllmx: {message}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- reading a run


@dataclass
class RunInfo:
    """A finished run folder as export and chat read it (nothing heavy loaded).

    Attributes:
        path: the run folder.  record: its ``run.json``.
        model_dir: the saved model (``<run>/model``): a PEFT adapter folder or a full model.
        adapter: the adapter's ``adapter_config.json`` (``{}`` for a full model).
        overrides: Hydra's ``.hydra/overrides.yaml`` (the command line's overrides), None when the
            run was not started by ``python -m sllmx``.
    """

    path: Path
    record: RunRecord
    model_dir: Path
    adapter: dict[str, Any] = field(default_factory=dict)
    overrides: Optional[list[str]] = None

    @property
    def is_adapter(self) -> bool:
        """True when the run saved a PEFT adapter (not a full model)."""
        return bool(self.adapter)

    @property
    def peft_type(self) -> Optional[str]:
        """``LORA``, ``PROMPT_TUNING``, ... (``adapter_config.json``), None for a full model."""
        return self.adapter.get("peft_type") if self.adapter else None

    @property
    def adapter_label(self) -> str:
        """``LoRA``, ``DoRA`` (a LoRA config with ``use_dora``), else the PEFT type (``PROMPT_TUNING``, ...)."""
        if self.peft_type == "LORA":
            return "DoRA" if self.adapter.get("use_dora") else "LoRA"
        return str(self.peft_type)

    @property
    def mergeable(self) -> bool:
        """True for an adapter that changes weights (LoRA, DoRA, ...), False for prompt learning and full models."""
        return self.is_adapter and self.peft_type not in PROMPT_LEARNING

    @property
    def quantized_base(self) -> bool:
        """True when the method loaded the base quantised (QLoRA: its config has ``bnb_*`` / ``load_in_*`` options)."""
        method = self.record.config.get("method") or {}
        return any(str(k).startswith(("bnb_", "load_in_")) for k in method)

    @property
    def max_new_tokens(self) -> int:
        """The run's ``eval.max_new_tokens`` (the dev generations' length limit)."""
        return int((self.record.config.get("eval") or {}).get("max_new_tokens") or 256)

    @property
    def generation_batch_size(self) -> int:
        """The run's ``eval.generation_batch_size`` (batching changes left padding, hence the answers, slightly)."""
        return int((self.record.config.get("eval") or {}).get("generation_batch_size") or 16)

    @property
    def system(self) -> Optional[str]:
        """The run's system prompt (``data.system``), put first in every dev prompt; None when it had none."""
        return (self.record.config.get("data") or {}).get("system") or None

    def dev_prompts(self, limit: Optional[int] = None) -> list[list[dict]]:
        """The message lists of the run's last dev generations (``generations.jsonl``), at most ``limit``."""
        path = self.path / self.record.artifacts.get("generations", "generations.jsonl")
        prompts: list[list[dict]] = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if isinstance(row.get("input"), list):
                        prompts.append(row["input"])
                if limit is not None and len(prompts) >= limit:
                    break
        return prompts


def read_run(path: str | os.PathLike) -> RunInfo:
    """Read a run folder (or its ``run.json``) and check that it can be exported or chatted with.

    Nothing heavy is imported: this runs before torch loads, so bad input fails at once.

    Raises:
        SllmxError: the folder or ``run.json`` is missing or unreadable, the run is not ``COMPLETE``,
            or it saved no model (``save_model=false``), naming the path.
    """
    path = Path(path)
    if path.name == RUN_FILE and path.is_file():
        path = path.parent
    if not path.exists():
        raise SllmxError(f"{path}: no such run folder")
    if not path.is_dir():
        raise SllmxError(f"{path}: not a folder; give a run folder (the one holding {RUN_FILE})")
    if not (path / RUN_FILE).is_file():
        raise SllmxError(f"{path}: no {RUN_FILE} in it; give the folder of a run made by python -m sllmx")
    try:
        record = RunRecord.read(path)
    except (ValueError, TypeError, KeyError) as exc:
        raise SllmxError(f"{path / RUN_FILE}: not a readable run record ({type(exc).__name__}: {exc})") from None
    if record.status != "COMPLETE":
        why = f": {record.error}" if record.error else (f": {record.pruned}" if record.pruned else "")
        raise SllmxError(f"{path / RUN_FILE}: status {record.status}{why}; only a COMPLETE run has a final model")
    model_dir = path / record.artifacts.get("model", "model")
    if "model" not in record.artifacts or not model_dir.is_dir():
        raise SllmxError(f"{path}: the run saved no model ({model_dir} is missing; it ran with save_model=false?)")
    adapter: dict[str, Any] = {}
    if (model_dir / ADAPTER_CONFIG).is_file():
        adapter = json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    elif not (model_dir / "config.json").is_file():
        raise SllmxError(f"{model_dir}: neither {ADAPTER_CONFIG} nor config.json; not a saved model")
    overrides = None
    hydra_file = path / ".hydra" / "overrides.yaml"
    if hydra_file.is_file():
        import yaml

        loaded = yaml.safe_load(hydra_file.read_text(encoding="utf-8"))
        overrides = [str(o) for o in loaded] if isinstance(loaded, list) else None
    return RunInfo(path=path, record=record, model_dir=model_dir, adapter=adapter, overrides=overrides)


def _omegaconf(node: Any) -> Any:
    """A run.json config section as an OmegaConf node (what plugins receive during a run)."""
    from omegaconf import OmegaConf

    return OmegaConf.create(node or {})


def resolve_base(info: RunInfo) -> tuple[str, dict[str, Any]]:
    """The base model's local path (or hub id) and ``from_pretrained`` options, through the run's
    model-source plugin (``model.source``) exactly as the run resolved them; a cached build that is
    gone (the tiny model, a GGUF conversion) is rebuilt.

    Raises:
        SllmxError: the source plugin is not installed or refuses the recorded model config.
    """
    from sllmx.plugins import registry

    cfg = _omegaconf(info.record.config)
    source = registry().get("model", cfg.model.source)
    reason = source.check(typed(cfg.model, "model"))
    if reason:
        raise SllmxError(reason)
    cache_dir = os.path.expanduser(str(cfg.get("cache_dir") or "~/.cache/sllmx"))
    return source.resolve(typed(cfg.model, "model"), cache_dir), source.from_pretrained_kwargs(typed(cfg.model, "model"))


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_run_model(info: RunInfo, device: Optional[str] = None) -> tuple[Any, Any]:
    """The run's final model and tokenizer, loaded the way the run built them: the base through the
    run's method plugin (``method.load_model``: QLoRA loads it 4-bit) in the run's precision
    (run.json ``precision.dtype``; fp16 off a GPU becomes fp32), then the saved adapter
    (``peft.PeftModel.from_pretrained``); a full fine-tune is the saved model, loaded by the method.
    The tokenizer (with the chat template) is the one saved with the model.

    Greedy answers of this model on the run's dev prompts equal ``generations.jsonl`` when the last dev
    evaluation was at the best step (the saved model is the best checkpoint; ``generations.jsonl`` holds
    the last evaluation's answers).

    Returns:
        ``(model, tokenizer)``, the model in eval mode on ``device`` (default: :func:`default_device`).
    """
    from transformers import AutoTokenizer

    from sllmx.plugins import registry
    from sllmx.runtime import Runtime

    device = device or default_device()
    precision = (info.record.precision or {}).get("dtype") or "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        precision = "fp32"
    runtime = Runtime(device=device, precision=precision, precision_reason="as the run")
    cfg = _omegaconf(info.record.config)
    method = registry().get("method", info.record.method)
    tokenizer = AutoTokenizer.from_pretrained(str(info.model_dir))
    if info.is_adapter:
        from peft import PeftModel

        path, kwargs = resolve_base(info)
        base = method.load_model(path, cfg.method, runtime, **kwargs)
        model = PeftModel.from_pretrained(base, str(info.model_dir))
    else:
        kwargs = {"trust_remote_code": bool(cfg.model.get("trust_remote_code", False))}
        model = method.load_model(str(info.model_dir), cfg.method, runtime, **kwargs)
    model.eval()
    return model, tokenizer


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


# ----------------------------------------------------------------------------- vLLM notes


def vllm_notes(adapter: dict[str, Any], quantized_base: bool = False) -> list[str]:
    """What serving this adapter with vLLM's multi-LoRA (``--enable-lora --lora-modules NAME=DIR``) needs,
    one line per limit that applies.  Sources: vLLM's ``vllm/config/lora.py`` (``max_lora_rank`` default
    16, allowed ``1, 8, 16, 32, 64, 128, 256, 320, 512``), vllm-project/vllm#6983 and #10849 (DoRA's
    ``lora_magnitude_vector`` is not a supported LoRA weight; a DoRA PR, #47395, is open), vLLM's
    ``ValueError: vLLM only supports modules_to_save being None`` (hiyouga/LlamaFactory#9545, vLLM
    0.10), vllm-project/vllm#5733 (bias terms need ``--enable-lora-bias``), and the prompt-adapter support
    of vllm-project/vllm#4645, dropped by v0.10 (opendatahub-io/vllm-tgis-adapter#269).

    Returns:
        the notes (empty: nothing beyond ``--enable-lora`` is needed).
    """
    peft_type = adapter.get("peft_type")
    if peft_type in PROMPT_LEARNING:
        return [f"{peft_type} adapter: vLLM's LoRA serving does not load it (its prompt-adapter support was "
                f"removed by v0.10); serve it with transformers + peft (python -m sllmx.chat DIR)"]
    if peft_type != "LORA":
        return [f"{peft_type} adapter: vLLM's multi-LoRA serves LoRA adapters only; export it merged instead"]
    notes = []
    rank = int(adapter.get("r") or 0)
    ranks = [int(v) for v in (adapter.get("rank_pattern") or {}).values()]
    top = max([rank, *ranks])
    if top > VLLM_DEFAULT_MAX_LORA_RANK:
        allowed = next((r for r in VLLM_LORA_RANKS if r >= top), None)
        notes.append(f"rank {top} > vLLM's default --max-lora-rank {VLLM_DEFAULT_MAX_LORA_RANK}: start vLLM with "
                     f"--max-lora-rank {allowed}" if allowed else
                     f"rank {top} exceeds vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}: export merged")
    if adapter.get("use_dora"):
        notes.append("DoRA (use_dora=true): vLLM's LoRA layers have no magnitude vector "
                     "(lora_magnitude_vector is an unsupported LoRA weight, vllm#6983); export merged instead")
    if adapter.get("modules_to_save"):
        notes.append(f"modules_to_save={adapter['modules_to_save']}: vLLM only supports modules_to_save being None")
    if adapter.get("bias") not in (None, "none") or adapter.get("lora_bias"):
        notes.append("trained bias terms: vLLM needs --enable-lora-bias for them (vllm#5733)")
    targets = adapter.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    odd = sorted({t.split(".")[-1] for t in targets if t.split(".")[-1] in ("lm_head", "embed_tokens")})
    if odd:
        notes.append(f"LoRA on {', '.join(odd)}: vLLM's support for LoRA on embeddings / the output head depends "
                     f"on the model class; check it, or export merged")
    if quantized_base:
        notes.append("QLoRA: the adapter was trained against the 4-bit NF4 base; on a base in full precision "
                     "its answers differ slightly from the run's (the merged export records how much)")
    return notes


# ----------------------------------------------------------------------------- the model card


def _hub_id(model: dict[str, Any]) -> Optional[str]:
    """The base model's Hugging Face hub id, when the run loaded it from the hub (``model=hf``)."""
    name = model.get("name_or_path")
    if model.get("source") != "hf" or not isinstance(name, str):
        return None
    if os.path.exists(name) or name.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return None
    return name


def base_label(model: dict[str, Any]) -> str:
    """A readable name of the base model from run.json ``model`` (hub id, preset name, file, or source)."""
    if model.get("name_or_path"):
        return str(model["name_or_path"])
    if model.get("name"):
        return str(model["name"])
    if model.get("path"):
        return os.path.basename(str(model["path"]))
    if model.get("package"):
        return f"{model.get('file')} from the package {model['package']}"
    return f"{model.get('source', '?')} model"


def _fmt(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return "n/a" if value is None else str(value)


def best_step_metrics(record: RunRecord) -> dict[str, float]:
    """The dev evaluation at the best step (the saved model's), its ``eval_*`` values (timings left out)."""
    dm = record.dev_metric
    hist = dm.history
    row = next((h for h in hist[1:] if h["step"] == dm.best_step), hist[-1] if hist else None)
    metrics = (row or {}).get("metrics") or {}
    return {k: v for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, (int, float))
            and not k.endswith(("runtime", "per_second", "preparation_time", "num_tokens"))}


def command_of(info: RunInfo) -> Optional[str]:
    """The ``python -m sllmx ...`` command that reproduces the run (Hydra's overrides), None when unknown."""
    if info.overrides is None:
        return None
    return " ".join(["python -m sllmx", *(shlex.quote(o) for o in info.overrides)])


def model_card(info: RunInfo, kind: str, export: dict[str, Any]) -> str:
    """The exported folder's ``README.md``: a Hugging Face model card (YAML front matter, then Markdown)
    with the run's method, base model, data hashes, dev and test metrics, the command, the verification
    and how to load or serve the export.

    Args:
        kind: ``merged``, ``adapter`` or ``full`` (:func:`plan_export`).
        export: the export record (``sllmx_export.json``'s content, verification included).
    """
    import yaml

    rec = info.record
    cfg = rec.config
    hub = _hub_id(rec.model)
    quant = export.get("quantize")
    tags = ["sllmx", rec.method, rec.trainer]
    if kind == "adapter":
        tags += ["peft", *(["lora"] if info.peft_type == "LORA" else [])]
    if quant:
        tags += ["bitsandbytes", quant]
    meta: dict[str, Any] = {}
    if hub:
        meta["base_model"] = hub
    meta["library_name"] = "peft" if kind == "adapter" else "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = list(dict.fromkeys(tags))
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()

    base = base_label(rec.model)
    lines = ["---", front, "---", "",
             f"# {rec.method} / {rec.trainer} fine-tune of {base}", "",
             f"Exported by `python -m sllmx.export` from the run `{info.path}` "
             f"(status {rec.status}, finished {rec.finished_at}).", ""]
    lines += ["## What this folder holds", ""]
    if kind == "merged":
        lines.append(f"The base model with the run's {info.adapter_label} adapter merged into its weights "
                     f"(`peft` `merge_and_unload`, in float32), saved as safetensors in {export['dtype']} with the "
                     f"tokenizer and its chat template. `transformers` loads it alone; PEFT is not needed.")
    elif kind == "full":
        lines.append(f"The fully fine-tuned model as the run saved it, re-saved as safetensors in {export['dtype']} "
                     f"with the tokenizer and its chat template.")
    else:
        lines.append(f"The run's PEFT {info.adapter_label} adapter (`{ADAPTER_CONFIG}`, `{ADAPTER_WEIGHTS}`, byte for "
                     f"byte as the run saved it) and the tokenizer with its chat template. The base model is not "
                     f"included: load `{base}` and put the adapter on it (below).")
    for note in export.get("notes", []):
        lines.append(f"\n- {note}")
    if quant:
        lines.append(f"\nQuantised to {quant} with bitsandbytes (`BitsAndBytesConfig` "
                     f"{json.dumps(export.get('quantization_config') or {}, sort_keys=True)}); loading needs "
                     f"`bitsandbytes`.")
    lines += ["", "Base model: " + (f"[`{hub}`](https://huggingface.co/{hub})" if hub else f"`{base}`")
              + f" (run.json `model`: `{json.dumps(rec.model, ensure_ascii=False, sort_keys=True)}`). "
              "Licence: not recorded by the run; the base model's licence applies.", ""]

    lines += ["## Training", "", "| | |", "|---|---|",
              f"| method | {rec.method} |", f"| objective | {rec.trainer} |", f"| seed | {rec.seed} |",
              f"| optimizer steps | {_fmt(rec.global_steps)} |",
              f"| precision | {(rec.precision or {}).get('dtype', 'n/a')} |",
              f"| trainable parameters | {_fmt(rec.trainable_params)} of {_fmt(rec.total_params)} |",
              f"| train tokens | {_fmt(rec.train_tokens)} |", f"| wall time (s) | {_fmt(rec.wall_time_s)} |"]
    method_opts = {k: v for k, v in (cfg.get("method") or {}).items() if k != "name"}
    trainer_cfg = cfg.get("trainer") or {}
    trainer_keys = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "max_length", "beta", "loss_type", "lr_scheduler_type")
    trainer_opts = {k: trainer_cfg[k] for k in trainer_keys if k in trainer_cfg}
    lines += [f"| method options | `{json.dumps(method_opts, ensure_ascii=False)}` |",
              f"| trainer options | `{json.dumps(trainer_opts, ensure_ascii=False)}` |", ""]

    data = rec.data or {}
    lines += ["## Data", "",
              f"Source `{data.get('source', 'n/a')}`, format `{data.get('format', 'n/a')}`, layout "
              f"`{'/'.join(data.get('layout') or [])}`. `sha256` hashes the canonical JSON of each split's converted "
              f"examples in order (run.json `data.splits`): equal hashes mean the same data.", "",
              "| split | origin | rows | sha256 |", "|---|---|---|---|"]
    for split, prov in (data.get("splits") or {}).items():
        lines.append(f"| {split} | `{prov.get('origin')}` | {prov.get('rows')} | `{prov.get('sha256')}` |")
    lines.append("")

    dm = rec.dev_metric
    direction = "higher" if dm.higher_is_better else "lower"
    lines += ["## Results", "",
              f"Dev metric `{dm.name}` ({direction} is better): before training {_fmt(dm.baseline)}, best "
              f"{_fmt(dm.best)} at step {_fmt(dm.best_step)} (the exported model), final {_fmt(dm.final)}.", ""]
    best = best_step_metrics(rec)
    if best:
        lines += ["| dev metric at the best step | value |", "|---|---|"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in sorted(best.items())]
        lines.append("")
    if rec.test_metrics:
        lines += ["| test metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in sorted(rec.test_metrics.items())]
    else:
        lines.append("Not evaluated on a test split (the run had `eval.test=false`).")
    lines.append("")

    lines += ["## Command", ""]
    command = command_of(info)
    if command:
        trial = f" (trial {rec.trial['number']} of the sweep `{rec.trial['study_name']}`)" if rec.trial else ""
        lines += [f"The run{trial}, as Hydra recorded its overrides (`.hydra/overrides.yaml`):", "", "```bash",
                  command, "```"]
    else:
        lines.append("Not recorded: the run folder has no `.hydra/overrides.yaml` (it was not started by "
                     "`python -m sllmx`). The resolved config below reproduces it.")
    versions = rec.versions or {}
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
              + (f"; run from the git checkout {rec.git_commit}" if rec.git_commit and rec.git_commit not in
                 str(versions.get("sllmx")) else "") + ".", ""]

    verification = export.get("verification") or []
    if verification:
        lines += ["## Verification", "",
                  "Logits of this export (reloaded from disk) against a reference, on the run's first dev prompts "
                  "(chat template with the generation prompt):", "",
                  "| reference | prompts | tokens | max abs logit difference |", "|---|---|---|---|"]
        lines += [f"| {v['against']} | {v['prompts']} | {v['tokens']} | {v['max_abs_logit_diff']:.3g} |"
                  for v in verification]
        lines.append("")

    gen = export.get("generation") or {}
    lines += ["## Use", "",
              f"Greedy decoding and at most {gen.get('max_new_tokens')} new tokens reproduce the run's dev "
              f"generations" + (f"; the run's system prompt was: {json.dumps(gen.get('system'), ensure_ascii=False)}"
                                if gen.get("system") else "") + ".", "", "```python"]
    if kind == "adapter":
        lines += ["from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"base = AutoModelForCausalLM.from_pretrained({json.dumps(hub or export['base'].get('path'))})",
                  'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
                  'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")',
                  'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")']
    lines += ['messages = [{"role": "user", "content": "..."}]',
              "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
              "return_dict=True)",
              f"out = model.generate(**ids, max_new_tokens={gen.get('max_new_tokens')}, do_sample=False)",
              "print(tokenizer.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))", "```", "",
              "Or interactively: `python -m sllmx.chat THIS_FOLDER`.", ""]
    if kind == "adapter":
        notes = export.get("vllm") or []
        lines += ["### Serving with vLLM (multi-LoRA)", ""]
        if info.peft_type == "LORA":
            lines.append("`vllm serve BASE --enable-lora --lora-modules NAME=THIS_FOLDER`"
                         + (" needs:" if notes else ": no further limits apply (rank, DoRA, modules_to_save and "
                                                    "bias checked against vLLM's limits, see sllmx's docs/export.md)."))
        lines += [f"- {n}" for n in notes]
        lines.append("")
    else:
        lines += ["### GGUF (llama.cpp)", "",
                  "No PyPI package writes GGUF; llama.cpp's converter does (see sllmx's docs/export.md): "
                  "`python convert_hf_to_gguf.py THIS_FOLDER --outfile model.gguf --outtype q8_0`"
                  + (" (needs an unquantised export: bitsandbytes weights are not read by it)." if quant else "."), ""]

    lines += ["<details><summary>The run's resolved config (run.json <code>config</code>)</summary>", "", "```yaml",
              yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True).rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the export itself


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prompt_ids(tokenizer: Any, prompts: list[list[dict]]) -> list[Any]:
    """Token ids (1 x n tensors) of each prompt rendered by the chat template with the generation prompt;
    a fixed sentence when the run left no dev prompts."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    if not texts:
        texts = ["The quick brown fox jumps over the lazy dog. 1 2 3 4 5"]
    return [tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"] for t in texts]


def prompt_logits(model: Any, ids: list[Any]) -> list[Any]:
    """float32 logits (n x vocabulary, on the CPU) of ``model`` for each prompt's ids, one at a time (no padding)."""
    import torch

    out = []
    with torch.no_grad():
        for x in ids:
            out.append(model(input_ids=x.to(model.device)).logits[0].float().cpu())
    return out


def max_logit_diff(a: list[Any], b: list[Any]) -> float:
    """The largest absolute difference between two lists of logit tensors (same shapes)."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _verification(against: str, diff: float, ids: list[Any]) -> dict[str, Any]:
    return {"against": against, "max_abs_logit_diff": diff, "prompts": len(ids),
            "tokens": int(sum(x.shape[1] for x in ids))}


def _quantization_config(quantize: str, device: str) -> Any:
    """The ``BitsAndBytesConfig`` of ``--quantize``: LLM.int8 (8bit) or NF4 with double quantisation (4bit, QLoRA's
    recipe); compute in bf16 on a GPU that has it, else float32."""
    import torch
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def _save_quantized(src: Path, dest: Path, quantize: str, device: str) -> dict[str, Any]:
    """Load the float model at ``src`` through ``BitsAndBytesConfig`` and save it to ``dest`` at once (before any
    forward pass: see the module docstring); return the quantisation config as saved."""
    from transformers import AutoModelForCausalLM

    qconfig = _quantization_config(quantize, device)
    model = AutoModelForCausalLM.from_pretrained(str(src), quantization_config=qconfig, device_map=device)
    model.save_pretrained(str(dest))
    saved = model.config.quantization_config
    del model
    return saved.to_dict() if hasattr(saved, "to_dict") else dict(saved)


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
        "base": {"model": info.record.model, "hub_id": _hub_id(info.record.model)},
        "dtype": None if kind == "adapter" else dtype, "quantize": quantize,
        "generation": {"do_sample": False, "max_new_tokens": info.max_new_tokens, "system": info.system,
                       "batch_size": info.generation_batch_size},
        "notes": [], "verification": [],
    }
    with atomic_path(out, directory=True) as tmp:
        umask = file_mask()
        if kind == "adapter":
            _export_adapter(info, tmp, record, log)
        else:
            _export_weights(info, tmp, kind, record, quantize, dtype, verify, log)
        for p in tmp.iterdir():  # safetensors files are written 0600; give them a plain open()'s mode
            if p.is_file():
                os.chmod(p, 0o666 & ~umask)
        record["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                           for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CARD_FILE).write_text(model_card(info, kind, record), encoding="utf-8")
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n",
                                       encoding="utf-8")
        check_out(out)  # still free (another process may have taken it meanwhile)
    total = sum(f["bytes"] for f in record["files"].values())
    log(f"wrote {out} ({kind}{', ' + quantize if quantize else ''}; {len(record['files']) + 2} files, "
        f"{total / 1e6:.1f} MB)")
    return record


def _export_adapter(info: RunInfo, tmp: Path, record: dict[str, Any], log: Callable[[str], None]) -> None:
    """The adapter files as the run saved them, the tokenizer, the base reference and vLLM's notes."""
    from transformers import AutoTokenizer

    if not info.mergeable:
        note = (f"{info.record.method} ({info.peft_type}) cannot be merged into the weights: its virtual tokens are "
                f"prepended to the input embeddings; exported as a PEFT adapter with a reference to the base model")
        log(note)
        record["notes"].append(note)
    log(f"copying the {info.adapter_label} adapter from {info.model_dir}")
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (info.model_dir / name).is_file():
            raise SllmxError(f"{info.model_dir / name}: missing; the run's adapter is incomplete")
        shutil.copyfile(info.model_dir / name, tmp / name)
    AutoTokenizer.from_pretrained(str(info.model_dir)).save_pretrained(str(tmp))
    path, _ = resolve_base(info)
    record["base"]["path"] = path
    if info.quantized_base:
        bnb = {k: v for k, v in info.record.config["method"].items() if k.startswith("bnb_")}
        record["notes"].append(f"QLoRA: the adapter was trained against the base quantised to 4-bit NF4 "
                               f"(method options {json.dumps(bnb)}); put it on the base loaded the same way "
                               f"(python -m sllmx.chat on the run folder does) to reproduce the run's answers exactly")
    record["vllm"] = vllm_notes(info.adapter, info.quantized_base)
    for note in record["vllm"]:
        log(f"vLLM: {note}")


def _export_weights(info: RunInfo, tmp: Path, kind: str, record: dict[str, Any], quantize: Optional[str],
                    dtype: str, verify: bool, log: Callable[[str], None]) -> None:
    """The merged (adapter runs) or re-saved (full fine-tuning) model, optionally quantised, then verified."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(info.model_dir))
    ids = _prompt_ids(tokenizer, info.dev_prompts(VERIFY_PROMPTS)) if verify else []
    trust = bool((info.record.config.get("model") or {}).get("trust_remote_code", False))
    if kind == "merged":
        from peft import PeftModel

        path, kwargs = resolve_base(info)
        record["base"]["path"] = path
        log(f"loading the base model {path} in float32")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu", **kwargs)
        log(f"adding the {info.adapter_label} adapter from {info.model_dir}")
        model = PeftModel.from_pretrained(model, str(info.model_dir))
        model.eval()
        reference = prompt_logits(model, ids) if verify else []
        log("merging the adapter into the weights (merge_and_unload)")
        model = model.merge_and_unload()
        against = "float32 base + the run's adapter (PEFT, unmerged)"
        if info.quantized_base:
            record["notes"].append(
                "QLoRA: merging into the 4-bit base would round the update away, so the adapter is merged into "
                "the base in full precision (float32); the run trained it against the base quantised to 4-bit "
                "NF4, so this model's answers can differ slightly from the run's (see Verification)")
    else:
        log(f"loading the fully fine-tuned model {info.model_dir} in float32")
        model = AutoModelForCausalLM.from_pretrained(str(info.model_dir), dtype=torch.float32, device_map="cpu",
                                                     trust_remote_code=trust)
        model.eval()
        reference = prompt_logits(model, ids) if verify else []
        against = "the run's saved model (float32)"
    gen = model.generation_config
    gen.do_sample, gen.max_new_tokens = False, info.max_new_tokens
    for key in ("temperature", "top_p", "top_k"):  # sampling settings would only draw warnings with do_sample=False
        if hasattr(gen, key):
            setattr(gen, key, None)
    if quantize:
        device = default_device()
        scratch = Path(tempfile.mkdtemp(prefix=".float32-", dir=tmp))
        log(f"saving the float32 model, then quantising it to {quantize} with bitsandbytes on {device}")
        model.save_pretrained(str(scratch))
        del model
        record["quantization_config"] = _save_quantized(scratch, tmp, quantize, device)
        shutil.rmtree(scratch)
    else:
        log(f"saving safetensors in {dtype}")
        model.to(getattr(torch, dtype)).save_pretrained(str(tmp))
        del model
    tokenizer.save_pretrained(str(tmp))
    if not verify:
        return
    log("verifying: reloading the export and comparing logits")
    device = default_device() if quantize else "cpu"
    exported = AutoModelForCausalLM.from_pretrained(str(tmp), device_map=device, trust_remote_code=trust,
                                                    **({} if quantize else {"dtype": "auto"}))
    exported.eval()
    got = prompt_logits(exported, ids)
    del exported
    record["verification"].append(_verification(against, max_logit_diff(got, reference), ids))
    diff = record["verification"][-1]["max_abs_logit_diff"]
    scale = max(float(x.abs().max()) for x in reference)
    record["verification"][-1]["max_abs_logit"] = scale
    if not quantize and dtype == "float32" and diff > MERGE_TOLERANCE * max(1.0, scale):
        # a float32 merge that does not reproduce base + adapter is wrong: no export rather than a bad one
        raise SllmxError(f"the exported model's logits differ from {against} by {diff:.3g} (more than "
                         f"{MERGE_TOLERANCE:g} of the largest logit, {scale:.3g}); nothing was written")
    if info.quantized_base:
        log("verifying against the model as trained (4-bit base + adapter)")
        trained, _ = load_run_model(info, device="cpu")
        record["verification"].append(_verification("the model as trained: the base loaded by the method "
                                                    "(4-bit NF4) + the adapter", max_logit_diff(
                                                        got, prompt_logits(trained, ids)), ids))
        del trained
    for v in record["verification"]:
        log(f"max |logit difference| against {v['against']}: {v['max_abs_logit_diff']:.3g}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (``python -m sllmx.export``); returns the exit status (2 on bad input)."""
    parser = _Parser(prog="python -m sllmx.export", description=__doc__.split("\n\n")[0].replace("``", ""))
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
