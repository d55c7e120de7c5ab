"""How many processes a launcher started for this run, and which one this is, read from the environment
before anything heavy is imported: torchrun and ``accelerate launch`` (``WORLD_SIZE``, ``RANK``), or a
submitit job of several tasks (``hydra.launcher.tasks_per_node``).  Also the check of a command line
under a launcher (:func:`check_launch`) and the submitit environment torch.distributed's ``env://``
needs (:func:`export_submitit_env`).
"""

from __future__ import annotations

import os
from typing import Sequence

from sllmx.errors import SllmxError

#: Hydra launcher plugins sllmx documents: {launcher: (module, pip requirement)}
LAUNCHERS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "sllmx[joblib]"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "sllmx[submitit]"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "sllmx[submitit]"),
    "submitit_local_ddp": ("hydra_plugins.hydra_submitit_launcher", "sllmx[submitit]"),
    "submitit_slurm_ddp": ("hydra_plugins.hydra_submitit_launcher", "sllmx[submitit]"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "sllmx[ray]"),
    "ray_aws": ("hydra_plugins.hydra_ray_launcher", "sllmx[ray]"),
}


def launched_processes() -> int:
    """How many processes the launcher started for this run, read from the environment without
    importing torch: ``WORLD_SIZE`` (torchrun, accelerate launch), else the tasks of a submitit
    job (``SUBMITIT_EXECUTOR`` with several tasks), else 1."""
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        return int(submitit.JobEnvironment().num_tasks)
    return 1


def launched_rank() -> int:
    """This process's global rank from the environment (``RANK``, or the submitit task's), else 0."""
    if os.environ.get("RANK"):
        return int(os.environ["RANK"])
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        return int(submitit.JobEnvironment().global_rank)
    return 0


def check_launch(argv: Sequence[str]) -> list[str]:
    """The command line of ``python -m sllmx`` for this process, checked before Hydra starts.

    - A launcher named by ``hydra/launcher=NAME`` that is not installed is refused with the
      ``pip install`` that adds it.
    - Under a multi-process launch (:func:`launched_processes` > 1) ``--multirun`` is refused: each
      process would run the whole sweep.  Launch the sweep once and give each trial several
      processes through its launcher (docs/scale-out.md).
    - On a process other than the main one, Hydra writes nothing: ``hydra.output_subdir=null``
      (no ``.hydra/``), no log file and only errors logged (``hydra/job_logging=disabled``: the
      main process logs for the run), and ``hydra.run.dir=.``; the run uses the main process's
      folder (:func:`sllmx.run.run` receives it from rank 0).

    Returns:
        ``argv`` with the overrides for this process added.

    Raises:
        SllmxError: for the two refusals above.
    """
    import importlib.util

    argv = list(argv)
    for arg in argv:
        if arg.startswith(("hydra/launcher=", "override hydra/launcher=")):
            name = arg.split("=", 1)[1]
            module, requirement = LAUNCHERS.get(name, (None, None))
            if module and importlib.util.find_spec(module) is None:
                raise SllmxError(f"hydra/launcher={name} is not installed; pip install '{requirement}'")
    world = launched_processes()
    if world <= 1:
        return argv
    if any(a in ("--multirun", "-m") or a.replace(" ", "") in ("hydra.mode=MULTIRUN", "hydra.mode=multirun")
           for a in argv):
        raise SllmxError(f"--multirun under a launcher of {world} processes: every process would run the whole "
                         f"sweep; start the sweep once and give each trial its processes through the launcher "
                         f"(hydra.launcher.tasks_per_node, docs/scale-out.md)")
    if launched_rank() != 0:
        keys = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
        extra = {"hydra.output_subdir": "null", "hydra/job_logging": "disabled", "hydra.run.dir": "."}
        argv += [f"{k}={v}" for k, v in extra.items() if k not in keys]
    return argv


def export_submitit_env() -> None:
    """In a submitit job of several tasks, export ``MASTER_ADDR``, ``RANK``, ``WORLD_SIZE``, ...
    (``submitit.helpers.TorchDistributedEnvironment``) so torch.distributed's ``env://`` works
    as under torchrun.  Every task keeps every GPU visible (``LOCAL_RANK`` picks its own)."""
    if os.environ.get("RANK") or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # overwrite: RANK is unset (checked above), so any MASTER_ADDR / LOCAL_RANK here is not a launcher's
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
