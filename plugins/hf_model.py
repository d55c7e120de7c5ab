"""Built-in model source ``hf``: a Hugging Face model directory or hub id, used as it is::

    python -m sllmx model=hf model.name_or_path=/models/my-llama

Registered through the ``sllmx`` entry-point group like any third-party plugin; no torch /
transformers import at module level (plugins load at CLI start-up).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from sllmx import hookimpl
from sllmx.config import ModelConfig, option
from sllmx.errors import SllmxError
from sllmx.interfaces import ModelSource


@dataclass
class HFModelConfig(ModelConfig):
    """``model=hf``: a Hugging Face model directory or hub id."""

    source: str = option("model source plugin that resolves this config to a local HF directory", "hf")
    name_or_path: str = option("local Hugging Face model directory (config.json, weights, tokenizer) or hub id")
    trust_remote_code: bool = option("allow the model's own Python code (auto_map) to run when loading it", False)
    revision: Optional[str] = option(
        "hub revision (branch, tag or commit) passed to from_pretrained; null: the default branch",
        None)


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.isabs(name)


class HFSource(ModelSource):
    """A Hugging Face model directory or hub id, used as it is."""

    name = "hf"
    config = HFModelConfig

    def resolve(self, cfg: HFModelConfig, cache_dir: str) -> str:
        name = str(cfg.name_or_path)
        path = os.path.expanduser(name)
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise SllmxError(f"model.name_or_path={name!r} is a directory without config.json; "
                                 f"expected a Hugging Face model directory (save_pretrained output)")
            return os.path.abspath(path)
        if _looks_local(name):
            what = "is a file, not a directory" if os.path.exists(path) else "does not exist"
            raise SllmxError(f"model.name_or_path={name!r} {what}; give a Hugging Face model directory "
                             f"or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct")
        return name  # a hub id: the loader fetches it (or finds it in the HF cache)

    def check(self, cfg: HFModelConfig) -> Optional[str]:
        """For a local directory, what transformers would refuse or run (nothing is loaded):

        - a model whose ``config.json`` needs its own Python code (``auto_map`` and a ``model_type``
          transformers does not have) while ``model.trust_remote_code`` is false;
        - weights only in pickle files (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``), which can run code
          when loaded; sllmx loads safetensors only (convert with ``save_pretrained(...,
          safe_serialization=True)`` from a trusted environment).
        A hub id is checked by transformers when it is fetched."""
        name = str(cfg.name_or_path)
        path = os.path.expanduser(name)
        if not os.path.isfile(os.path.join(path, "config.json")):
            return None  # resolve() names a missing directory or config.json
        try:
            config = json.loads(open(os.path.join(path, "config.json"), encoding="utf-8").read())
        except (OSError, ValueError) as exc:
            return f"model.name_or_path={name!r}: config.json cannot be read ({exc})"
        if config.get("auto_map") and not cfg.trust_remote_code:
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

            # a built-in model_type loads with transformers' own code, auto_map or not (e.g. Phi-3 copies)
            if config.get("model_type") not in CONFIG_MAPPING_NAMES:
                return (f"model.name_or_path={name!r} needs its own code (model_type "
                        f"{config.get('model_type')!r}, {', '.join(sorted(config['auto_map']))} in config.json "
                        f"auto_map); read it, then set model.trust_remote_code=true to allow it")
        files = os.listdir(path)
        if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
            pickled = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
            if pickled:
                return (f"model.name_or_path={name!r} has weights only as pickle files ({pickled[0]}), which can run "
                        f"code when loaded; convert them to safetensors (save_pretrained(..., "
                        f"safe_serialization=True)) in a trusted environment")
        return None

    def from_pretrained_kwargs(self, cfg: HFModelConfig) -> dict[str, Any]:
        """``trust_remote_code`` and, when set, ``revision`` for ``from_pretrained``."""
        kwargs: dict[str, Any] = {"trust_remote_code": bool(cfg.trust_remote_code)}
        if cfg.revision:
            kwargs["revision"] = str(cfg.revision)
        return kwargs


@hookimpl
def sllmx_model_sources() -> list[ModelSource]:
    """Register the hf model source."""
    return [HFSource()]
