"""A comparison table as people and programs read it: Markdown (tabulate via pandas), CSV, LaTeX
(booktabs), HTML or JSON, from the rows :func:`sllmx.comparison.build_table` builds, with the decision lines
(:func:`sllmx.comparison.add_verdicts`, ``meta["verdicts"]``) under the table."""

from __future__ import annotations

import json
from typing import Any

from sllmx.errors import SllmxError

#: the output formats of ``python -m sllmx.report --format``
FORMATS = ("markdown", "csv", "latex", "json")


def render(rows: list[dict[str, Any]], meta: dict[str, Any], fmt: str) -> str:
    """The table as Markdown (tabulate via pandas), CSV, LaTeX (booktabs), HTML or JSON.

    CSV and JSON keep every number in its own field; Markdown, LaTeX and HTML are for reading:
    the dev metric as ``mean ± std [95% interval]``, parameters as ``count (%)``.  The verdicts of
    ``meta["verdicts"]`` (each fine-tuned row against the best baseline) follow the table as one line each: a
    Markdown list, an HTML list, a note inside LaTeX's table float; JSON has them as the ``verdicts`` list with
    every number; CSV, one row per group, leaves them out.
    """
    import pandas as pd

    if fmt == "json":
        return json.dumps({**meta, "rows": rows}, indent=2, ensure_ascii=False, default=str) + "\n"
    hyper = [", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in r["hyperparameters"].items()) for r in rows]
    if fmt == "csv":  # every number in its own column
        return pd.DataFrame([{**r, "hyperparameters": h} for r, h in zip(rows, hyper)]).to_csv(index=False)
    frame = pd.DataFrame([_readable(r, meta, h) for r, h in zip(rows, hyper)])
    lines = [v["line"] for v in meta.get("verdicts", [])]
    if fmt == "markdown":
        return frame.to_markdown(index=False) + "\n" + "".join(f"\n- {line}" for line in lines) + (
            "\n" if lines else "")
    if fmt == "html":
        from html import escape

        notes = "".join(f"<li>{escape(line)}</li>" for line in lines)
        return frame.to_html(index=False, na_rep="") + (f"\n<ul class=\"verdicts\">{notes}</ul>" if lines else "")
    if fmt == "latex":
        caption = (f"{meta['metric']} ({'higher' if meta['higher_is_better'] else 'lower'} is better); "
                   "mean over seeds with 95\\% t-interval").replace("_", "\\_")
        tex = frame.to_latex(index=False, caption=caption, na_rep="--", escape=True).replace("±", "$\\pm$")
        if lines:  # a note under the tabular, inside the float, so it stays with the table
            note = "\\par\\smallskip\n{\\footnotesize\n" + "".join(f"{_latex(line)}\\par\n" for line in lines) + "}\n"
            tex = tex.replace("\\end{table}", note + "\\end{table}", 1) if "\\end{table}" in tex else tex + note
        return tex
    raise SllmxError(f"--format {fmt}: unknown; available: {', '.join(FORMATS)}")


def _readable(row: dict[str, Any], meta: dict[str, Any], hyper: str) -> dict[str, Any]:
    """A row for people: the metric as ``mean ± std [low, high]``, parameters as ``count (%)``."""
    metric = meta["metric"]
    out = {k: "" if row.get(k) is None else row[k] for k in meta["by"]}  # a key some runs lack: blank, not nan
    out["n"] = row["n"]
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    ci = (f" [{row[f'{metric}_ci_low']:.4f}, {row[f'{metric}_ci_high']:.4f}]" if std is not None else "")
    out[f"{metric} (dev)"] = f"{mean:.4f}" + (f" ± {std:.4f}{ci}" if std is not None else "")
    for key in meta.get("also", []):
        mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
        out[f"{key} (dev)"] = "" if mean is None else f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    for key in row:
        if key.startswith("test_") and key.endswith("_mean"):
            out[f"{key[5:-5]} (test)"] = f"{row[key]:.4f}"
    if row.get("trainable_params") is not None:
        out["trainable params"] = f"{row['trainable_params']:,}" + (
            f" ({row['trainable_%']:.2f}%)" if row.get("trainable_%") is not None else "")
    for key, label, fmt in (("peak_rss_gib", "peak RSS GiB", "{:.1f}"), ("train_tokens", "train tokens", "{:,.0f}"),
                            ("wall_time_s", "wall s", "{:.0f}"), ("train_tokens_per_s", "tokens/s", "{:.1f}")):
        out[label] = fmt.format(row[key]) if row.get(key) is not None else ""
    out["configs"] = row["configs"]
    if "pareto_front" in row:  # a multi-objective sweep: the group's trials on its Pareto front
        out["Pareto front trials"] = row["pareto_front"]
    out["hyperparameters (best)"] = hyper
    return out


def _latex(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (and ``×`` as ``$\\times$``)."""
    special = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{",
               "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "×": "$\\times$"}
    return "".join(special.get(c, c) for c in text)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def header(meta: dict[str, Any], n_runs: int) -> str:
    """The line above a table: the dev metric, its direction, what a row is, and how many runs."""
    direction = "higher" if meta["higher_is_better"] else "lower"
    return (f"dev metric {meta['metric']} ({direction} is better); rows: best configuration per "
            f"{' x '.join(meta['by'])}, mean over seeds with 95% Student-t interval; {n_runs} runs")
