"""The sweeper behind ``sweep=compare`` (``hydra/sweeper=sllmx_compare``): from finished sweeps to a paper table.

It reads the runs under ``hydra.sweeper.sweeps`` (sweep or run folders), takes each group's best
configuration by mean dev metric (:func:`sllmx.comparison.build_table`), re-trains it once per seed in
``hydra.sweeper.seeds`` with the exact overrides that made it (the run's ``.hydra/overrides.yaml``,
minus the seed and the trial it served), with ``eval.test=true`` unless ``test`` is false — selection
is over, so this is the one look at the test split — and writes the report of the new runs into the
sweep folder: ``report.md``, ``report.tex``, ``report.csv``, ``report.json``, ``figures/`` and ``report.html``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sllmx.errors import SllmxError

#: overrides of the original run that the re-training replaces
_DROPPED = ("seed=", "trial.", "eval.test=", "+trial.", "hydra.")


def replay_overrides(run_dir: str | Path) -> list[str]:
    """The command-line overrides that produced the run in ``run_dir``, without seed and trial.

    Raises:
        SllmxError: when the run has no ``.hydra/overrides.yaml`` (it was not started by Hydra).
    """
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.exists():
        raise SllmxError(f"{path}: missing; cannot tell how the run {run_dir} was started")
    return [o for o in OmegaConf.to_container(OmegaConf.load(path)) if not str(o).startswith(_DROPPED)]


@dataclass
class CompareSweep:
    """``hydra.sweeper.*`` of ``sllmx_compare``: where the finished sweeps are, seeds, groups, test."""

    sweeps: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    by: list[str] = field(default_factory=lambda: ["method", "trainer"])
    test: bool = True

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> list[Any]:
        """Launch every group's best configuration on every seed, then write the report; return the records."""
        from hydra.core.utils import JobStatus

        from sllmx import comparison

        if not self.sweeps:
            raise SllmxError("hydra.sweeper.sweeps is empty: name the finished sweep folders, e.g. "
                             "'hydra.sweeper.sweeps=[multirun/sft_lora-1a2b3c4d]'")
        found = comparison.collect(list(self.sweeps))
        rows, meta = comparison.build_table(found.records, list(self.by))
        if not rows:
            raise SllmxError("no COMPLETE run under " + ", ".join(self.sweeps))
        jobs = []
        for row in rows:
            base = replay_overrides(row["run_dir"])
            for seed in self.seeds:
                jobs.append([*base, *arguments, f"seed={seed}", *(["eval.test=true"] if self.test else [])])
            print(f"[sllmx] {' / '.join(str(row[k]) for k in self.by)}: best {meta['metric']}="
                  f"{row[meta['metric'] + '_mean']:.4g} in {row['run_dir']}; seeds {list(self.seeds)}", flush=True)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        returns = self.launcher.launch(jobs, initial_job_idx=0)
        for r in returns:
            if r.status != JobStatus.COMPLETED:
                try:
                    r.return_value  # a job that raised: return_value raises its exception
                except BaseException as exc:  # noqa: B036 - a job's SystemExit is its failure too
                    print(f"[sllmx] a job failed: {type(exc).__name__}: {exc}", flush=True)
        print(comparison.write_report_folder([sweep_dir], list(self.by), sweep_dir), flush=True)
        print(f"[sllmx] report: {sweep_dir / 'report.md'} (also .tex, .csv, .json, .html, figures/)", flush=True)
        return [r.return_value for r in returns if r.status == JobStatus.COMPLETED]
