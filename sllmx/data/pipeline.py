"""The data pipeline: raw rows from a data source → train / dev / test ``datasets.Dataset``.

One call, :func:`load_splits`, does every step the runner needs::

    source.load(cfg)           # raw rows per split (plugin kind "data", e.g. the built-in ``files``)
    rename columns             # data.columns = {canonical: column in the file}
    pick the format            # data.format, or detected from the columns (format plugins)
    pick the layout            # the first of trainer.layouts the format can produce
    convert rows               # format.convert(row, layout, data.system) → TRL examples
    check PII, duplicates      # sllmx.data.checks (data.pii, data.duplicates)
    hold out dev / test        # seeded fractions of the train rows, duplicates kept together
    check leakage, labels      # data.leakage: error (default) | drop | report | off
    build datasets             # datasets.Dataset.from_list, plus provenance hashes

Every bad input ends in one :class:`~sllmx.errors.SllmxError` naming the file, the line and
the field (or the option), never a traceback.  Layouts and the conversational form follow
TRL: https://huggingface.co/docs/trl/dataset_formats
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from sllmx.data.checks import (CheckOptions, DataReport, check_duplicates, check_leakage, check_pii,
                               config_value, duplicate_groups, label_balance, row_text)
from sllmx.errors import SllmxError
from sllmx.interfaces import FieldError, RawSplit

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass
class Splits:
    """The data of one run, ready for a TRL trainer.

    Attributes:
        train: ``datasets.Dataset`` whose columns are ``layout``.
        dev: ``datasets.Dataset`` (same columns): from the dev file, else a seeded fraction
            of train capped at ``data.max_dev_rows``.
        test: ``datasets.Dataset`` or ``None`` (no test file and ``data.test_fraction`` 0).
        layout: the ``LAYOUT_*`` tuple of column names chosen for the trainer, e.g.
            ``("prompt", "completion")``.
        format: the data-format plugin name used (given or detected).
        provenance: ``{split: {"origin": str, "rows": int, "sha256": hex, "skipped": int}}`` for
            each split present.  ``rows`` counts examples after conversion (a preference pair
            in the unpaired layout gives two); ``sha256`` hashes the canonical JSON (sorted keys,
            UTF-8) of the converted examples in order, so equal hashes mean two runs trained and
            evaluated on the same data; ``skipped`` counts rows dropped by ``data.skip_invalid``.
        report: what the data-quality checks found (:class:`sllmx.data.checks.DataReport`).
        options: the checks' options (:class:`sllmx.data.checks.CheckOptions`).
    """

    train: Any
    dev: Any
    test: Any
    layout: tuple[str, ...]
    format: str
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Optional[DataReport] = None
    options: Optional[CheckOptions] = None

    def summary(self) -> str:
        """One line for logs, e.g. ``format prompt_completion → prompt/completion: train 800, dev 100, test 100``."""
        sizes = ", ".join(f"{k} {v['rows']}" for k, v in self.provenance.items())
        return f"format {self.format} → {'/'.join(self.layout)}: {sizes}"


def _layout_name(layout: tuple[str, ...]) -> str:
    return "/".join(layout)


def _columns_of(rows: list[dict]) -> list[str]:
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
    present = _columns_of(split.rows)
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


def choose_layout(fmt: Any, trainer: Any, origin: str, alternatives: list[str] | None = None,
                  registry: Any = None) -> tuple[str, ...]:
    """The first of ``trainer.layouts`` that ``fmt`` can produce.

    Raises:
        SllmxError: none matches, e.g. "data format 'prompt_completion' (file X) gives
            prompt/completion, but trainer 'dpo' needs prompt/chosen/rejected"; when the format was
            detected, other formats that fit the columns and the trainer are suggested.
    """
    for layout in trainer.layouts:
        if tuple(layout) in [tuple(x) for x in fmt.layouts]:
            return tuple(layout)
    gives = " or ".join(_layout_name(x) for x in fmt.layouts) or "nothing"
    needs = " or ".join(_layout_name(tuple(x)) for x in trainer.layouts) or "nothing"
    msg = f"data format {fmt.name!r} (file {origin}) gives {gives}, but trainer {trainer.name!r} needs {needs}"
    if alternatives and registry is not None:
        fmts = _formats(registry)
        usable = [n for n in alternatives if n != fmt.name
                  and any(tuple(x) in [tuple(y) for y in fmts[n].layouts] for x in trainer.layouts)]
        if usable:
            msg += f"; the columns also fit data.format={' or data.format='.join(usable)}"
    raise SllmxError(msg)


def _count(n: int, fraction: float, what: str) -> int:
    if not 0 <= fraction < 1:
        raise SllmxError(f"data.{what} must be at least 0 and below 1, got {fraction}")
    return max(1, round(n * fraction)) if fraction > 0 else 0


def hold_out(n: int, seed: int, test_fraction: float, dev_fraction: float,
             max_dev_rows: Optional[int]) -> tuple[list[int], list[int], list[int]]:
    """Split row indices ``0..n-1`` into (train, dev, test), each sorted.

    One permutation seeded by ``seed`` (``random.Random``): test takes its first
    ``round(n * test_fraction)`` indices (at least 1 when the fraction is > 0), dev the next
    ``round(n * dev_fraction)`` (capped at ``max_dev_rows``); train keeps the rest.  Because
    test is taken first, changing ``dev_fraction`` never changes the test rows.
    Pass a fraction of 0 for a split that comes from its own file.

    Raises:
        SllmxError: a fraction outside [0, 1), or too few rows to leave any for training.
    """
    return hold_out_groups([[i] for i in range(n)], seed, test_fraction, dev_fraction, max_dev_rows)


def _allocate(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over buckets in proportion to ``sizes`` (largest remainder; sums to ``total``)."""
    n = sum(sizes)
    exact = [total * k / n for k in sizes]
    out = [int(x) for x in exact]
    for j in sorted(range(len(sizes)), key=lambda j: (-(exact[j] - out[j]), j))[:total - sum(out)]:
        out[j] += 1
    return out


def hold_out_groups(groups: list[list[int]], seed: int, test_fraction: float, dev_fraction: float,
                    max_dev_rows: Optional[int], strata: Optional[dict[int, str]] = None,
                    ) -> tuple[list[int], list[int], list[int]]:
    """Split groups of row indices into (train, dev, test) row indices, each sorted, never
    cutting a group: rows that duplicate each other stay in one split, so none leaks.

    The groups are shuffled once by ``random.Random(seed)``; test takes groups until it holds
    ``round(n * test_fraction)`` rows (at least 1 when the fraction is > 0), dev the next
    ``round(n * dev_fraction)`` (capped at ``max_dev_rows``), train the rest.  Test is taken
    first, so changing ``dev_fraction`` never changes test.  With ``strata`` (row index → label,
    read from each group's first row) every label gets its share of test and dev (largest
    remainder), so the label proportions of the splits match.  With one row per group and no
    strata this is :func:`hold_out`.

    Raises:
        SllmxError: a fraction outside [0, 1), or too few rows to leave any for training.
    """
    n = sum(len(g) for g in groups)
    n_test = _count(n, test_fraction, "test_fraction")
    n_dev = _count(n, dev_fraction, "dev_fraction")
    if max_dev_rows is not None and max_dev_rows >= 0:
        n_dev = min(n_dev, max_dev_rows)
    if n_test + n_dev >= n:
        raise SllmxError(f"{n} rows are too few to hold out {n_test} test and {n_dev} dev rows and keep some for "
                         f"training; give more rows, a data.dev / data.test file, or lower data.dev_fraction / "
                         f"data.test_fraction")
    buckets: dict[str, list[list[int]]] = {}
    for g in groups:
        buckets.setdefault(strata[g[0]] if strata else "", []).append(g)
    keys = sorted(buckets)
    sizes = [sum(len(g) for g in buckets[k]) for k in keys]
    want_test, want_dev = _allocate(n_test, sizes), _allocate(n_dev, sizes)
    rng = random.Random(seed)
    test: list[int] = []
    dev: list[int] = []
    train: list[int] = []
    for key, t_want, d_want in zip(keys, want_test, want_dev):
        bucket = buckets[key]
        order = list(range(len(bucket)))
        rng.shuffle(order)
        got_t = got_d = 0
        for j in order:
            g = bucket[j]
            if got_t < t_want:
                test += g
                got_t += len(g)
            elif got_d < d_want:
                dev += g
                got_d += len(g)
            else:
                train += g
    if not train:
        raise SllmxError(f"{n} rows in {len(groups)} groups of duplicates leave none for training after holding "
                         f"out dev and test; lower data.dev_fraction / data.test_fraction")
    return sorted(train), sorted(dev), sorted(test)


def convert_rows(rows: list[dict], indices: list[int], split: RawSplit, fmt: Any, layout: tuple[str, ...],
                 system: Optional[str], skip_invalid: bool = False, hint: str = "",
                 invalid: Optional[list] = None, split_name: str = "") -> dict[int, Optional[list]]:
    """Convert ``rows[i]`` for ``i`` in ``indices`` (in file order) with ``fmt`` into examples of ``layout``.

    Returns:
        ``{i: [example, ...]}``, or ``{i: None}`` for a row skipped by ``skip_invalid``; each
        skipped row is also appended to ``invalid`` (when given) as ``{"split": split_name,
        "index", "where", "field", "message"}``.

    Raises:
        SllmxError: "FILE, line N: field 'F': message" for a row the format refuses (unless
            ``skip_invalid``, which counts and logs it instead; ``hint`` is added to the
            message); a format that fails otherwise
            or returns examples without exactly the layout's columns.
    """
    converted: dict[int, Optional[list]] = {}
    skipped = 0
    want = set(layout)
    for i in sorted(indices):
        row = rows[i]
        where = f"{split.origin}, {split.line_of(i)}"
        try:
            if not isinstance(row, dict):
                raise SllmxError(f"{where}: expected an object with named fields, got {type(row).__name__}")
            out = fmt.convert(row, layout, system)
        except FieldError as exc:
            msg = f"{where}: field {exc.field!r}: {exc}"
            if skip_invalid:
                if invalid is not None:
                    invalid.append({"split": split_name, "index": i, "where": where, "field": exc.field,
                                    "message": str(exc)})
                if not skipped:
                    log.warning("skipping invalid rows (data.skip_invalid=true); the first: %s", msg)
                skipped += 1
                converted[i] = None
                continue
            raise SllmxError(f"{msg} (data format {fmt.name!r}{hint})") from None
        except SllmxError:
            raise
        except Exception as exc:  # a bug in a format plugin: still one line, traceback with SLLMX_TRACEBACK=1
            raise SllmxError(f"{where}: data format {fmt.name!r} failed: {type(exc).__name__}: {exc}") from exc
        for ex in out:
            if not isinstance(ex, dict) or set(ex) != want:
                got = sorted(ex) if isinstance(ex, dict) else type(ex).__name__
                raise SllmxError(f"{where}: data format {fmt.name!r} returned {got} for layout "
                                 f"{_layout_name(layout)} (a bug in that format plugin)")
        converted[i] = list(out)
    return converted


def sha256_of(examples: list[dict]) -> str:
    """Hex SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of ``examples`` in order."""
    blob = json.dumps(examples, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _dataset(examples: list[dict]) -> Any:
    import datasets

    return datasets.Dataset.from_list(examples)


def load_splits(data_cfg: Any, registry: Any, trainer: Any, collect_invalid: bool = False) -> Splits:
    """Read, map, detect, split and convert the data of one run.

    Args:
        data_cfg: the ``data`` config node (a :class:`~sllmx.config.DataConfig` subclass or an
            OmegaConf node shaped like one): ``source``, ``format`` (``auto`` detects),
            ``columns``, ``system``, ``split_seed``, ``dev_fraction``, ``test_fraction``,
            ``max_dev_rows``, optional ``skip_invalid`` (default false).
        registry: a :class:`sllmx.plugins.Registry` (data sources and formats).
        trainer: a :class:`~sllmx.interfaces.Trainer`; only ``name`` and ``layouts`` are used.

    Returns:
        :class:`Splits` with ``datasets.Dataset`` train / dev (/ test) in the first of
        ``trainer.layouts`` the format can produce.

    Dev and test come from the source's ``dev`` / ``test`` splits when it has them, else from
    seeded fractions of the raw train rows (:func:`hold_out`, seed ``data.split_seed``), split
    before conversion so the two unpaired rows of one preference pair never straddle splits.
    A dev file is cut to its first ``data.max_dev_rows`` rows.

    Raises:
        SllmxError: unknown source or format; a file error from the source; a mapped column
            absent; no format (or two) fitting the columns; a format the trainer cannot use; a
            row with a missing, empty or mistyped field ("FILE, line N: field 'F': ..."); no rows;
            no dev split (no dev file and ``dev_fraction`` 0).
    """
    source_name = config_value(data_cfg, "source")
    if not source_name:
        raise SllmxError("data.source is not set; choose a data preset (data=NAME) or data.source=files")
    source = registry.get("data", source_name)
    try:
        raw = source.load(data_cfg)
    except SllmxError:
        raise
    except Exception as exc:
        raise SllmxError(f"data source {source_name!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), RawSplit):
        raise SllmxError(f"data source {source_name!r} returned no train split (a bug in that plugin)")

    columns = dict(config_value(data_cfg, "columns", {}) or {})
    splits: dict[str, RawSplit] = {k: v for k, v in raw.items() if k in ("train", "dev", "test") and v is not None}
    rows: dict[str, list[dict]] = {}
    for name, split in splits.items():
        mapping = {**dict(split.columns or {}), **columns}
        rows[name] = rename_columns(split, mapping)
        if not rows[name]:
            raise SllmxError(f"{split.origin} has no rows ({name} split)")
    train_split = splits["train"]

    fmt_name = config_value(data_cfg, "format", AUTO) or AUTO
    alternatives = None
    if fmt_name == AUTO:
        present = _columns_of(rows["train"])
        fmt_name = detect_format(present, registry, train_split.origin)
        alternatives = fitting_formats(present, registry)
        log.info("data format detected from the columns of %s: %s", train_split.origin, fmt_name)
    fmt = registry.get("format", fmt_name)
    layout = choose_layout(fmt, trainer, train_split.origin, alternatives, registry)

    seed = int(config_value(data_cfg, "split_seed", 0))
    test_fraction = 0.0 if "test" in splits else float(config_value(data_cfg, "test_fraction", 0.0))
    dev_fraction = 0.0 if "dev" in splits else float(config_value(data_cfg, "dev_fraction", 0.1))
    max_dev = config_value(data_cfg, "max_dev_rows")
    if "dev" not in splits and dev_fraction <= 0:
        raise SllmxError("no dev split: give a dev file (data.dev=FILE) or hold out part of train "
                         "(data.dev_fraction > 0)")
    opts = CheckOptions.from_cfg(data_cfg)
    report = DataReport(options=dataclasses.asdict(opts))
    system = config_value(data_cfg, "system") or None
    skip_invalid = bool(config_value(data_cfg, "skip_invalid", False)) or collect_invalid
    hint = "; data.skip_invalid=true skips such rows"
    where = {name: (lambda i, sp=sp: f"{sp.origin}, {sp.line_of(i)}") for name, sp in splits.items()}

    # 1. convert every row (a dev file cut to max_dev_rows), each source split in file order, so the
    #    first bad line is reported first
    converted: dict[str, dict[int, Optional[list]]] = {}
    for name in splits:
        n = len(rows[name])
        if name == "dev" and max_dev is not None and max_dev >= 0:
            n = min(n, max_dev)
        converted[name] = convert_rows(rows[name], list(range(n)), splits[name], fmt, layout, system,
                                       skip_invalid, hint, report.invalid, name)
    texts: dict[str, dict[int, tuple[str, str]]] = {}
    train_pairs = None
    if opts.enabled:  # 2. PII, 3. duplicates within each split
        for name in splits:
            if opts.pii != "off":
                check_pii(name, converted[name], where[name], opts, report)
            texts[name] = {i: row_text(exs) for i, exs in converted[name].items() if exs}
            if opts.duplicates != "off":
                drop, pairs = check_duplicates(name, texts[name], where[name], opts, report)
                if name == "train":
                    train_pairs = pairs
                for i in drop:
                    converted[name][i] = None
                    del texts[name][i]

    # 4. the hold-out: seeded, duplicates kept together, optionally stratified
    usable = [i for i in range(len(rows["train"])) if converted["train"].get(i) is not None]
    if not usable:
        bad = sum(1 for item in report.invalid if item["split"] == "train")
        raise SllmxError(f"{train_split.origin}: no usable rows for the train split"
                         + (f" ({bad} invalid rows skipped)" if bad else ""))
    if opts.enabled and (test_fraction or dev_fraction):
        groups = duplicate_groups(usable, texts["train"], opts, train_pairs)
    else:
        groups = [[i] for i in usable]
    strata = None
    if opts.stratify and (test_fraction or dev_fraction):
        if not any(opts.stratify in r for r in rows["train"]):
            raise SllmxError(f"data.stratify={opts.stratify}: {train_split.origin} has no such column; columns: "
                             f"{', '.join(_columns_of(rows['train']))}")
        strata = {i: str(rows["train"][i].get(opts.stratify)) for i in usable}
    train_idx, dev_idx, test_idx = hold_out_groups(groups, seed, test_fraction, dev_fraction, max_dev, strata)

    plan = {"train": ("train", train_idx, train_split.origin)}
    held = []
    if "test" in splits:
        plan["test"] = ("test", sorted(converted["test"]), splits["test"].origin)
    elif test_idx:
        plan["test"] = ("train", test_idx, f"{train_split.origin} (held out: {len(test_idx)} of "
                                           f"{len(usable)} rows, split_seed {seed})")
        held.append("test")
    if "dev" in splits:
        plan["dev"] = ("dev", sorted(converted["dev"]), splits["dev"].origin)
    else:
        plan["dev"] = ("train", dev_idx, f"{train_split.origin} (held out: {len(dev_idx)} of "
                                         f"{len(usable)} rows, split_seed {seed})")
        held.append("dev")
    if held:
        plan["train"] = ("train", train_idx, f"{train_split.origin} (without the {' and '.join(held)} rows)")

    if opts.enabled:  # 5. leakage between the final splits, 6. label balance
        if opts.leakage != "off":
            kept = {name: [i for i in idx if converted[src].get(i) is not None] for name, (src, idx, _) in plan.items()}
            drop = check_leakage(kept, {name: texts[src] for name, (src, _, _) in plan.items()},
                                 {name: where[src] for name, (src, _, _) in plan.items()}, opts, report)
            for name, gone in drop.items():
                if gone:
                    src, idx, origin = plan[name]
                    plan[name] = (src, [i for i in idx if i not in gone], origin + f" (without {len(gone)} rows "
                                                                                   f"shared with other splits)")
        label_balance(rows, {name: (src, idx) for name, (src, idx, _) in plan.items()}, opts, report)

    out: dict[str, Any] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for name in ("train", "dev", "test"):
        if name not in plan:
            continue
        from_split, indices, origin = plan[name]
        done = [converted[from_split].get(i) for i in indices]
        examples = [ex for exs in done if exs is not None for ex in exs]
        # invalid rows belong to the split of their file (rows held out of train never include them)
        skipped = sum(1 for item in report.invalid if item["split"] == from_split) if name == from_split else 0
        if not examples:
            raise SllmxError(f"{origin}: no usable rows for the {name} split"
                             + (f" ({skipped} invalid rows skipped)" if skipped else ""))
        if skipped:
            log.warning("%s split: skipped %d invalid rows of %s", name, skipped, origin)
        out[name] = _dataset(examples)
        provenance[name] = {"origin": origin, "rows": len(examples), "sha256": sha256_of(examples),
                            "skipped": skipped}
        report.splits[name] = {"origin": origin, "rows": len(examples), "format": fmt_name,
                               "layout": "/".join(layout)}
    splits_out = Splits(train=out["train"], dev=out["dev"], test=out.get("test"), layout=layout,
                        format=fmt_name, provenance=provenance, report=report, options=opts)
    log.info("data: %s", splits_out.summary())
    return splits_out
