"""The splits saved once, by content, so that trials of a sweep do not tokenise the same data again.

Each split is written with ``datasets``' ``save_to_disk`` under ``<cache_dir>/datasets/<sha256 of its
examples>/`` (the hash of :func:`sllmx.data.pipeline.sha256_of`) and memory-mapped back with
``load_from_disk``.  A dataset backed by files gets ``datasets``' own processing cache: every
``Dataset.map`` the trainer applies (TRL's chat-template rendering, tokenisation, labels, truncation)
is stored beside it under a fingerprint of the input dataset, the function and its arguments — the
tokenizer with its chat template and TRL's options among them — and a later run with the same data,
tokenizer, template and options loads the result instead of recomputing it
(https://huggingface.co/docs/datasets/about_cache).  An in-memory dataset (``Dataset.from_list``)
has no such cache.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sllmx.atomic import atomic_path

log = logging.getLogger("sllmx")

SPLIT_NAMES = ("train", "dev", "test")


def saved_split(dataset: Any, digest: str, root: Path) -> Any:
    """``dataset`` saved under ``root/<digest>`` (once; atomically, by renaming a finished temporary
    folder) and loaded back memory-mapped.

    Args:
        dataset: a ``datasets.Dataset``.
        digest: the hex SHA-256 of its examples, which names the folder.
        root: the folder of saved splits (created if missing).
    """
    import datasets

    path = root / digest
    if not (path / "state.json").exists():
        try:
            with atomic_path(path, directory=True) as tmp:
                dataset.save_to_disk(str(tmp))
        except OSError:  # another process saved the same split first: keep theirs
            if not (path / "state.json").exists():
                raise
    return datasets.load_from_disk(str(path))


def cache_splits(splits: Any, cache_dir: str | os.PathLike) -> Any:
    """Replace ``splits.train`` / ``dev`` / ``test`` by the same rows memory-mapped from
    ``<cache_dir>/datasets/`` (see the module docstring).  Returns ``splits``."""
    root = Path(os.path.expanduser(str(cache_dir))) / "datasets"
    for name in SPLIT_NAMES:
        dataset = getattr(splits, name)
        if dataset is not None:
            facts = splits.provenance[name]  # a split with rewritten prompts (sllmx.prompting) has its own hash
            setattr(splits, name, saved_split(dataset, facts.get("prompts_sha256") or facts["sha256"], root))
    log.info("data: splits memory-mapped from %s (tokenised results are cached beside them)", root)
    return splits
