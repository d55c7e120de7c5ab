"""``python -m sllmx.report PATH...``: comparison tables from run and sweep directories.

Runs are grouped by config keys (default ``method`` × ``trainer``).  Within a group, runs
with the same configuration apart from the seed are one *configuration*; its dev metric is
aggregated over seeds (mean, sample standard deviation, 95% Student-t interval, n).  A group's
row is its best configuration by mean dev metric, in the metric's direction — for a sweep,
where every trial is its own configuration, that is the best trial — with the
hyperparameters that distinguish it; for a multi-objective sweep a ``pareto_front`` column names
the group's trials on the Pareto front, and ``--plots`` draws the front.  Only ``COMPLETE`` runs
count; a missing, partial or corrupt ``run.json`` is skipped with one warning naming it.

The interval is ``scipy.stats.t.interval(0.95, n - 1, loc=mean, scale=std / sqrt(n))``
(Student, 1908); with n < 2 there is no interval.

When some rows are baselines (their runs have ``baseline: true``: prompting baselines, a base model), one
line per fine-tuned row follows the table: its per-example metric against the best baseline row's on the same
examples (test split where every run has ``generations-test.jsonl``, else dev), the mean difference with a 95%
paired bootstrap interval, a sign test, and ``clear gain`` or ``no clear gain`` (:func:`sllmx.comparison.add_verdicts`,
:mod:`sllmx.paired`); ``--format json`` has them as ``verdicts``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from sllmx.comparison import add_verdicts, build_table, collect, publish_report, run_configs
from sllmx.errors import OneLineParser, SllmxError, exit_with
from sllmx.pareto import mark_rows
from sllmx.tables import FORMATS, header, render


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input)."""
    parser = OneLineParser(prog="python -m sllmx.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders, multirun/sweep folders or run.json files")
    parser.add_argument("--by", nargs="+", default=["method", "trainer"],
                        help="config keys that form the groups (default: method trainer)")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="KEY",
                        help="further dev metrics to show beside the dev metric, from each run's evaluation at "
                             "its best step (e.g. eval_json_fields eval_mean_token_accuracy)")
    parser.add_argument("--verdict-metric", metavar="KEY",
                        help="the per-example metric of the verdicts against the best baseline (e.g. json_exact); "
                             "default: the dev metric, or the data's generation metric when the dev metric is the "
                             "loss")
    parser.add_argument("--format", default="markdown", choices=FORMATS)
    parser.add_argument("--out", help="write the table here instead of stdout (an existing file is refused)")
    parser.add_argument("--plots", metavar="DIR", help="write the figures (PNG and SVG) into this folder")
    parser.add_argument("--html", metavar="FILE", help="write one self-contained page with the table and figures")
    parser.add_argument("--wandb", action="store_true",
                        help="log the table (a W&B Table) and the figures (images) to W&B; offline without "
                             "WANDB_API_KEY")
    parser.add_argument("--wandb-project", default="sllmx")
    parser.add_argument("--wandb-group", help="W&B group; default: the runs' study name when they share one")
    args = parser.parse_args(argv)
    try:
        found = collect(args.paths)
        rows, meta = build_table(found.records, args.by, args.metrics)
        if not rows:
            raise SllmxError("no COMPLETE run found under " + ", ".join(args.paths))
        mark_rows(rows, found.records, run_configs(found.records), args.by, found.sweeps)
        add_verdicts(rows, meta, found, args.verdict_metric)
        text = render(rows, meta, args.format)
        note = f"skipped: {len(found.skipped)} run(s)" + (" (see the warnings above)" if found.skipped else "")
        for target in (args.out, args.html):
            if target and Path(target).exists():
                raise SllmxError(f"{target}: the file exists; nothing is overwritten")
        figures: list[Path] = []
        if args.plots or args.html or args.wandb:
            import tempfile

            from sllmx.plots import html_page, write_plots

            plot_dir = Path(args.plots) if args.plots else Path(tempfile.mkdtemp(prefix="sllmx-plots-"))
            figures = write_plots(found.records, run_configs(found.records), rows, meta, args.by, plot_dir,
                                  found.sweeps)
            print(f"figures: {len(figures)} files in {plot_dir}", file=sys.stderr)
        if args.html:
            from sllmx.atomic import write_text_atomic

            table_html = render(rows, meta, "html")
            write_text_atomic(Path(args.html), html_page("sllmx report", header(meta, len(found.records)),
                                                         table_html, figures, note))
            print(f"wrote {args.html}", file=sys.stderr)
        if args.wandb:  # the wandb logger plugin's publish()
            group = publish_report(rows, meta, figures, found.records,
                                   {"name": "wandb", "project": args.wandb_project, "group": args.wandb_group})
            if group is not None:
                print(f"logged the report to W&B, group {group}", file=sys.stderr)
        if args.out:
            out = Path(args.out)
            from sllmx.atomic import write_text_atomic

            write_text_atomic(out, text)
            print(f"{header(meta, len(found.records))}\nwrote {out}\n{note}")
        elif args.format == "markdown":
            print(f"{header(meta, len(found.records))}\n\n{text}\n{note}")
        else:
            sys.stdout.write(text)
            print(note, file=sys.stderr)
    except SllmxError as exc:
        exit_with(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
