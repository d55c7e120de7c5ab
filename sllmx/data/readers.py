"""Reading data files into rows: JSONL (also gzipped), JSON arrays, CSV, Parquet, ``datasets`` hub ids, and
plain-text files (.txt / .md, one row per file or per paragraph, for continued pre-training).

Each reader returns a :class:`~sllmx.interfaces.RawSplit`: the rows as dicts, as in the file, and
``line_of`` giving each row's position in words (``line 12``, ``row 3 (line 4)``, ``item 5``), so every
later error can name the file and line.  A malformed file stops with one line naming the file and the
line.  Public: the built-in ``files`` source, ``eval.general_data`` and ``python -m sllmx.chat --input``
read through it, and third-party data sources may too.  ``datasets`` and ``pyarrow`` are imported only
when needed.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import re
import zlib
from pathlib import Path
from typing import Any, Optional

from sllmx.data.rows import kind_of
from sllmx.errors import SllmxError
from sllmx.interfaces import RawSplit

#: file suffixes the ``files`` source reads
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
#: plain-text file suffixes (case-insensitive): a text corpus folder's files, a retrieval corpus
TEXT_SUFFIXES = (".txt", ".md")
#: a paragraph break: a line that is empty or only white space
BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")


def is_local(path: str) -> bool:
    """True when ``path`` names a local file (existing, or shaped like a path rather than a hub id)."""
    if os.path.exists(os.path.expanduser(path)):
        return True
    lowered = path.lower()
    return (lowered.endswith(FILE_SUFFIXES + (".gz",))
            or path.startswith(("/", ".", "~"))
            or path.count("/") >= 2
            or "\\" in path)


def _limit(rows: list[dict], where: list[Any], limit: Optional[int], seed: Optional[int]) -> tuple[list, list]:
    if limit is None or limit < 0 or len(rows) <= limit:
        return rows, where
    if seed is None:
        return rows[:limit], where[:limit]
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep], [where[i] for i in keep]


def read_file(path: str, limit: Optional[int] = None, sample_seed: Optional[int] = None) -> RawSplit:
    """Read one local data file into a :class:`RawSplit` (rows as dicts, as in the file).

    Args:
        path: a ``.jsonl``, ``.jsonl.gz``, ``.json``, ``.csv`` or ``.parquet`` file.
        limit: keep at most this many rows (``None``: all).
        sample_seed: with ``limit``, keep a seeded random sample instead of the first rows.

    Raises:
        SllmxError: the file is missing, a directory, unreadable, of an unknown type, or
            malformed (naming the file and the line / item).
    """
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise SllmxError(f"data file not found: {path} (working directory {os.getcwd()})")
    if p.is_dir():
        raise SllmxError(f"data path {path} is a directory; give a file ({', '.join(FILE_SUFFIXES)})")
    name = p.name.lower()
    stop = None if sample_seed is not None else limit  # a sample needs every row
    try:
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            rows, where = _read_jsonl(p, path, stop)
            template: Optional[str] = "line {}"
        elif name.endswith(".json"):
            rows, where = _read_json(p, path)
            template = "item {}"
        elif name.endswith(".csv"):
            rows, where = _read_csv(p, path, stop)
            template = None  # row N (line M)
        elif name.endswith(".parquet"):
            rows, where = _read_parquet(p, path, stop)
            template = "row {}"
        else:
            raise SllmxError(f"cannot read {path}: unknown file type; use one of {', '.join(FILE_SUFFIXES)} "
                             f"(or a Hugging Face datasets id)")
    except SllmxError:
        raise
    except UnicodeDecodeError as exc:
        raise SllmxError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError, zlib.error) as exc:  # permissions, a truncated or corrupt .gz, ...
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise SllmxError(f"cannot read {path}: {reason}") from None
    rows, where = _limit(rows, where, limit, sample_seed)
    return RawSplit(rows=rows, origin=path, line_of=_Positions(where, template))


class _Positions:
    """``line_of`` for a file: row ``i`` → its human position, e.g. ``line 12``."""

    def __init__(self, where: list[Any], template: Optional[str]):
        self.where = where
        self.template = template

    def __call__(self, i: int) -> str:
        pos = self.where[i]
        if self.template is None:  # CSV: (row, line)
            return f"row {pos[0]} (line {pos[1]})"
        return self.template.format(pos)


def _read_jsonl(p: Path, path: str, stop: Optional[int]) -> tuple[list[dict], list[int]]:
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    rows, where = [], []
    with opener(p, "rt", encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SllmxError(f"{path}, line {lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise SllmxError(f"{path}, line {lineno}: expected a JSON object, got {kind_of(obj)}")
            rows.append(obj)
            where.append(lineno)
            if stop is not None and len(rows) >= stop:
                break
    return rows, where


def _read_json(p: Path, path: str) -> tuple[list[dict], list[int]]:
    with open(p, encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            hint = "; one object per line? name the file .jsonl" if exc.msg == "Extra data" else ""
            raise SllmxError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}){hint}") \
                from None
    if not isinstance(data, list):
        raise SllmxError(f"{path}: expected a JSON array of objects, got {kind_of(data)}")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise SllmxError(f"{path}, item {i + 1}: expected a JSON object, got {kind_of(obj)}")
    return data, list(range(1, len(data) + 1))


def _read_csv(p: Path, path: str, stop: Optional[int]) -> tuple[list[dict], list[tuple[int, int]]]:
    rows, where = [], []
    with open(p, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if not header:
                raise SllmxError(f"{path}: empty CSV file (expected a header row)")
            while stop is None or len(rows) < stop:
                start = reader.line_num + 1
                record = next(reader, None)
                if record is None:
                    break
                if not record or all(not v.strip() for v in record):
                    continue  # a blank line
                pos = (len(rows) + 1, start)
                if len(record) != len(header):
                    raise SllmxError(f"{path}, row {pos[0]} (line {pos[1]}): {len(record)} fields, but the header "
                                     f"has {len(header)} ({', '.join(header)})")
                rows.append(dict(zip(header, record)))
                where.append(pos)
        except csv.Error as exc:
            raise SllmxError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    return rows, where


def _read_parquet(p: Path, path: str, stop: Optional[int]) -> tuple[list[dict], list[int]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow.ArrowInvalid and friends
        raise SllmxError(f"cannot read {path}: not a readable Parquet file ({exc})") from None
    if stop is not None:
        table = table.slice(0, stop)
    rows = table.to_pylist()
    return rows, list(range(1, len(rows) + 1))


def read_hub(path: str, name: Optional[str], split: str, limit: Optional[int] = None,
             sample_seed: Optional[int] = None) -> RawSplit:
    """Load ``datasets.load_dataset(path, name, split=split)`` into a :class:`RawSplit`.

    Raises:
        SllmxError: the dataset could not be loaded (offline, unknown id, bad split), naming it.
    """
    label = path + (f" ({name})" if name else "") + f", split {split!r}"
    try:
        import datasets

        ds = datasets.load_dataset(path, name, split=split)
        n = len(ds)
        if limit is not None and 0 <= limit < n:
            keep = (sorted(random.Random(sample_seed).sample(range(n), limit)) if sample_seed is not None
                    else range(limit))
            ds = ds.select(keep)
            where = [i + 1 for i in keep]
        else:
            where = list(range(1, n + 1))
        rows = ds.to_list()
    except Exception as exc:
        raise SllmxError(f"the dataset {label} could not be loaded: it is not a local file, and "
                         f"datasets.load_dataset failed: {type(exc).__name__}: {exc}") from None
    return RawSplit(rows=rows, origin=path, line_of=_Positions(where, "row {}"))


# -- plain text ---------------------------------------------------------------------------------------------

def read_text(path: Path, what: str = "text file") -> str:
    """The whole of a UTF-8 text file (a BOM dropped; ``\\r\\n`` and ``\\r`` line ends made ``\\n``).

    Raises:
        SllmxError: ``"<what> PATH: not UTF-8 text (...)"`` or ``"... cannot be read (...)"``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SllmxError(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SllmxError(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def paragraphs(text: str) -> list[str]:
    """``text`` split at blank lines (:data:`BLANK_LINE`), each paragraph stripped, empty ones dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip() for p in BLANK_LINE.split(text) if p.strip()]


def text_files(path: str, what: str = "text folder") -> list[tuple[Path, str]]:
    """The .txt / .md files of ``path`` with their names: a folder's files found recursively (case-insensitive
    suffix), sorted by the path relative to the folder, named by it; a single .txt / .md file, named by its file
    name.

    Returns:
        ``[(file, name)]``, at least one.

    Raises:
        SllmxError: ``path`` is missing, a folder without .txt / .md files, or a file of another type.
    """
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise SllmxError(f"{what} {path}: no such file or folder (working directory {os.getcwd()})")
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES),
                       key=lambda f: f.relative_to(p).as_posix())
        if not files:
            raise SllmxError(f"{what} {path}: no .txt or .md files in it")
        return [(f, f.relative_to(p).as_posix()) for f in files]
    if p.suffix.lower() not in TEXT_SUFFIXES:
        raise SllmxError(f"{what} {path}: unknown type {p.suffix or '(no suffix)'!r}; give a folder of .txt / .md "
                         f"files or one such file")
    return [(p, p.name)]


def read_text_files(path: str, unit: str = "file", limit: Optional[int] = None,
                    sample_seed: Optional[int] = None) -> RawSplit:
    """Plain-text documents as rows ``{"text": ...}``: a folder of .txt / .md files (:func:`text_files`) or one.

    Args:
        path: the folder or file.
        unit: ``"file"``: one row per file, its whole text stripped (a file of white space only is left out);
            ``"paragraph"``: one row per paragraph (:func:`paragraphs`).
        limit, sample_seed: as :func:`read_file` (the first ``limit`` rows, or a seeded sample of them).

    Returns:
        A :class:`RawSplit` whose ``line_of`` names the file (``kobill/1809890.txt``) or the file and paragraph
        (``kobill/1809890.txt, paragraph 3``), relative to the folder.

    Raises:
        SllmxError: as :func:`text_files` and :func:`read_text`; an unknown ``unit``; no text in any file.
    """
    if unit not in ("file", "paragraph"):
        raise SllmxError(f"data.unit={unit}: not one of file, paragraph")
    files = text_files(path)
    rows: list[dict] = []
    where: list[str] = []
    for file, name in files:
        text = read_text(file)
        if unit == "file":
            if text.strip():
                rows.append({"text": text.strip()})
                where.append(name)
        else:
            for n, para in enumerate(paragraphs(text), 1):
                rows.append({"text": para})
                where.append(f"{name}, paragraph {n}")
    if not rows:
        raise SllmxError(f"{path}: its {len(files)} .txt/.md file(s) hold no text")
    rows, where = _limit(rows, where, limit, sample_seed)
    return RawSplit(rows=rows, origin=path, line_of=_Positions(where, "{}"))
