"""Atomic writing: every file and folder sllmx writes appears whole or not at all.

One helper for all of them — run.json and sweep.json (:func:`write_json_atomic`), generations and
reports (:func:`write_text_atomic`), saved data splits, exported and trained models, plots and
converted GGUF files (:func:`atomic_path`), and the caches plugins build once (:func:`build_cached`).
Each writes into a temporary name in the destination's own folder (so the rename never crosses a
file system) and then renames it into place with ``os.replace``, which POSIX makes atomic; a killed
or failed write leaves at most a hidden ``.NAME.*`` temporary, never a half-written destination.
Temporaries get the mode a plain ``open()`` / ``mkdir`` would give (``tempfile`` makes them 0600 /
0700).  Public: plugins use the same functions (docs/plugins.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


def umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: "str | os.PathLike", text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` (parents created) via a temporary file, fsync and ``os.replace``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: the folder cannot be written (the temporary is removed; ``path`` is untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: "str | os.PathLike", obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON (``default=str`` for what JSON lacks) with
    :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(final: "str | os.PathLike", directory: bool = False, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``final`` for a writer that takes a path (``save_pretrained``,
    ``savefig``, ``Dataset.save_to_disk``), renamed onto ``final`` when the block ends without an error.

    Args:
        final: the destination (its parent folder is created).
        directory: create the temporary as an (empty) folder first; else it is a fresh name the writer
            creates (with the writer's own mode).
        suffix: appended to the temporary's name (some writers choose the format by it, e.g. ``.png``).

    Yields:
        the temporary path.  On an exception it is removed and ``final`` is untouched.

    Raises:
        OSError: from the rename, e.g. when ``final`` is a non-empty folder (a folder is replaced only
            when the destination is absent or empty: remove an old one first, or treat the error as a
            lost race as :func:`build_cached` does).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", suffix=suffix, dir=final.parent))
        os.chmod(tmp, 0o777 & ~umask())
    else:  # a fresh name only: some writers refuse a path that exists
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def build_cached(final: "str | os.PathLike", build: Callable[[str], None],
                 is_built: Optional[Callable[[str], bool]] = None) -> str:
    """Return ``final``, first building it with ``build(tmp_dir)`` unless it is already built.

    ``build`` writes into a fresh temporary folder beside ``final`` (:func:`atomic_path`), which is then
    renamed onto ``final``: a killed build leaves at most a ``.NAME.tmp-*`` folder, never a half-written
    cache.  When two processes build at once, the first rename wins and the other's work is discarded.

    Args:
        final: the cache folder.
        build: writes the cache's files into the folder it is given.
        is_built: whether a folder is a finished build (default: it exists and is not empty).  A folder
            at ``final`` that is not (damaged by hand, from an older layout) is removed and rebuilt.

    Returns:
        ``final`` as a string.
    """
    final = str(final)
    done = is_built or (lambda p: os.path.isdir(p) and bool(os.listdir(p)))
    if done(final):
        return final
    if os.path.isdir(final):
        shutil.rmtree(final, ignore_errors=True)
    try:
        with atomic_path(final, directory=True) as tmp:
            build(str(tmp))
    except OSError:
        if not done(final):  # not a lost race: a real error
            raise
    return final
