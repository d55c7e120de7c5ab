"""The lines ``python -m sllmx`` prints at the end of a run (and ``sllmx.evaluate`` after an evaluation)."""

from __future__ import annotations

import os

from sllmx.errors import SllmxError
from sllmx.plugins import registry


def summary(record) -> str:
    """The lines printed at the end of a run: the task metric before → after (the data's generation metric,
    e.g. json_exact, when it has one), the dev metric that selected the checkpoint, the cost, where
    run.json is."""
    from sllmx.progress import fmt, is_detail

    dm = record.dev_metric
    direction = lambda higher: "higher" if higher else "lower"  # noqa: E731
    steps = f"{record.global_steps} steps" if record.global_steps is not None else "no steps"
    lines = [f"status: {record.status} ({steps}, wall time {fmt(record.wall_time_s)} s)"]
    first = dm.history[0]["metrics"] if dm.history else {}
    best = next((h["metrics"] for h in dm.history[1:] if h["step"] == dm.best_step),
                dm.history[-1]["metrics"] if dm.history else {})
    shown = {dm.name}
    once = record.global_steps == 0 and len(dm.history) <= 1
    if once:
        what = "nothing trained" if record.baseline else "a trained model evaluated again"
        lines[0] = (f"status: {record.status} (evaluation only, method={record.method}: {what}; wall time "
                    f"{fmt(record.wall_time_s)} s)")
    task = (record.config.get("data") or {}).get("metric")
    if task and best:
        try:
            metric = registry().get("metric", task)
        except SllmxError:
            metric = None
        keys = [f"eval_{k}" for k in (metric.keys if metric else ()) if f"eval_{k}" in best]
        if keys and once:
            lines.append(f"task metric {task} on the dev split ({direction(metric.higher_is_better)} is better):")
            width = max(len(k) for k in keys) - 5
            lines += [f"  {k[5:]:<{width}}  {fmt(best.get(k))}" for k in keys]
            shown.update(keys)
        elif keys:
            lines.append(f"task metric {task} on the dev split ({direction(metric.higher_is_better)} is better), "
                         f"before training -> the selected checkpoint (step {dm.best_step}):")
            width = max(len(k) for k in keys) - 5
            lines += [f"  {k[5:]:<{width}}  {fmt(first.get(k))} -> {fmt(best.get(k))}" for k in keys]
            shown.update(keys)
    rest = [k for k in sorted(best) if k.startswith("eval_") and k not in shown and not is_detail(k)
            and not k.endswith(("runtime", "per_second", "preparation_time", "num_tokens"))]
    if once:  # an evaluation-only run (a prompting baseline, sllmx.evaluate): one evaluation, nothing selected
        lines.append(f"dev metric {dm.name} ({direction(dm.higher_is_better)} is better): {fmt(dm.best)}")
        if rest:
            lines.append("  also: " + ", ".join(f"{k} {fmt(best[k])}" for k in rest))
        if record.prompting:
            lines.append("prompts: " + ", ".join(f"{k}={v}" for k, v in record.prompting.items()
                                                 if not isinstance(v, dict) and k != "template"))
    else:
        lines.append(f"dev metric {dm.name} ({direction(dm.higher_is_better)} is better; selects the checkpoint): "
                     f"before {fmt(dm.baseline)} -> best {fmt(dm.best)} (step {dm.best_step}), final {fmt(dm.final)}")
    if rest and not once:
        lines.append("  at the selected step: " + ", ".join(f"{k} {fmt(first.get(k))} -> {fmt(best[k])}"
                                                           for k in rest))
    if record.trainable_params:
        lines.append(f"trainable parameters: {record.trainable_params:,} of {record.total_params:,} "
                     f"({100 * record.trainable_params / record.total_params:.3f}%)")
    if record.train_tokens_per_s:
        lines.append(f"train tokens: {record.train_tokens:,} ({record.train_tokens_per_s:.1f} tokens/s in the training "
                     f"steps)")
    lines.append(f"record: {os.path.join(record.output_dir, 'run.json')}")
    return "\n".join(lines)
