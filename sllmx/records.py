"""``run.json``: the record of one run, the contract between runs, sweeps and reports.

The schema is versioned (``schema_version``) and documented in ``docs/run-record.md``.
It is written atomically (a temporary file in the same folder, then ``os.replace``)
twice: with ``status: RUNNING`` when the run starts, so a killed run is visible,
and once more at the end with ``COMPLETE``, ``PRUNED``, ``FAIL`` or ``INTERRUPTED``.  Status
names are Optuna's ``TrialState`` names, apart from ``INTERRUPTED`` (a signal stopped the run;
a sweep counts it as ``FAIL``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from sllmx.atomic import write_json_atomic

#: 2 (issue 15): ``resumed`` and the ``INTERRUPTED`` status; a version-1 record reads as one that was never resumed
#: 3 (issue 18): ``baseline`` and ``prompting``; an older record reads as a trained run with the data's own prompts
#: 4 (issue 19): ``defaults``, the method-aware defaults that applied; an older record reads as one with none
SCHEMA_VERSION = 4
#: the versions :meth:`RunRecord.read` accepts
READABLE_VERSIONS = (1, 2, 3, 4)
RUN_FILE = "run.json"
#: statuses of a run that did not finish and may be continued with ``resume=``
UNFINISHED = ("RUNNING", "INTERRUPTED", "FAIL")
LIBRARIES = ("sllmx", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate",
             "hydra-core", "pluggy", "wandb", "optuna")


@dataclass
class DevMetric:
    """The metric that selects models, with its history.

    Attributes:
        name: as logged, e.g. ``eval_loss`` or ``eval_json_fields``.
        higher_is_better: its direction.
        baseline: its value before training (``eval.before_training``), else None.
        best: the best value over the evaluations during training (by direction).
        best_step: the optimizer step of ``best``; the saved model is that checkpoint.
        final: the value at the last evaluation during training.
        history: ``[{"step": int, "value": float, "metrics": {...all eval metrics}}]``, baseline at step 0.
    """

    name: str
    higher_is_better: bool
    baseline: Optional[float] = None
    best: Optional[float] = None
    best_step: Optional[int] = None
    final: Optional[float] = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: int, metrics: dict[str, float], training: bool = True) -> None:
        """Append one evaluation; update ``best``/``final`` (or ``baseline`` when not ``training``)."""
        value = metrics.get(self.name)
        self.history.append({"step": step, "value": value, "metrics": dict(metrics)})
        if value is None:
            return
        if not training:
            self.baseline = value
            return
        self.final = value
        if not math.isfinite(value):
            return
        better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if better:
            self.best, self.best_step = value, step


@dataclass
class RunRecord:
    """Everything a report needs about one run (``run.json``, schema version 3).

    Units: ``wall_time_s`` and ``train_runtime_s`` in seconds, ``peak_rss_bytes`` and
    ``peak_gpu_bytes`` in bytes, ``train_tokens`` counts non-padding tokens fed to
    the model during training, ``train_tokens_per_s`` = train_tokens / (train_runtime_s minus
    the ``eval_runtime`` of the dev evaluations run inside training).
    ``pruned`` says where and why a ``PRUNED`` run was stopped; ``trial`` names the study
    and trial number of a sweep's run; ``test_metrics`` holds the one test-split
    evaluation of ``eval.test=true`` (``test_``-prefixed); ``data_checks`` the counts of the
    data-quality checks (:meth:`sllmx.data.checks.DataReport.summary`; the whole report is the
    ``data_check`` artifact); ``output_checks`` the guardrail checks of the generated answers
    (:func:`sllmx.safety.check_outputs`) at the latest dev evaluation (``dev``) and on ``test``;
    ``memory`` the gradient-checkpointing decision and the activation estimate behind it
    (:func:`sllmx.memory.decide_checkpointing`), and ``allocator``, the C allocator settings made for a CPU run
    (:func:`sllmx.memory.keep_freed_memory`; None when none were).  ``world_size`` counts the run's processes
    (torchrun, accelerate launch, a submitit job's tasks), ``backend`` is their
    ``torch.distributed`` backend (None for one process), ``global_batch_size`` the examples per
    optimizer step (per-device batch x gradient accumulation x world size); ``precision`` holds
    ``dtype`` (fp32, bf16, fp16) and the ``reason`` for it; ``model_facts`` what the model source
    knows of the model beyond its config (:meth:`sllmx.interfaces.ModelSource.facts`: a GGUF
    conversion's file, pad token and chat template).  With several processes the record is
    the main process's (its ``peak_rss_bytes``, ``hostname`` and ``pid``).  ``resumed`` lists each
    time the run was continued (``resume=``): ``{"step", "checkpoint", "at", "previous_status"}``;
    ``train_runtime_s``, ``train_tokens_per_s`` and ``wall_time_s`` are then those of the last part.
    ``baseline`` is true for a run that trains nothing and only evaluates (``method=zero_shot``,
    ``few_shot``, ``rag``; a base model under ``python -m sllmx.evaluate``): the rows a fine-tuned run must
    beat.  ``prompting`` says how the dev/test prompts were built when not as the data has them
    (``{"kind": "few_shot", "k", "selection", "seed"}``, ``{"kind": "rag", "corpus", "k", "template", ...}``).
    ``defaults`` lists the options whose value sllmx chose by method and objective because none was given
    (``{"trainer.learning_rate": {"value", "source"}}``: :func:`sllmx.defaults.applied`).
    ``status`` is ``RUNNING``, ``COMPLETE``, ``PRUNED``, ``FAIL`` (``error`` says why) or
    ``INTERRUPTED`` (SIGINT / SIGTERM; ``error`` names the signal and the step; the checkpoints are
    kept for ``resume=``).
    """

    status: str
    method: str
    trainer: str
    model: dict[str, Any]
    data: dict[str, Any]
    seed: int
    config: dict[str, Any]
    dev_metric: DevMetric
    output_dir: str
    schema_version: int = SCHEMA_VERSION
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    trainable_params: Optional[int] = None
    total_params: Optional[int] = None
    train_tokens: Optional[int] = None
    train_runtime_s: Optional[float] = None
    train_tokens_per_s: Optional[float] = None
    global_steps: Optional[int] = None
    wall_time_s: Optional[float] = None
    peak_rss_bytes: Optional[int] = None
    peak_gpu_bytes: Optional[int] = None
    device: Optional[str] = None
    world_size: int = 1
    backend: Optional[str] = None
    global_batch_size: Optional[int] = None
    precision: dict[str, Any] = field(default_factory=dict)
    hostname: Optional[str] = None
    pid: Optional[int] = None
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Optional[str]] = field(default_factory=dict)
    git_commit: Optional[str] = None
    error: Optional[str] = None
    pruned: Optional[str] = None
    trial: Optional[dict[str, Any]] = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    data_checks: dict[str, Any] = field(default_factory=dict)
    output_checks: dict[str, Any] = field(default_factory=dict)
    forgetting: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    model_facts: dict[str, Any] = field(default_factory=dict)
    resumed: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    baseline: bool = False
    prompting: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-able data (the content of ``run.json``)."""
        return asdict(self)

    def write(self, directory: str | os.PathLike) -> Path:
        """Write ``run.json`` into ``directory`` atomically; return its path."""
        return write_json_atomic(Path(directory) / RUN_FILE, self.to_dict())

    @classmethod
    def read(cls, path: str | os.PathLike) -> "RunRecord":
        """Read a ``run.json`` (a file or the run directory).

        Raises:
            ValueError: if the file is not a run record of a schema version this sllmx reads (1, 2 or 3).
        """
        path = Path(path)
        if path.is_dir():
            path = path / RUN_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema_version") not in READABLE_VERSIONS:
            raise ValueError(f"{path}: schema_version {data.get('schema_version')!r}, expected one of "
                             f"{', '.join(map(str, READABLE_VERSIONS))} (a newer sllmx wrote it?)")
        data["dev_metric"] = DevMetric(**data["dev_metric"])
        return cls(**data)


class Reserve:
    """A file of ``size`` bytes (default 1 MiB) kept beside ``run.json`` while a run writes checkpoints and
    models, and deleted just before the final ``run.json`` is written, so that a disk that fills up
    during the run still has room for the record that says so (``.run.json.reserve``; allocated with
    ``posix_fallocate`` where the file system has it).  Creating it on a disk already full is
    silently skipped."""

    NAME = ".run.json.reserve"

    def __init__(self, directory: str | os.PathLike, size: int = 2**20):
        self.path: Optional[Path] = Path(directory) / self.NAME
        try:
            with open(self.path, "wb") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, size)
                except (AttributeError, OSError):
                    f.write(b"\0" * size)
        except OSError:
            self.release()

    def release(self) -> None:
        """Delete the reserve (idempotent)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def library_versions() -> dict[str, Optional[str]]:
    """Installed versions of the libraries a result depends on (None when absent).  When sllmx itself
    runs from a git checkout (an editable install), its entry also names that commit, e.g.
    ``"0.1.0 (git 9f7163a...-dirty)"``, since the version number alone does not say which code ran."""
    import importlib.metadata

    out: dict[str, Optional[str]] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    source = git_commit(Path(__file__).resolve().parent)
    if source and out.get("sllmx"):
        out["sllmx"] = f"{out['sllmx']} (git {source})"
    return out


def git_commit(cwd: str | os.PathLike = ".") -> Optional[str]:
    """The commit of the git checkout at ``cwd`` (with ``-dirty`` when it has changes), or None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
