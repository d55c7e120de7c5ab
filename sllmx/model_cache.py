"""Model folders that a model source builds once and caches (a GGUF conversion, the tiny test model).

A built folder holds a Hugging Face model and tokenizer plus a provenance file, :data:`PROVENANCE_FILE`,
saying how it was built; run.json copies it under ``model_facts``.  Folders live in
``<cache_dir>/models/<name>-<hash of what built them>`` and are written with
:func:`sllmx.atomic.build_cached`, so an interrupted build never leaves a half-written cache.  Public:
third-party model sources use the same helpers (docs/plugins.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

from sllmx.atomic import build_cached, write_json_atomic

#: the provenance file written into every model folder built here
PROVENANCE_FILE = "sllmx_model.json"


def short_hash(*parts: Any) -> str:
    """12 hex digits of the SHA-256 of ``parts`` as JSON (keys sorted; ``str`` for what JSON lacks):
    the cache key of a build."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def is_built(path: str) -> bool:
    """True for a finished build: ``config.json`` and the provenance file are there."""
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, PROVENANCE_FILE))


def read_provenance(path: str) -> dict[str, Any]:
    """The provenance of a folder built here, or ``{}`` (a hub id, a folder from elsewhere)."""
    try:
        with open(os.path.join(path, PROVENANCE_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def write_provenance(out: str, info: dict[str, Any]) -> None:
    """Write ``info`` as the provenance file of the folder ``out`` (call it last in a build)."""
    write_json_atomic(os.path.join(out, PROVENANCE_FILE), info)


def build_model(cache_dir: str, name: str, build: Callable[[str], None]) -> str:
    """``<cache_dir>/models/<name>``, built once by ``build(tmp_dir)`` (which must end with
    :func:`write_provenance`); see :func:`sllmx.atomic.build_cached`.

    Returns:
        the folder's path.
    """
    final = os.path.join(os.path.expanduser(cache_dir), "models", name)
    return build_cached(final, build, is_built)
