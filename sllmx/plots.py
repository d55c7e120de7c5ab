"""Figures for the report (matplotlib, written as PNG and SVG).

* dev metric against learning rate, one colour per group;
* learning curves (dev metric against step) of each group's best run;
* expected validation performance against the number of trials per group (Dodge et al., 2019,
  "Show Your Work: Improved Reporting of Experimental Results", EMNLP, eq. 1), so methods swept
  with different budgets compare fairly;
* per Optuna study: the optimisation history and hyperparameter importances
  (``optuna.visualization.matplotlib``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from sllmx.atomic import atomic_path
from sllmx.records import RunRecord


def expected_best(values: Sequence[float], n: int, higher_is_better: bool) -> float:
    """Expected best dev value among ``n`` trials drawn i.i.d. (with replacement) from ``values``.

    Dodge et al. (2019), eq. 1: with the N observed values sorted from worst to best,
    ``E[best of n] = sum_i v_(i) * ((i/N)^n - ((i-1)/N)^n)``.

    Raises:
        ValueError: when ``values`` is empty or ``n`` < 1.
    """
    import numpy as np

    if not len(values) or n < 1:
        raise ValueError("expected_best needs at least one value and n >= 1")
    v = np.sort(np.asarray(values, dtype=float))
    if not higher_is_better:
        v = v[::-1]  # worst (largest) first
    big_n = len(v)
    i = np.arange(1, big_n + 1)
    weights = (i / big_n) ** n - ((i - 1) / big_n) ** n
    return float(np.sum(v * weights))


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig: Any, out_dir: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path, suffix=f".{ext}") as partial:  # savefig picks the format by the suffix
            fig.savefig(partial, dpi=120, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _group(record: RunRecord, flat: dict[str, Any], by: list[str]) -> str:
    return " / ".join(str(flat.get(k)) for k in by)


def write_plots(records: list[RunRecord], flats: list[dict[str, Any]], rows: list[dict[str, Any]],
                meta: dict[str, Any], by: list[str], out_dir: Path, sweep_files: list[Path]) -> list[Path]:
    """Write every figure into ``out_dir``; return the PNG and SVG paths.  Figures that cannot be
    drawn (one configuration, a study whose storage is unreachable) are skipped with a warning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric, higher = meta["metric"], meta["higher_is_better"]
    label = f"{metric} ({'higher' if higher else 'lower'} is better)"
    groups: dict[str, list[int]] = {}
    for i, flat in enumerate(flats):
        groups.setdefault(_group(records[i], flat, by), []).append(i)
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, members in groups.items():
        pts = [(flats[i].get("trainer.learning_rate"), records[i].dev_metric.best) for i in members
               if flats[i].get("trainer.learning_rate") is not None]
        if pts:
            ax.scatter(*zip(*pts), label=name, alpha=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel=label, title="dev metric against learning rate")
    _legend(ax)
    written += _save(fig, out_dir, "metric_vs_learning_rate")

    fig, ax = plt.subplots(figsize=(6, 4))
    sign = 1 if higher else -1
    for name, members in groups.items():
        best = max(members, key=lambda i: sign * records[i].dev_metric.best)
        hist = [(h["step"], h["value"]) for h in records[best].dev_metric.history if h["value"] is not None]
        if hist:
            ax.plot(*zip(*hist), marker="o", label=name)
    ax.set(xlabel="optimizer step", ylabel=label, title="learning curves of each group's best run")
    _legend(ax)
    written += _save(fig, out_dir, "learning_curves")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, members in groups.items():
        values = [records[i].dev_metric.best for i in members]
        ns = list(range(1, len(values) + 1))
        ax.plot(ns, [expected_best(values, n, higher) for n in ns], marker=".", label=f"{name} ({len(values)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trials (hyperparameter assignments)", ylabel=f"expected best {metric}",
           title="expected validation performance (Dodge et al., 2019)")
    _legend(ax)
    written += _save(fig, out_dir, "expected_validation_performance")

    for sweep in sweep_files:
        written += _study_plots(sweep, out_dir)
    return written


def _study_plots(sweep: Path, out_dir: Path) -> list[Path]:
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ovm

    from sllmx.pareto import front_figure

    doc = json.loads(sweep.read_text(encoding="utf-8"))
    if len(doc.get("objectives") or []) > 1:  # Optuna's history and importance plots need one objective
        fig = front_figure(doc)
        return _save(fig, out_dir, f"{doc['study_name']}-pareto_front") if fig is not None else []
    storage = doc.get("storage") or ""
    if "***" in storage:
        print(f"sllmx.report: warning: {sweep}: its storage URL hides a password; no study plots", file=sys.stderr)
        return []
    written: list[Path] = []
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=doc["study_name"], storage=storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = ovm.plot_optimization_history(study)
            written += _save(ax.figure, out_dir, f"{doc['study_name']}-history")
            ax = ovm.plot_param_importances(study)
            written += _save(ax.figure, out_dir, f"{doc['study_name']}-importances")
    except Exception as exc:  # an unreachable storage or too few trials must not stop the report
        print(f"sllmx.report: warning: {sweep}: study plots skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
    return written


def html_page(title: str, header: str, table_html: str, figures: list[Path], skipped: str) -> str:
    """One self-contained HTML page: the header, the table and every PNG figure inlined as base64."""
    import base64
    import html

    imgs = "\n".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in figures if p.suffix == ".png")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}figure{display:inline-block;margin:1em}"
            "img{max-width:560px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(header)}</p>{table_html}"
            f"<p>{html.escape(skipped)}</p>{imgs}</body></html>\n")
