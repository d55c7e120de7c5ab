"""Built-in model source ``run``: a finished sllmx run as the base of the next stage (issue 19)::

    python -m sllmx method=lora trainer=sft model=run model.run_dir=outputs/cpt      # CPT -> SFT
    python -m sllmx method=lora trainer=dpo model=run model.run_dir=outputs/sft      # SFT -> DPO

``model.adapter=merge`` (the default) merges the run's PEFT adapter into its base model in float32, as
``python -m sllmx.export RUN --merged`` does, caches the merged model (keyed by the adapter's content) and
trains the new method on it: after an SFT stage, DPO's reference model is then the SFT model.
``model.adapter=continue`` trains the run's own adapter further (the new ``method`` must be the same PEFT type;
its options are the saved adapter's, not the command line's); DPO's reference is then the base without any
adapter.  A full fine-tune is used as it is.  The new run's ``model_facts`` link it to the run it started from
(its folder, method, trainer and record), so a chain of runs can be read back (``sllmx.report`` shows it).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sllmx import hookimpl
from sllmx.config import ModelConfig, option
from sllmx.errors import SllmxError
from sllmx.interfaces import ModelSource

__all__ = ["RunSource", "RunModelConfig"]


@dataclass
class RunModelConfig(ModelConfig):
    """``model=run``: the model a finished sllmx run saved."""

    source: str = option("model source plugin that resolves this config to a local HF directory", "run")
    run_dir: str = option("the folder of a COMPLETE sllmx run that saved its model (save_model=true)")
    adapter: str = option("what to do with the run's PEFT adapter: merge (into its base, then a new method "
                         "trains on the merged model) or continue (train the same adapter further)", "merge",
                         choices=("merge", "continue"))


def _read(cfg: RunModelConfig) -> Any:
    from sllmx.run_folder import read_run

    try:
        info = read_run(os.path.expanduser(str(cfg.run_dir)))
    except SllmxError as exc:
        raise SllmxError(f"model.run_dir: {exc}") from None
    if info.is_adapter and not info.mergeable:
        raise SllmxError(f"model.run_dir={cfg.run_dir}: its {info.adapter_label} adapter (virtual tokens) can neither "
                         f"be merged into the weights nor trained further by PEFT; start the next stage from its base "
                         f"model")
    return info


class RunSource(ModelSource):
    """A finished sllmx run's model: its full fine-tune, or its adapter merged into its base (or trained further)."""

    name = "run"
    config = RunModelConfig

    def check(self, cfg: RunModelConfig) -> Optional[str]:
        """The run folder holds a COMPLETE run with a saved model (nothing is loaded)."""
        try:
            _read(cfg)
        except SllmxError as exc:
            return str(exc)
        return None

    def resolve(self, cfg: RunModelConfig, cache_dir: str) -> str:
        """The run's saved full model; its base (``adapter=continue``); or its adapter merged into its base, built
        once under ``cache_dir/runs/<sha256 of the adapter>`` (written atomically)."""
        info = _read(cfg)
        if not info.is_adapter:
            return str(info.model_dir.resolve())
        if cfg.adapter == "continue":
            from sllmx.run_folder import resolve_base

            return resolve_base(info)[0]
        digest = hashlib.sha256()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            digest.update((info.model_dir / name).read_bytes())
        dest = Path(cache_dir) / "runs" / digest.hexdigest()[:16]
        if (dest / "config.json").is_file():
            return str(dest)
        import logging
        import shutil
        import tempfile

        from sllmx.export_weights import export_weights

        log = logging.getLogger("sllmx")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".merging-", dir=dest.parent))
        try:
            export_weights(info, tmp, "merged", {"base": {}, "notes": []}, None, "float32", False,
                           lambda line: log.info("model=run: %s", line))
            os.replace(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (dest / "config.json").is_file():  # not another process that built the same one first
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(dest)

    def from_pretrained_kwargs(self, cfg: RunModelConfig) -> dict[str, Any]:
        """The earlier run's base-model options: all of them on its base (``adapter=continue``), only
        ``trust_remote_code`` on its saved or merged model (a local folder)."""
        from sllmx.plugins import registry, typed
        from sllmx.run_folder import _omegaconf

        info = _read(cfg)
        model_cfg = _omegaconf(info.record.config).model
        kwargs = registry().get("model", model_cfg.source).from_pretrained_kwargs(typed(model_cfg, "model"))
        if cfg.adapter == "continue" and info.is_adapter:
            return kwargs
        return {k: v for k, v in kwargs.items() if k == "trust_remote_code"}

    def adapter(self, cfg: RunModelConfig) -> Optional[str]:
        """The run's adapter folder with ``adapter=continue`` (the new run trains it further), else None."""
        info = _read(cfg)
        return str(info.model_dir.resolve()) if cfg.adapter == "continue" and info.is_adapter else None

    def lineage(self, cfg: RunModelConfig) -> dict[str, Any]:
        """The run this model comes from: ``{"run_dir", "method", "trainer", "adapter", "dev_metric", "parent"}``,
        where ``parent`` is that run's own lineage (a chain of stages reads back to its first base)."""
        info = _read(cfg)
        rec = info.record
        return {"run_dir": str(info.path.resolve()), "method": rec.method, "trainer": rec.trainer,
                "adapter": cfg.adapter if info.is_adapter else "full model",
                "dev_metric": {"name": rec.dev_metric.name, "best": rec.dev_metric.best},
                "parent": (rec.model_facts or {}).get("lineage")}


@hookimpl
def sllmx_check_combination(method: Any, trainer: Any, cfg: Any) -> Optional[str]:
    """``model.adapter=continue`` trains the run's adapter further: the method must add that PEFT type."""
    model = cfg.get("model") if hasattr(cfg, "get") else None
    if model is None or model.get("source") != "run" or model.get("adapter") != "continue":
        return None
    import json

    info = _read(RunModelConfig(run_dir=str(model.run_dir), adapter="continue"))
    if not info.is_adapter:
        return None
    saved = json.loads((info.model_dir / "adapter_config.json").read_text(encoding="utf-8"))
    kind = f"{saved.get('peft_type')}{' (DoRA)' if saved.get('use_dora') else ''}"
    if (saved.get("peft_type") != getattr(method, "peft_type", None)
            or bool(saved.get("use_dora")) != bool(getattr(method, "use_dora", False))):
        return (f"model.adapter=continue trains {model.run_dir}'s {kind} adapter further, which method={method.name} "
                f"does not make; use the run's method ({info.record.method}) or model.adapter=merge")
    return None


@hookimpl
def sllmx_model_sources() -> list[ModelSource]:
    """Register ``run``."""
    return [RunSource()]
