"""The Pareto front of a multi-objective sweep in a report: which rows' runs are on it (a table column), and
the front plot (objective 1 against objective 2, the front highlighted).

Both read the ``pareto_front`` list that the sweeper writes into ``sweep.json`` (:mod:`sllmx.sweep.results`),
so no study storage is needed.  A trial is on the front when no other completed trial is at least as good in
every objective and better in one (Deb et al., 2002, "A fast and elitist multiobjective genetic algorithm:
NSGA-II"); Optuna's ``study.best_trials``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

#: the report table's column naming a row's trials on a Pareto front
COLUMN = "pareto_front"


def read_fronts(sweep_files: list[Path]) -> dict[tuple[str, int], dict[str, float]]:
    """``{(study name, trial number): values by objective}`` of every front trial of the multi-objective
    sweeps among ``sweep_files``; unreadable files are left out (the plots say so)."""
    fronts: dict[tuple[str, int], dict[str, float]] = {}
    for path in sweep_files:
        doc = _read(path)
        for entry in (doc or {}).get("pareto_front") or []:
            fronts[(doc["study_name"], int(entry["number"]))] = dict(entry["values"])
    return fronts


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def mark_rows(rows: list[dict[str, Any]], records: list[Any], flats: list[dict[str, Any]], by: list[str],
              sweep_files: list[Path]) -> None:
    """Add the ``pareto_front`` column to ``rows`` (the report's groups) when a multi-objective sweep is among
    ``sweep_files``: the trial numbers of the group's runs on its Pareto front ("" for none)."""
    fronts = read_fronts(sweep_files)
    if not fronts:
        return
    key = lambda values: tuple(json.dumps(v, default=str) for v in values)  # noqa: E731 - as build_table groups
    on_front: dict[tuple, list[int]] = {}
    for record, flat in zip(records, flats):
        trial = record.trial or {}
        if (trial.get("study_name"), trial.get("number")) in fronts:
            on_front.setdefault(key(flat.get(k) for k in by), []).append(int(trial["number"]))
    for row in rows:
        row[COLUMN] = ", ".join(map(str, sorted(on_front.get(key(row[k] for k in by), []))))


def front_figure(doc: dict[str, Any]) -> Optional[Any]:
    """The front plot of a multi-objective ``sweep.json`` (its first two objectives): every completed trial,
    the front highlighted and joined; None when the sweep is not multi-objective or nothing completed."""
    if "pareto_front" not in doc or len(doc.get("objectives") or []) < 2:
        return None
    done = [t for t in doc["trials"] if t["state"] == "COMPLETE" and t.get("values")]
    if not done:
        return None
    import matplotlib.pyplot as plt

    (x_name, y_name), (x_dir, y_dir) = doc["objectives"][:2], doc["directions"][:2]
    front = {t["number"] for t in doc["pareto_front"]}
    fig, ax = plt.subplots(figsize=(6, 4))
    rest = [t["values"][:2] for t in done if t["number"] not in front]
    if rest:
        ax.scatter(*zip(*rest), color="0.6", alpha=0.7, label="other trials")
    points = sorted((t["values"][0], t["values"][1], t["number"]) for t in done if t["number"] in front)
    if points:
        xs, ys, numbers = zip(*points)
        ax.plot(xs, ys, color="C3", marker="o", drawstyle="steps-post" if x_dir == y_dir else "default",
                label="Pareto front")
        for x, y, n in points:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel=f"{x_name} ({x_dir})", ylabel=f"{y_name} ({y_dir})",
           title=f"Pareto front of {doc['study_name']}")
    ax.legend(fontsize=8)
    return fig
