"""Which format reads a file and which layout a consumer gets: column mapping, format detection from the
columns, and the choice of layout (the first of the consumer's layouts the format can produce).

Layouts follow TRL: https://huggingface.co/docs/trl/dataset_formats
"""

from __future__ import annotations

from typing import Any, Sequence

from sllmx.errors import SllmxError
from sllmx.interfaces import RawSplit


def layout_name(layout: tuple[str, ...]) -> str:
    """A layout in words: its columns joined by ``/`` (``prompt/chosen/rejected``)."""
    return "/".join(layout)


def columns_of(rows: list[dict]) -> list[str]:
    """Every column seen in ``rows``, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def rename_columns(split: RawSplit, mapping: dict[str, str]) -> list[dict[str, Any]]:
    """Return ``split.rows`` with columns renamed by ``mapping`` (``{canonical: column in the file}``).

    Unmapped columns are kept.  A swap (``{prompt: completion, completion: prompt}``) works.

    Raises:
        SllmxError: a mapped column is absent from the file, naming the file and the column and
            listing the columns present.
    """
    if not mapping:
        return list(split.rows)
    present = columns_of(split.rows)
    for canonical, column in mapping.items():
        if column not in present:
            raise SllmxError(f"{split.origin}: column {column!r} (data.columns.{canonical}) is not in the file; "
                             f"columns present: {', '.join(present) or 'none'}")
    sources = set(mapping.values())
    out = []
    for row in split.rows:
        new = {k: v for k, v in row.items() if k not in sources}
        for canonical, column in mapping.items():
            if column in row:
                new[canonical] = row[column]
        out.append(new)
    return out


def _formats(registry: Any) -> dict[str, Any]:
    return {name: entry.obj for name, entry in sorted(registry.entries["format"].items())}


def _describe_formats(registry: Any) -> str:
    return "; ".join(f"{name} ({', '.join(fmt.columns)})" for name, fmt in _formats(registry).items())


def fitting_formats(columns: list[str], registry: Any) -> list[str]:
    """Names of the formats whose required columns are all in ``columns``, most columns first."""
    fits = [(len(fmt.columns), name) for name, fmt in _formats(registry).items()
            if fmt.columns and set(fmt.columns) <= set(columns)]
    return [name for _, name in sorted(fits, key=lambda x: (-x[0], x[1]))]


def detect_format(columns: list[str], registry: Any, origin: str) -> str:
    """The format whose required columns are all present, the one with the most columns winning.

    Raises:
        SllmxError: no format fits, or two fit equally well; lists the columns found and the
            formats available, and suggests ``data.format=`` / ``data.columns=``.
    """
    fits = fitting_formats(columns, registry)
    found = ", ".join(columns) or "none"
    if not fits:
        raise SllmxError(f"cannot tell the data format of {origin}: columns found: {found}; no format has all "
                         f"its columns there. Formats (required columns): {_describe_formats(registry)}. "
                         f"Set data.format=NAME, and rename columns with data.columns, e.g. "
                         f"data.columns='{{prompt: Q, completion: A}}'")
    fmts = _formats(registry)
    best = [n for n in fits if len(fmts[n].columns) == len(fmts[fits[0]].columns)]
    if len(best) > 1:
        raise SllmxError(f"cannot tell the data format of {origin}: columns found: {found} fit formats "
                         f"{' and '.join(best)} equally; set data.format= one of them (or rename columns with "
                         f"data.columns=)")
    return fits[0]


def choose_layout(fmt: Any, layouts: Sequence[tuple[str, ...]], reader: str, origin: str,
                  alternatives: list[str] | None = None, registry: Any = None) -> tuple[str, ...]:
    """The first of ``layouts`` (the reader's, preferred first) that ``fmt`` can produce.

    Args:
        fmt: the :class:`~sllmx.interfaces.DataFormat`.
        layouts: the layouts the reader of the data accepts (a trainer's ``layouts``).
        reader: who reads the data, in words, for the message (``trainer 'dpo'``, ``eval.general_data``).
        origin: the file, for the message.
        alternatives: the formats that fit the columns (when the format was detected), suggested on an error.
        registry: the plugin registry (the formats of ``alternatives``).

    Raises:
        SllmxError: none matches, e.g. "data format 'prompt_completion' (file X) gives
            prompt/completion, but trainer 'dpo' needs prompt/chosen/rejected"; when the format was
            detected, other formats that fit the columns and the reader are suggested.
    """
    for layout in layouts:
        if tuple(layout) in [tuple(x) for x in fmt.layouts]:
            return tuple(layout)
    gives = " or ".join(layout_name(x) for x in fmt.layouts) or "nothing"
    needs = " or ".join(layout_name(tuple(x)) for x in layouts) or "nothing"
    msg = f"data format {fmt.name!r} (file {origin}) gives {gives}, but {reader} needs {needs}"
    if alternatives and registry is not None:
        fmts = _formats(registry)
        usable = [n for n in alternatives if n != fmt.name
                  and any(tuple(x) in [tuple(y) for y in fmts[n].layouts] for x in layouts)]
        if usable:
            msg += f"; the columns also fit data.format={' or data.format='.join(usable)}"
    raise SllmxError(msg)
