"""A run's record from its start to its end, the same for a training run and an evaluation-only run.

``run.json`` says ``RUNNING`` before any model is loaded (so a killed run is visible), is rewritten as the
run goes (after each dev evaluation), and ends ``COMPLETE``, ``PRUNED`` (or another status a plugin ends
the run with, :class:`~sllmx.errors.RunStopped`), ``FAIL`` (with the error) or ``INTERRUPTED`` (SIGINT /
SIGTERM, with the step).  Only the main process writes it; a reserve file keeps room for the last write
on a disk that fills up (:class:`~sllmx.records.Reserve`).  :func:`lifecycle` is that sequence around the
work of a run (:func:`sllmx.training.train` or :func:`sllmx.evaluation.evaluate_only`); the logger plugin
starts and finishes inside it and ``sllmx_after_run`` is called at its end.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from sllmx.context import RunContext
from sllmx.data.checks import DATA_CHECK_FILE
from sllmx.defaults import applied as applied_defaults
from sllmx.errors import Interrupted, RunStopped, SllmxError
from sllmx.loggers import finish_logger, start_logger
from sllmx.memory import peak_memory, reset_peak_memory
from sllmx.records import RUN_FILE, DevMetric, RunRecord, git_commit, library_versions
from sllmx.runtime import Runtime, from_main, on_main


def run_folder(cfg: DictConfig, runtime: Runtime) -> tuple[Path, Optional[dict[str, Any]]]:
    """The run's folder (``output_dir``, the main process's with several processes) and, with ``resume=``,
    the unfinished run's record there (None for a new run).

    Raises:
        SllmxError: the folder holds a run and ``resume`` is not set (the message names what is there); the
            run there is finished, or its config differs from this one; ``resume=`` names no run.
    """
    out = Path(from_main(str(cfg.output_dir), runtime))
    if not from_main((out / RUN_FILE).exists(), runtime):
        if cfg.get("resume") not in (None, "auto"):
            raise SllmxError(f"resume={cfg.resume}: {out / RUN_FILE} does not exist; nothing to resume")
        return out, None
    from sllmx.resume import check_unfinished, config_difference, read_run, taken

    if not cfg.get("resume"):
        message = on_main(lambda: taken(out), runtime)  # every rank calls it; the main one reads the file
        raise SllmxError(message or f"{out / RUN_FILE} already exists (the main process's run folder)")
    previous = on_main(lambda: read_run(out), runtime)
    on_main(lambda: check_unfinished(out, previous), runtime)
    previous = from_main(previous, runtime)
    diff = config_difference(OmegaConf.to_container(cfg, resolve=True), previous.get("config", {}))
    if diff:
        raise SllmxError(f"resume={out}: the config differs from the run's ({diff}); resume with the run's own "
                         f"overrides (python -m sllmx resume={out} adds them)")
    return out, previous


def new_record(cfg: DictConfig, out: Path, method: str, trainer: str, splits: Any, dev: DevMetric,
               runtime: Runtime, config: Optional[dict[str, Any]] = None) -> RunRecord:
    """The ``RUNNING`` record of a run in ``out``: what it is (method and trainer names, model, data with its
    splits' provenance, seed, the resolved config or ``config``), where and with what it runs, and the data
    checks' summary (``data_check.json`` written beside it by the main process)."""
    resolved = config if config is not None else OmegaConf.to_container(cfg, resolve=True)
    resolved["output_dir"] = str(out)
    record = RunRecord(
        status="RUNNING", method=method, trainer=trainer, model=resolved["model"],
        data={**resolved["data"], "format": splits.format, "layout": list(splits.layout),
              "splits": splits.provenance},
        seed=cfg.seed, config=resolved, dev_metric=dev, output_dir=str(out), started_at=now(),
        device=runtime.device, world_size=runtime.world_size, backend=runtime.backend, precision=runtime.record(),
        hostname=socket.gethostname(), pid=os.getpid(), versions=library_versions(), git_commit=git_commit(os.getcwd()),
        defaults=applied_defaults(cfg), memory={"allocator": runtime.allocator})
    if splits.options is not None and splits.options.checks:
        record.data_checks = splits.report.summary()
        if runtime.is_main:
            splits.report.write(out / DATA_CHECK_FILE)
        record.artifacts["data_check"] = DATA_CHECK_FILE
    return record


def lifecycle(ctx: RunContext, work: Callable[[RunContext], str], started: float) -> RunRecord:
    """Write ``ctx.record`` as ``RUNNING``, do ``work(ctx)`` (it returns the final status), and write the
    record's end whatever happens; return the record.

    Args:
        ctx: the run; ``ctx.record`` and ``ctx.output_dir`` are set.
        work: the run's work, e.g. :func:`sllmx.training.train`.  SIGINT / SIGTERM inside the training loop
            stop it after the step's checkpoint, anywhere else (loading, an evaluation-only run) at once
            (:class:`~sllmx.stops.GracefulStop`).
        started: ``time.time()`` at the start of the command (the record's ``wall_time_s`` counts from it).

    Raises:
        Interrupted: SIGINT / SIGTERM (the record says ``INTERRUPTED`` and the step).
        SllmxError: a full disk (the record says ``FAIL``).
        Exception: whatever ``work`` raised, after the record says ``FAIL`` with it.  A
            :class:`~sllmx.errors.RunStopped` (a plugin's decision, e.g. a sweep's pruner) is not raised: the
            record takes its status and reason.
    """
    from sllmx.stops import GracefulStop
    from sllmx.records import Reserve

    record, out, runtime = ctx.record, ctx.output_dir, ctx.runtime
    main = runtime.is_main  # with several processes, only the main one writes files
    reserve = None
    reset_peak_memory(runtime.device)  # this run's peaks, not those of an earlier run in this process
    ctx.pm.hook.sllmx_before_run(run=ctx)  # a plugin's refusal (SllmxError) stops the run before anything is written
    # the handlers first: from the moment run.json says RUNNING, a signal ends in a record that says so
    with GracefulStop(runtime) as stop:
        ctx.stop = stop
        if main:
            record.write(out)
            reserve = Reserve(out)  # the room for the last run.json on a disk that fills up during the run
        try:
            ctx.logger = start_logger(ctx) if main else None  # the logger plugin, on the main process only
            record.status = work(ctx)
            stop.check()  # a signal that a library swallowed (the work went on): the run still ends INTERRUPTED
        except BaseException as exc:
            if ctx.hf_trainer is not None:
                record.global_steps = ctx.hf_trainer.state.global_step
            if isinstance(exc, (Interrupted, KeyboardInterrupt)):
                if not isinstance(exc, Interrupted):
                    exc = Interrupted("SIGINT", record.global_steps)
                exc.step = record.global_steps
                record.status = "INTERRUPTED"  # the checkpoints stay: resume= continues from the last one
                record.error = f"{exc.signal} at step {record.global_steps or 0}"
                raise exc from None
            if not isinstance(exc, RunStopped):
                record.status = "FAIL"
                record.error = f"{type(exc).__name__}: {exc}"
                if disk_full(exc, out):
                    raise SllmxError(f"no space left on device under {out} (at step {record.global_steps or 0}); "
                                     f"{RUN_FILE} records FAIL; free space and continue with resume={out}") from exc
                raise
            record.status = exc.status  # a plugin's decision (a sweep's pruner), not an error: the run ends normally
            record.pruned = exc.reason
            if main:
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
        finally:
            record.finished_at = now()
            record.wall_time_s = round(time.time() - started, 3)
            record.peak_rss_bytes, record.peak_gpu_bytes = peak_memory(runtime.device)
            if main:
                reserve.release()
                record.write(out)
                finish_logger(ctx.logger, record)
                ctx.registry.observe("sllmx_after_run", record=record)  # an observer's exception is a warning line
    return record


def now() -> str:
    """The current UTC time as ISO 8601 to the second (the record's timestamps)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def disk_full(exc: BaseException, out: Path) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a failed write on a full disk:
    ``OSError`` ENOSPC, safetensors' ``StorageFull``, or torch's "file write failed" with under
    1 MiB left under ``out``."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text or "StorageFull" in text:
            return True
        if "write failed" in text or "failed writing" in text:
            try:
                return shutil.disk_usage(out).free < 2**20
            except OSError:
                return False
        exc = exc.__cause__ or exc.__context__
    return False


def resume_point(out: Path, runtime: Runtime) -> Any:
    """The checkpoint ``resume=`` continues from (None: none was complete; the run starts again in its
    folder).  Half-written checkpoints a kill left are removed (by the main process).

    Raises:
        SllmxError: when the newest checkpoint holds only the model (``save_only_model``), which
            cannot restore the optimizer and data order.
    """
    from sllmx.resume import incomplete_checkpoints, latest_checkpoint

    def find() -> Any:
        for partial in incomplete_checkpoints(out):
            shutil.rmtree(partial, ignore_errors=True)
        found = latest_checkpoint(out)
        if found is not None and not (found / "optimizer.pt").is_file():
            raise SllmxError(f"resume={out}: {found} holds the model only (trainer.args.save_only_model=true), "
                             f"not the optimizer, scheduler and RNG states a resumed run needs")
        return None if found is None else str(found)

    found = on_main(find, runtime)
    found = from_main(found, runtime)
    return None if found is None else Path(found)


def continue_record(record: RunRecord, previous: dict[str, Any], checkpoint: Any, out: Path) -> None:
    """Carry an unfinished run's record into the resumed one: its start, earlier resumptions and the dev
    history up to the checkpoint's step (later evaluations are made again); note this resumption."""
    step = 0
    if checkpoint is not None:
        step = int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    record.started_at = previous.get("started_at") or record.started_at
    record.resumed = [*previous.get("resumed", []), {
        "step": step, "checkpoint": None if checkpoint is None else str(checkpoint.relative_to(out)),
        "at": now(), "previous_status": previous.get("status"), "previous_error": previous.get("error")}]
    dev = record.dev_metric
    for h in previous.get("dev_metric", {}).get("history", []) if checkpoint is not None else []:
        if h["step"] <= step:
            dev.add(h["step"], h["metrics"], training=h["step"] > 0)
