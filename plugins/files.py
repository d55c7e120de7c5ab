"""Built-in data sources ``files``: local JSONL / JSON / CSV / Parquet files, or a Hugging Face ``datasets``
id when ``data.path`` is not a local path; and ``text_files``: a folder of plain .txt / .md files, one ``text``
row per file or paragraph, for continued pre-training (``trainer=cpt``)::

    python -m sllmx data=files data.path=train.jsonl data.dev=dev.jsonl
    python -m sllmx data=text_files data.path=my_corpus/ trainer=cpt

The rows are read by :mod:`sllmx.data.readers`; the format (``data.format``, detected from the columns by
default) comes from the format plugins.  Registered through the ``sllmx`` entry-point group like any
third-party plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sllmx import hookimpl
from sllmx.config import DataConfig, option
from sllmx.data.readers import is_local, read_file, read_hub, read_text_files
from sllmx.errors import SllmxError
from sllmx.interfaces import DataSource, RawSplit


@dataclass
class FilesDataConfig(DataConfig):
    """Rows from local files (JSONL, JSON, CSV, Parquet) or a Hugging Face ``datasets`` id."""

    source: str = option("data source plugin that reads or generates the rows", "files")
    path: str = option("train file (.jsonl, .jsonl.gz, .json, .csv, .parquet), or a Hugging Face datasets id "
                      "when it is not a local path")
    dev: Optional[str] = option("dev file; null: hold out data.dev_fraction of train (seeded)", None)
    test: Optional[str] = option("test file; null: hold out data.test_fraction of train (seeded)", None)
    hub_split: str = option("split to load when path is a datasets id", "train")
    hub_name: Optional[str] = option("configuration (subset) name when path is a datasets id", None)
    sample_seed: Optional[int] = option(
        "with max_rows: take a seeded random sample of N rows instead of the first N "
        "(for files sorted by topic or label); null keeps the first N", None, ge=0)


class FilesSource(DataSource):
    """Rows from local JSONL / JSON / CSV / Parquet files, or a Hugging Face datasets id."""

    name = "files"
    config = FilesDataConfig

    def load(self, cfg: FilesDataConfig) -> dict[str, Optional[RawSplit]]:
        """Read ``cfg.path`` (and ``cfg.dev`` / ``cfg.test`` when set).

        Returns:
            ``{"train": RawSplit, "dev": RawSplit | None, "test": RawSplit | None}``; each split
            keeps at most ``cfg.max_rows`` rows (the first ones, or a sample seeded by
            ``cfg.sample_seed``).  ``line_of`` gives ``line N`` (JSONL), ``row N (line M)``
            (CSV, header at line 1), ``item N`` (JSON array) or ``row N`` (Parquet, hub).

        Raises:
            SllmxError: ``path`` not set; a missing, unreadable or malformed file (naming the
                file, and the line where it applies); a hub dataset that cannot be loaded.
        """
        path = cfg.path
        if not path:
            raise SllmxError("data.path is not set: give data.path=FILE (.jsonl, .json, .csv, .parquet) "
                             "or a Hugging Face datasets id")
        limit = cfg.max_rows
        seed = cfg.sample_seed
        out: dict[str, Optional[RawSplit]] = {"train": None, "dev": None, "test": None}
        if is_local(str(path)):
            out["train"] = read_file(str(path), limit, seed)
        else:
            out["train"] = read_hub(str(path), cfg.hub_name, cfg.hub_split or "train",
                                    limit, seed)
        for split in ("dev", "test"):
            other = getattr(cfg, split)
            if other:
                out[split] = read_file(str(other), limit, seed)
        return out


@dataclass
class TextFilesDataConfig(DataConfig):
    """Plain-text documents (.txt / .md files) as ``text`` rows, for continued pre-training."""

    source: str = option("data source plugin that reads or generates the rows", "text_files")
    path: str = option("a folder of .txt / .md files (read recursively, in path order) or one such file")
    unit: str = option("a row per file (a document; dev and test hold out whole files) or per paragraph (split at "
                       "blank lines; dev and test hold out paragraphs)", "file", choices=("file", "paragraph"))
    sample_seed: Optional[int] = option("with max_rows: a seeded random sample of N rows instead of the first N",
                                        None, ge=0)


class TextFilesSource(DataSource):
    """Rows ``{"text": ...}`` from a folder of .txt / .md files: the ``text`` format, for ``trainer=cpt``."""

    name = "text_files"
    config = TextFilesDataConfig

    def load(self, cfg: TextFilesDataConfig) -> dict[str, Optional[RawSplit]]:
        """Read ``cfg.path`` with :func:`sllmx.data.readers.read_text_files`.

        Returns:
            ``{"train": RawSplit, "dev": None, "test": None}`` (dev and test are held out of train by the
            pipeline); ``line_of`` names the file (and the paragraph), relative to the folder.

        Raises:
            SllmxError: ``path`` not set, missing, without .txt / .md files, not UTF-8, or holding no text.
        """
        if not cfg.path:
            raise SllmxError("data.path is not set: give data.path=FOLDER (of .txt / .md files) or a .txt file")
        return {"train": read_text_files(str(cfg.path), cfg.unit, cfg.max_rows, cfg.sample_seed),
                "dev": None, "test": None}


@hookimpl
def sllmx_data_sources() -> list[DataSource]:
    """Register the files and text_files data sources."""
    return [FilesSource(), TextFilesSource()]
