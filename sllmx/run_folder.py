"""A finished run folder as the commands after a run read it (``python -m sllmx.export``, ``sllmx.chat``):
its ``run.json``, its ``model/`` (a PEFT adapter or a full model) and the base model it was trained from.
Nothing here changes the folder; nothing heavy is imported until a model is loaded."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sllmx.errors import SllmxError
from sllmx.plugins import typed
from sllmx.records import RUN_FILE, RunRecord

#: the machine-readable record of an export (read by ``python -m sllmx.chat EXPORT_DIR``)
EXPORT_FILE = "sllmx_export.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: PEFT types whose parameters are virtual tokens (prompt learning): nothing to merge into weights
PROMPT_LEARNING = frozenset({"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING", "CPT"})

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


def run_runtime(info: RunInfo, device: Optional[str] = None) -> Any:
    """The :class:`~sllmx.runtime.Runtime` a run's model is loaded and generates with on ``device`` (default:
    :func:`default_device`): one process, the run's precision (run.json ``precision.dtype``; fp16 off a GPU
    becomes fp32)."""
    from sllmx.runtime import Runtime

    device = device or default_device()
    precision = (info.record.precision or {}).get("dtype") or "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        precision = "fp32"
    return Runtime(device=device, precision=precision, precision_reason="as the run")


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

    runtime = run_runtime(info, device)
    cfg = _omegaconf(info.record.config)
    method = registry().get("method", info.record.method)
    tokenizer = AutoTokenizer.from_pretrained(str(info.model_dir))
    if info.is_adapter:
        from peft import PeftModel

        path, kwargs = resolve_base(info)
        base = method.load_model(path, typed(cfg.method, "method"), runtime, **kwargs)
        model = PeftModel.from_pretrained(base, str(info.model_dir))
    else:
        kwargs = {"trust_remote_code": bool(cfg.model.get("trust_remote_code", False))}
        model = method.load_model(str(info.model_dir), typed(cfg.method, "method"), runtime, **kwargs)
    model.eval()
    return model, tokenizer
