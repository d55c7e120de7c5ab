"""Comparison tables from run records: runs collected from run and sweep folders, grouped by config keys
(default ``method`` × ``trainer``), each configuration's dev metric aggregated over seeds with a Student-t
interval, a group's row its best configuration; and the report folder (tables in every format, figures, one
HTML page) that ``python -m sllmx.report --out`` and ``sweep=compare`` write; and the decision stated under the
table: each fine-tuned row against the best baseline row on the same examples (:func:`add_verdicts`).

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
    """The runs read from the given paths, the folder each one's ``run.json`` was found in (``folders[i]`` is
    ``records[i]``'s; its generation files lie beside it) and the paths skipped (with why)."""

    records: list[RunRecord] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
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
            out.folders.append(file.parent)
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


def method_label(record: RunRecord) -> str:
    """The method a report shows: the plugin name, with ``+rag`` for a run evaluated with retrieval
    (``eval.rag``; run.json ``prompting``) that is not ``method=rag`` itself, so it is a row of its own."""
    kinds = str((record.prompting or {}).get("kind") or "").split("+")
    return f"{record.method}+rag" if "rag" in kinds and record.method != "rag" else record.method


def trainer_label(record: RunRecord) -> str:
    """The objective a report shows: the trainer's name, preceded by those of the runs it was started from
    (``model=run``; run.json ``model_facts.lineage``), oldest first: ``sft→dpo``, ``cpt→sft→dpo``."""
    chain, lineage = [], (record.model_facts or {}).get("lineage")
    while lineage:
        chain.append(str(lineage.get("trainer")))
        lineage = lineage.get("parent")
    return "→".join([*reversed(chain), record.trainer])


def run_configs(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Each run's config flattened to dotted keys, with ``method`` (:func:`method_label`) and ``trainer``
    (:func:`trainer_label`) as plugin names."""
    return [{**{k: v for k, v in flatten(r.config).items() if k not in ("method.name", "trainer.name")},
             "method": method_label(r), "trainer": trainer_label(r)} for r in records]


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
    rows = []
    sign = 1 if higher else -1
    for gkey, configs, members, summary in _best_configurations(records, by, flats, higher):
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
        if first.baseline:  # nothing was trained: the training options are not its hyperparameters
            shown = [k for k in shown if not k.startswith("trainer.")]
        row["hyperparameters"] = {k: flats[members[0]].get(k) for k in shown}
        rows.append(row)
    rows.sort(key=lambda r: -sign * r[f"{metric}_mean"])
    return rows, {"metric": metric, "higher_is_better": higher, "by": by, "also": list(also)}


def _best_configurations(records: list[RunRecord], by: list[str], flats: list[dict[str, Any]], higher: bool,
                         warn: bool = True) -> list[tuple[tuple, dict[str, list[int]], list[int], dict[str, Any]]]:
    """Each group's ``(group key, {configuration key: run indices}, its best configuration's run indices, that
    configuration's dev-metric summary)``; the group key is the ``by`` values as JSON, a repeated configuration
    and seed counts once (warned about when ``warn``)."""
    groups: dict[tuple, dict[str, list[int]]] = {}
    for i, flat in enumerate(flats):
        gkey = tuple(json.dumps(flat.get(k), default=str) for k in by)
        groups.setdefault(gkey, {}).setdefault(_config_key(flat), []).append(i)
    sign = 1 if higher else -1
    out = []
    for gkey, configs in groups.items():
        scored = []
        for ckey, members in configs.items():
            by_seed: dict[Any, int] = {}
            for i in members:  # a repeat of the same configuration and seed is not a new sample
                by_seed.setdefault(records[i].seed, i)
            if len(by_seed) < len(members):
                if warn:
                    print(f"sllmx.report: warning: {len(members) - len(by_seed)} run(s) repeat a configuration and "
                          f"seed already counted (e.g. {records[members[-1]].output_dir}); counted once",
                          file=sys.stderr)
                members = configs[ckey] = list(by_seed.values())
            summary = summarize([records[i].dev_metric.best for i in members])
            scored.append((sign * summary["mean"], members, summary))
        _, members, summary = max(scored, key=lambda s: s[0])
        out.append((gkey, configs, members, summary))
    return out


# -- the decision: each fine-tuned row against the best baseline, on the same examples -------------------------

#: the per-example files of a run: one evaluation of the test split; the dev split of an evaluation-only run, and
#: a training run's latest dev evaluation
TEST_GENERATIONS, DEV_GENERATIONS = "generations-test.jsonl", ("generations-eval.jsonl", "generations.jsonl")
#: the confidence level of the verdicts
VERDICT_LEVEL = 0.95


def verdict_metric(records: list[RunRecord], meta: dict[str, Any], key: Optional[str] = None) -> tuple[str, bool]:
    """The per-example metric the verdicts compare, and its direction: ``key`` when given (``eval_`` prefix
    optional), else the dev metric when it is a generation metric's key, else the data's generation metric
    (``data.metric``, its first key: ``json_fields``, ``rouge1``, ...), since the loss has no per-example
    scores.  The direction is the metric plugin's ``higher_is_better`` (the dev metric's for the dev metric).

    Raises:
        SllmxError: ``key`` names no key of the runs' ``data.metric``.
    """
    from sllmx.errors import SllmxError
    from sllmx.plugins import registry

    dev = meta["metric"].removeprefix("eval_")
    names = {str((r.config.get("data") or {}).get("metric")) for r in records if (r.config.get("data") or {}).get("metric")}
    plugins = []
    for name in sorted(names):
        try:
            plugins.append(registry().get("metric", name))
        except SllmxError:
            continue
    keys = {k: p.higher_is_better for p in plugins for k in p.keys}
    if key is not None:
        key = key.removeprefix("eval_")
        if key == dev:
            return dev, meta["higher_is_better"]
        if key not in keys:
            raise SllmxError(f"--verdict-metric {key}: not a per-example metric of these runs (their data.metric "
                             f"keys: {', '.join(keys) or 'none'})")
        return key, keys[key]
    if dev in keys or not keys:
        return dev, meta["higher_is_better"]
    first = next(iter(keys))
    return first, keys[first]


def add_verdicts(rows: list[dict[str, Any]], meta: dict[str, Any], found: Collected,
                 metric: Optional[str] = None) -> list[dict[str, Any]]:
    """Compare every fine-tuned row with the best baseline row on the same examples; put the results in
    ``meta["verdicts"]`` (which the formats print under the table) and return them.

    A row is a *baseline* when every run of its best configuration has ``baseline: true`` (prompting
    baselines, a base model under ``python -m sllmx.evaluate``) and *fine-tuned* when none has; the best
    baseline is the baseline row first in the table (the best mean dev metric in its direction).  Without a
    baseline row or a fine-tuned row nothing is compared and ``meta`` is left as it was.

    Per-example scores are the ``scores`` of each run's generation file, under :func:`verdict_metric`'s key
    (``metric``, or the dev metric without ``eval_``, or the data's generation metric when the dev metric is the
    loss), and the best baseline is the one with the best mean of that key at its runs' selected dev steps
    (the table's order when it is the dev metric): the test split's ``generations-test.jsonl`` when every
    run of the two configurations has one, else the dev split's (``generations-eval.jsonl``, else
    ``generations.jsonl``).  With several seeds an example's score is the mean over the configuration's runs.
    Examples pair by position: every file must have as many rows, with equal ``reference`` strings at each
    position (the prompts may differ, e.g. a few-shot baseline's).  The comparison is
    :func:`sllmx.paired.paired_comparison` at :data:`VERDICT_LEVEL`; where it cannot be made the verdict is None
    and ``reason`` says why.
    """
    if not rows or meta.get("metric") is None:
        return []
    records, by = found.records, meta["by"]
    chosen = {gkey: members for gkey, _, members, _ in
              _best_configurations(records, by, run_configs(records), meta["higher_is_better"], warn=False)}
    runs = [chosen[tuple(json.dumps(row.get(k), default=str) for k in by)] for row in rows]
    baselines = [i for i, members in enumerate(runs) if all(records[m].baseline for m in members)]
    tuned = [i for i, members in enumerate(runs) if not any(records[m].baseline for m in members)]
    if not baselines or not tuned:
        return []
    key, higher = verdict_metric([records[m] for members in runs for m in members], meta, metric)
    if key == meta["metric"].removeprefix("eval_"):
        best = baselines[0]  # the rows are in order of the dev metric, best first
    else:
        def dev_mean(i: int) -> float:
            values = [_at_best_step(records[m], f"eval_{key}") for m in runs[i]]
            values = [v for v in values if v is not None]
            return (sum(values) / len(values)) * (1 if higher else -1) if values else float("-inf")

        best = max(baselines, key=dev_mean)
    verdicts = [_verdict(rows[i], rows[best], runs[i], runs[best], found, {**meta, "verdict_key": key,
                                                                             "verdict_higher": higher})
                for i in tuned]
    meta["verdicts"] = verdicts
    return verdicts


def _label(row: dict[str, Any], by: list[str]) -> str:
    return " × ".join(str(row.get(k)) for k in by if row.get(k) is not None)


def _verdict(row: dict[str, Any], base_row: dict[str, Any], cand_runs: list[int], base_runs: list[int],
             found: Collected, meta: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuned row against the best baseline row: the comparison's numbers and its line."""
    from sllmx.paired import paired_comparison

    by, key, higher = meta["by"], meta["verdict_key"], meta["verdict_higher"]
    folders = {i: found.folders[i] for i in [*cand_runs, *base_runs]}
    split = "test" if all((f / TEST_GENERATIONS).exists() for f in folders.values()) else "dev"
    head = f"{_label(row, by)} vs {_label(base_row, by)} (best baseline), {split} {key}"
    out: dict[str, Any] = {"candidate": {k: row.get(k) for k in by}, "baseline": {k: base_row.get(k) for k in by},
                           "split": split, "metric": key, "higher_is_better": higher,
                           "candidate_runs": [str(folders[i]) for i in cand_runs],
                           "baseline_runs": [str(folders[i]) for i in base_runs], "verdict": None, "reason": None}
    try:
        cand = _scores([folders[i] for i in cand_runs], split, key, _label(row, by))
        base = _scores([folders[i] for i in base_runs], split, key, _label(base_row, by))
        if len(cand[1]) != len(base[1]):
            raise _NotCompared(f"not paired: {len(cand[1])} vs {len(base[1])} examples")
        for n, (a, b) in enumerate(zip(cand[0], base[0]), start=1):
            if a != b:
                raise _NotCompared(f"not paired: the references differ at example {n}")
    except _NotCompared as exc:
        out["reason"] = str(exc)
        out["line"] = f"{head}: {exc}"
        return out
    result = paired_comparison(cand[1], base[1], higher, level=VERDICT_LEVEL)
    out.update(result.to_dict())
    direction = "" if higher else " (lower is better)"
    out["line"] = (f"{head}{direction} over {result.n} paired examples: {result.mean_difference:+.3g} "
                   f"({result.level:.0%} CI {result.ci_low:+.3g} to {result.ci_high:+.3g}, paired bootstrap, "
                   f"{result.interval}), sign test p={result.sign_test_p:.2g} ({result.better} better, "
                   f"{result.worse} worse, {result.equal} equal): {result.verdict}"
                   + (" (dev: these examples also chose the rows, so optimistic; eval.test=true gives the test "
                      "split)" if split == "dev" else ""))
    return out


class _NotCompared(Exception):
    """Why two rows' examples cannot be compared (the verdict line says it instead of a verdict)."""


def _scores(folders: list[Path], split: str, key: str, label: str) -> tuple[list[Any], list[float]]:
    """The references and the per-example ``key`` scores (mean over the runs) of one configuration's runs."""
    import numpy as np

    references: Optional[list[Any]] = None
    per_run = []
    for folder in folders:
        names = [TEST_GENERATIONS] if split == "test" else DEV_GENERATIONS
        path = next((folder / n for n in names if (folder / n).exists()), None)
        if path is None:
            raise _NotCompared(f"no {' or '.join(names)} in {folder}")
        try:
            lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, ValueError) as exc:
            raise _NotCompared(f"{path} unreadable ({type(exc).__name__}: {exc})") from None
        if not lines or not all(isinstance(r, dict) for r in lines):
            raise _NotCompared(f"{path} is empty" if not lines else f"{path}: a row is not a JSON object")
        values = [(r.get("scores") or {}).get(key) for r in lines]
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
            raise _NotCompared(f"{path} has no per-example {key} scores")
        refs = [r.get("reference") for r in lines]
        if references is not None and len(refs) != len(references):
            raise _NotCompared(f"not paired: {len(references)} vs {len(refs)} examples among the runs of {label}")
        if references is not None and refs != references:
            n = next(n for n, (a, b) in enumerate(zip(references, refs), start=1) if a != b)
            raise _NotCompared(f"not paired: the references differ at example {n} among the runs of {label}")
        references = refs
        per_run.append(values)
    return references or [], [float(v) for v in np.mean(np.asarray(per_run, dtype=float), axis=0)]


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
    add_verdicts(rows, meta, found)
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
