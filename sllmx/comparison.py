"""Comparison tables from run records: runs collected from run and sweep folders, grouped by config keys
(default ``method`` × ``trainer``), each configuration's dev metric aggregated over seeds with a Student-t
interval, a group's row its best configuration; and the report folder (tables in every format, figures, one
HTML page) that ``python -m sllmx.report --out`` and ``sweep=compare`` write.

The interval is ``scipy.stats.t.interval(0.95, n - 1, loc=mean, scale=std / sqrt(n))`` (Student, 1908);
with n < 2 there is no interval.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from sllmx.errors import SllmxError
from sllmx.records import RUN_FILE, RunRecord
from sllmx.tables import header, render


#: config keys that never distinguish configurations (seeds, where things are written, sweep bookkeeping)
IGNORED_PREFIXES = ("seed", "output_dir", "cache_dir", "shared_data", "trial.", "logger.", "save_model")


@dataclass
class Collected:
    """The runs read from the given paths and the paths skipped (with why)."""

    records: list[RunRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sweeps: list[Path] = field(default_factory=list)


def collect(paths: list[str | Path]) -> Collected:
    """Read every ``run.json`` under ``paths`` (run folders, multirun or sweep folders, or the files).

    Unfinished (``RUNNING``), failed and pruned runs are skipped, as are files that are
    missing, truncated or not a run record; each skip is warned about on stderr once.

    Raises:
        SllmxError: when a path does not exist.
    """
    out = Collected()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SllmxError(f"{path}: no such file or folder")
        files = [path] if path.is_file() else sorted(path.rglob(RUN_FILE))
        if path.is_dir():
            out.sweeps += sorted(path.rglob("sweep.json"))
        if path.is_dir() and not files and not (path / "sweep.json").exists():
            out.skipped.append((str(path), f"no {RUN_FILE} in it"))
        for file in files:
            try:
                record = RunRecord.read(file)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                out.skipped.append((str(file), f"unreadable run record ({type(exc).__name__}: {exc})"))
                continue
            if record.status != "COMPLETE":
                out.skipped.append((str(file), f"status {record.status}"))
                continue
            out.records.append(record)
    for where, why in out.skipped:
        print(f"sllmx.report: warning: skipped {where}: {why}", file=sys.stderr)
    return out


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"beta": 0.1}}`` → ``{"trainer.beta": 0.1}`` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_configs(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Each run's config flattened to dotted keys, with ``method`` and ``trainer`` as plugin names."""
    return [{**{k: v for k, v in flatten(r.config).items() if k not in ("method.name", "trainer.name")},
             "method": r.method, "trainer": r.trainer} for r in records]


def summarize(values: list[float], confidence: float = 0.95) -> dict[str, Optional[float]]:
    """Mean, sample standard deviation (ddof=1), Student-t interval and n of ``values``.

    With n < 2: ``std``, ``ci_low``, ``ci_high`` are None.  With std 0 the interval is the mean.
    """
    import numpy as np
    from scipy import stats

    n = len(values)
    mean = float(np.mean(values)) if n else None
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = float(np.std(values, ddof=1))
    if std == 0:
        low = high = mean
    else:
        low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci_low": float(low), "ci_high": float(high)}


def _config_key(flat: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in sorted(flat.items()) if not k.startswith(IGNORED_PREFIXES)},
                      sort_keys=True, default=str)


def _at_best_step(record: RunRecord, key: str) -> Optional[float]:
    """The value of ``key`` in the dev evaluation at the record's best step (None when absent)."""
    for point in record.dev_metric.history:
        if point.get("step") == record.dev_metric.best_step and key in (point.get("metrics") or {}):
            return point["metrics"][key]
    return None


def build_table(records: list[RunRecord], by: list[str],
                also: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per group: its best configuration aggregated over seeds.

    ``also`` names further dev metrics (keys of the evaluation, e.g. ``eval_json_fields``) to show
    beside the dev metric: each run's value at its best step, as ``<key>_mean`` and ``<key>_std``.
    They do not take part in choosing the best configuration.

    Returns:
        ``(rows, meta)``: rows as dicts (group keys, ``n``, ``<metric>_mean/_std/_ci_low/_ci_high``,
        ``test_<...>_mean`` where test metrics exist, parameter counts, memory, tokens, time and
        ``hyperparameters``: the learning rate and every config key that differs between the group's
        configurations, at the best one); meta has ``metric``, ``higher_is_better`` and ``by``.

    Raises:
        SllmxError: when the runs disagree on the dev metric or its direction, a ``by`` key is in
            no run's config, or an ``also`` key is in no run's dev evaluations.
    """
    if not records:
        return [], {"metric": None, "higher_is_better": None, "by": by, "also": list(also)}
    metrics = {(r.dev_metric.name, r.dev_metric.higher_is_better) for r in records}
    if len(metrics) > 1:
        raise SllmxError("the runs use different dev metrics or directions: " + ", ".join(
            f"{m} ({'higher' if h else 'lower'} is better)" for m, h in sorted(metrics))
            + "; report them separately")
    (metric, higher), = metrics
    flats = run_configs(records)
    for key in by:
        if not any(key in f for f in flats):
            raise SllmxError(f"--by {key}: no run has this config key (e.g. method, trainer.beta, method.r)")
    for key in also:
        if all(_at_best_step(r, key) is None for r in records):
            known = sorted({k for r in records for p in r.dev_metric.history for k in (p.get("metrics") or {})
                            if k.startswith("eval_") and not k.endswith(("runtime", "per_second", "_time"))})
            raise SllmxError(f"--metrics {key}: no run's dev evaluation has it; available: {', '.join(known)}")
    groups: dict[tuple, dict[str, list[int]]] = {}
    for i, flat in enumerate(flats):
        gkey = tuple(json.dumps(flat.get(k), default=str) for k in by)
        groups.setdefault(gkey, {}).setdefault(_config_key(flat), []).append(i)
    rows = []
    sign = 1 if higher else -1
    for gkey, configs in groups.items():
        scored = []
        for ckey, members in configs.items():
            by_seed: dict[Any, int] = {}
            for i in members:  # a repeat of the same configuration and seed is not a new sample
                by_seed.setdefault(records[i].seed, i)
            if len(by_seed) < len(members):
                print(f"sllmx.report: warning: {len(members) - len(by_seed)} run(s) repeat a configuration and seed "
                      f"already counted (e.g. {records[members[-1]].output_dir}); counted once", file=sys.stderr)
                members = configs[ckey] = list(by_seed.values())
            summary = summarize([records[i].dev_metric.best for i in members])
            scored.append((sign * summary["mean"], members, summary))
        _, members, summary = max(scored, key=lambda s: s[0])
        first = records[members[0]]
        row: dict[str, Any] = {k: json.loads(v) for k, v in zip(by, gkey)}
        row["configs"] = len(configs)
        row.update({f"{metric}_{k}" if k != "n" else "n": v for k, v in summary.items()})
        for key in also:
            values = [v for v in (_at_best_step(records[i], key) for i in members) if v is not None]
            extra = summarize(values) if values else {"mean": None, "std": None}
            row[f"{key}_mean"], row[f"{key}_std"] = extra["mean"], extra["std"]
        test_keys = sorted(set().union(*(records[i].test_metrics for i in members)))
        for key in test_keys:
            if not key.startswith("test_") or key.endswith(("runtime", "per_second", "preparation_time")):
                continue
            values = [records[i].test_metrics[key] for i in members if key in records[i].test_metrics]
            row[f"{key}_mean"] = summarize(values)["mean"]
        mean = lambda attr: summarize([getattr(records[i], attr) for i in members  # noqa: E731
                                       if getattr(records[i], attr) is not None])["mean"]
        row["run_dir"] = first.output_dir
        row["trainable_params"] = first.trainable_params
        row["trainable_%"] = (100 * first.trainable_params / first.total_params
                              if first.trainable_params and first.total_params else None)
        rss = mean("peak_rss_bytes")
        row["peak_rss_gib"] = rss / 2 ** 30 if rss is not None else None
        row["train_tokens"] = mean("train_tokens")
        row["wall_time_s"] = mean("wall_time_s")
        row["train_tokens_per_s"] = mean("train_tokens_per_s")
        # the hyperparameters: the learning rate, and every key that differs between the group's configurations
        in_group = [flats[i] for ids in configs.values() for i in ids]
        keys = sorted(k for k in set().union(*in_group) if not k.startswith(IGNORED_PREFIXES) and k not in by
                      and len({json.dumps(f.get(k), default=str) for f in in_group}) > 1)
        shown = ["trainer.learning_rate", *[k for k in keys if k != "trainer.learning_rate"]]
        row["hyperparameters"] = {k: flats[members[0]].get(k) for k in shown}
        rows.append(row)
    rows.sort(key=lambda r: -sign * r[f"{metric}_mean"])
    return rows, {"metric": metric, "higher_is_better": higher, "by": by, "also": list(also)}


def publish_report(rows: list[dict[str, Any]], meta: dict[str, Any], figures: list[Path], records: list[RunRecord],
                   logger: dict[str, Any]) -> Optional[str]:
    """Hand the report to a logger plugin (:meth:`sllmx.interfaces.Logger.publish`, ``kind="report"``): the table,
    the PNG figures and the metric and grouping; ``logger`` is its config (``{"name": "wandb", "project": ...}``).
    The group defaults to the study name the runs share, so the report sits beside the study's trials.
    Returns the group, or None when the logger failed (reported as one warning line)."""
    from sllmx.loggers import publish
    from sllmx.plugins import registry

    studies = {(r.trial or {}).get("study_name") for r in records}
    group = logger.get("group") or (studies.pop() if len(studies) == 1 and None not in studies else "report")
    table = [{**r, "hyperparameters": json.dumps(r["hyperparameters"], default=str)} for r in rows]
    taken = publish(registry(), {**logger, "group": group}, title=f"{group}-report", rows=table, summary={},
                    config={"metric": meta["metric"], "higher_is_better": meta["higher_is_better"], "by": meta["by"]},
                    group=group, kind="report", figures=figures)
    return group if taken else None


def write_report_folder(paths: list[str | Path], by: list[str], folder: Path, also: Sequence[str] = ()) -> str:
    """Write ``report.md``, ``report.tex``, ``report.csv``, ``report.json``, ``figures/`` and
    ``report.html`` for the runs under ``paths`` into ``folder``; return the Markdown (header, table,
    skipped count).

    Raises:
        SllmxError: when no COMPLETE run is found, or one of the files already exists.
    """
    from sllmx.plots import html_page, write_plots
    from sllmx.atomic import write_text_atomic

    found = collect(paths)
    rows, meta = build_table(found.records, by, also)
    if not rows:
        raise SllmxError("no COMPLETE run found under " + ", ".join(map(str, paths)))
    from sllmx.pareto import mark_rows

    mark_rows(rows, found.records, run_configs(found.records), by, found.sweeps)
    names = {"markdown": "report.md", "latex": "report.tex", "csv": "report.csv", "json": "report.json"}
    for name in [*names.values(), "report.html"]:
        if (folder / name).exists():
            raise SllmxError(f"{folder / name}: the file exists; nothing is overwritten")
    note = f"skipped: {len(found.skipped)} run(s)"
    markdown = f"{header(meta, len(found.records))}\n\n{render(rows, meta, 'markdown')}\n{note}\n"
    for fmt, name in names.items():
        write_text_atomic(folder / name, markdown if fmt == "markdown" else render(rows, meta, fmt))
    figures = write_plots(found.records, run_configs(found.records), rows, meta, by, folder / "figures",
                          found.sweeps)
    write_text_atomic(folder / "report.html", html_page("sllmx report", header(meta, len(found.records)),
                                                         render(rows, meta, "html"), figures, note))
    return markdown
