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

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from sllmx.data.augment import augment_row, check_augmentation
from sllmx.data.checks import (DataReport, check_duplicates, check_leakage, check_options, check_pii,
                               duplicate_groups, label_balance, row_text)
from sllmx.data.detect import choose_layout, columns_of, detect_format, fitting_formats, layout_name, rename_columns
from sllmx.data.holdout import hold_out_groups
from sllmx.plugins import typed
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
        options: the ``data`` config the splits were made with (a :class:`~sllmx.config.DataConfig`
            instance: ``options.checks``, ``options.lengths``, ...).
        train_original: the train split before instruction-template augmentation (``data.augment_k``), the
            pool of few-shot examples and of retrieval over the train answers; None when train is not augmented.
    """

    train: Any
    dev: Any
    test: Any
    layout: tuple[str, ...]
    format: str
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Optional[DataReport] = None
    options: Any = None
    train_original: Any = None

    def summary(self) -> str:
        """One line for logs, e.g. ``format prompt_completion → prompt/completion: train 800, dev 100, test 100``."""
        sizes = ", ".join(f"{k} {v['rows']}" for k, v in self.provenance.items())
        return f"format {self.format} → {'/'.join(self.layout)}: {sizes}"


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
                                 f"{layout_name(layout)} (a bug in that format plugin)")
        converted[i] = list(out)
    return converted


def sha256_of(examples: list[dict]) -> str:
    """Hex SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of ``examples`` in order."""
    blob = json.dumps(examples, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _dataset(examples: list[dict]) -> Any:
    import datasets

    return datasets.Dataset.from_list(examples)


def load_splits(data: Any, registry: Any, trainer: Any, collect_invalid: bool = False) -> Splits:
    """Read, map, detect, split and convert the data of one run.

    Args:
        data: the ``data`` config, an instance of the data source's config dataclass (a
            :class:`~sllmx.config.DataConfig` subclass); an OmegaConf node typed by one is converted
            (:func:`sllmx.plugins.typed`).
        registry: a :class:`sllmx.plugins.Registry` (data sources and formats).
        trainer: the :class:`~sllmx.interfaces.Trainer` that reads the data (its ``name`` and ``layouts``).
        collect_invalid: record invalid rows in the report instead of stopping at the first one
            (``python -m sllmx.data check``).

    Returns:
        :class:`Splits` with ``datasets.Dataset`` train / dev (/ test) in the first of
        ``trainer.layouts`` the format can produce.

    Dev and test come from the source's ``dev`` / ``test`` splits when it has them, else from
    seeded fractions of the raw train rows (:func:`sllmx.data.holdout.hold_out_groups`, seed
    ``data.split_seed``), split before conversion so the two unpaired rows of one preference pair
    never straddle splits.  A dev file is cut to its first ``data.max_dev_rows`` rows.

    Raises:
        SllmxError: unknown source or format; a file error from the source; a mapped column
            absent; no format (or two) fitting the columns; a format the trainer cannot use; a
            row with a missing, empty or mistyped field ("FILE, line N: field 'F': ..."); no rows;
            no dev split (no dev file and ``dev_fraction`` 0).
    """
    data = typed(data, "data", registry)
    if not getattr(data, "source", None):
        raise SllmxError(f"data.source is not set; choose a data preset (data=NAME) or a data source "
                         f"(data.source={'|'.join(registry.names('data'))})")
    source = registry.get("data", data.source)
    try:
        raw = source.load(data)
    except SllmxError:
        raise
    except Exception as exc:
        raise SllmxError(f"data source {data.source!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), RawSplit):
        raise SllmxError(f"data source {data.source!r} returned no train split (a bug in that plugin)")
    return prepare_splits(raw, data, registry, trainer.layouts, f"trainer {trainer.name!r}", collect_invalid)


def prepare_splits(raw: dict[str, Optional[RawSplit]], data: Any, registry: Any,
                   layouts: Sequence[tuple[str, ...]], reader: str, collect_invalid: bool = False) -> Splits:
    """The steps of :func:`load_splits` after the source: the raw rows of each split (``train`` required,
    ``dev`` / ``test`` optional) mapped, converted to the first of ``layouts`` the format can produce,
    checked, held out and made datasets.  ``reader`` names who reads the data in messages (``trainer
    'sft'``, ``eval.general_data``).  Raises as :func:`load_splits`."""
    columns = dict(data.columns or {})
    splits: dict[str, RawSplit] = {k: v for k, v in raw.items() if k in ("train", "dev", "test") and v is not None}
    rows: dict[str, list[dict]] = {}
    for name, split in splits.items():
        mapping = {**dict(split.columns or {}), **columns}
        rows[name] = rename_columns(split, mapping)
        if not rows[name]:
            raise SllmxError(f"{split.origin} has no rows ({name} split)")
    train_split = splits["train"]

    fmt_name = data.format or AUTO
    alternatives = None
    if fmt_name == AUTO:
        present = columns_of(rows["train"])
        fmt_name = detect_format(present, registry, train_split.origin)
        alternatives = fitting_formats(present, registry)
        log.info("data format detected from the columns of %s: %s", train_split.origin, fmt_name)
    fmt = registry.get("format", fmt_name)
    layout = choose_layout(fmt, layouts, reader, train_split.origin, alternatives, registry)

    seed = int(data.split_seed)
    test_fraction = 0.0 if "test" in splits else float(data.test_fraction)
    dev_fraction = 0.0 if "dev" in splits else float(data.dev_fraction)
    max_dev = data.max_dev_rows
    if "dev" not in splits and dev_fraction <= 0:
        raise SllmxError("no dev split: give a dev file (data.dev=FILE) or hold out part of train "
                         "(data.dev_fraction > 0)")
    opts = data
    report = DataReport(options=check_options(data))
    system = data.system or None
    skip_invalid = bool(data.skip_invalid) or collect_invalid
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
    if opts.checks:  # 2. PII, 3. duplicates within each split
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
    if opts.checks and (test_fraction or dev_fraction):
        groups = duplicate_groups(usable, texts["train"], opts, train_pairs)
    else:
        groups = [[i] for i in usable]
    strata = None
    if opts.stratify and (test_fraction or dev_fraction):
        if not any(opts.stratify in r for r in rows["train"]):
            raise SllmxError(f"data.stratify={opts.stratify}: {train_split.origin} has no such column; columns: "
                             f"{', '.join(columns_of(rows['train']))}")
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

    # 4b. instruction-template augmentation of train (its copies ride in their row, so a leaking row goes with them)
    augment_k = int(getattr(data, "augment_k", 0) or 0)
    templates = check_augmentation(augment_k, getattr(data, "augment_templates", None), layout)
    if templates:
        for i in plan["train"][1]:
            if converted["train"].get(i):
                converted["train"][i] = augment_row(converted["train"][i], templates, augment_k, seed, i)

    if opts.checks:  # 5. leakage between the final splits, 6. label balance
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
        if name == "train" and templates:
            provenance[name]["augmented"] = {"k": augment_k, "templates": len(templates),
                                             "examples": len(examples) // (augment_k + 1)}
            original = [ex for exs in done if exs is not None for ex in exs[:len(exs) // (augment_k + 1)]]
            log.info("data: train augmented with %d rephrased copies of each of %d examples (%d templates)",
                     augment_k, len(examples) // (augment_k + 1), len(templates))
        report.splits[name] = {"origin": origin, "rows": len(examples), "format": fmt_name,
                               "layout": "/".join(layout)}
    splits_out = Splits(train=out["train"], dev=out["dev"], test=out.get("test"), layout=layout,
                        format=fmt_name, provenance=provenance, report=report, options=opts,
                        train_original=_dataset(original) if templates else None)
    log.info("data: %s", splits_out.summary())
    return splits_out
