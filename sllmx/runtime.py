"""The hardware and the processes one run uses: device, precision, and ranks.

A run is one process, or N processes started by a launcher that all execute the same
``python -m sllmx ...`` as one data-parallel run (DDP): ``torchrun --nproc_per_node N``,
``accelerate launch`` (which runs torchrun on GPUs), or a submitit job with several tasks
(``hydra.launcher.tasks_per_node``).  accelerate's ``PartialState`` holds the ranks (the
process group is created once and reused by the HF ``Trainer``); this module adds what sllmx
decides about them:

- the main process (rank 0) alone writes records, generations, logs and the model
  (:attr:`Runtime.is_main`); every rank computes the same things in memory;
- decisions that end training are the main process's, sent to every rank (:func:`from_main`),
  so no rank trains on alone or waits forever;
- work only the main process does (the trial's storage, W&B, files, caches the others then read)
  goes through :func:`on_main` / :func:`main_first`: if it fails there, every rank raises;
- work that every rank would otherwise repeat (the dev split's generations) is split by batch
  across the ranks and gathered in order (:func:`map_batches`).

Precision (``trainer.precision``): ``auto`` is bf16 on a CUDA GPU that supports it and on a CPU
with native bf16 instructions (the ``avx512_bf16`` or ``amx_bf16`` flags; measured against fp32
in benchmarks/RESULTS.md), fp32 otherwise.  The choice and its reason go into run.json.

Nothing heavy is imported at module level: ``python -m sllmx`` imports this at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from sllmx.errors import SllmxError
from sllmx.launch import export_submitit_env

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: /proc/cpuinfo flags of native bf16 arithmetic (x86: AVX512-BF16 dot products, AMX tiles; ARM: the BF16 extension)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
@dataclass(frozen=True)
class Runtime:
    """Facts about the hardware and processes a run uses, decided once by the runner.

    Attributes:
        device: ``"cpu"``, or this process's CUDA device (``"cuda"``, ``"cuda:1"``).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the dtype of the base weights and of
            the mixed-precision compute (``TrainingArguments.bf16`` / ``fp16``).
        precision_reason: why (``trainer.precision`` and what the hardware offers); in run.json.
        world_size: processes of this run (1 without a multi-process launcher).
        rank: this process's global rank; 0 is the main process.
        backend: the ``torch.distributed`` backend (``gloo``, ``nccl``), None for one process.
        allocator: on a CPU, the C allocator settings made for the run (:func:`sllmx.memory.keep_freed_memory`),
            None when none were.
    """

    device: str = "cpu"
    precision: str = "fp32"
    precision_reason: str = ""
    world_size: int = 1
    rank: int = 0
    backend: Optional[str] = None
    allocator: Optional[str] = None

    @property
    def bf16(self) -> bool:
        """True when the run computes in bfloat16."""
        return self.precision == "bf16"

    @property
    def fp16(self) -> bool:
        """True when the run computes in float16 (CUDA only)."""
        return self.precision == "fp16"

    @property
    def is_main(self) -> bool:
        """True in the process that writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def accelerator(self) -> str:
        """``"cuda"`` or ``"cpu"`` (the device type, without an index)."""
        return self.device.split(":")[0]

    @property
    def compute_dtype(self) -> Any:
        """``torch.bfloat16``, ``torch.float16`` or ``torch.float32``, after :attr:`precision`."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def record(self) -> dict[str, Any]:
        """What run.json keeps of it (``precision``): the dtype, what was asked and why."""
        return {"dtype": self.precision, "reason": self.precision_reason}


# ----------------------------------------------------------------------------- processes


def _state(backend: Optional[str] = None, timeout_s: Optional[float] = None) -> Any:
    """accelerate's ``PartialState`` of this process (created on first use, with ``backend`` and
    ``timeout_s``; later calls return the same state)."""
    import datetime

    import torch
    from accelerate import PartialState

    kwargs: dict[str, Any] = {"cpu": not torch.cuda.is_available()}
    if backend:
        kwargs["backend"] = backend
    if timeout_s:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    return PartialState(**kwargs)


def detect_runtime(precision: str = "auto", ddp_backend: Optional[str] = None,
                   ddp_timeout: Optional[float] = None) -> Runtime:
    """The device, ranks and precision of this process; on a CPU, glibc's allocator is told to keep freed memory
    (:func:`sllmx.memory.keep_freed_memory`, a process-wide setting).

    Starts ``torch.distributed`` (through accelerate's ``PartialState``: gloo on CPU, nccl on
    CUDA, or ``ddp_backend``; a collective waits at most ``ddp_timeout`` seconds, torch's default
    30 minutes when None) when a launcher started several processes; the HF ``Trainer`` reuses
    that process group, so ``trainer.args.ddp_backend`` / ``ddp_timeout`` are passed here.

    Args:
        precision: ``trainer.precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16``.

    Raises:
        SllmxError: an unknown precision, or one the hardware cannot run (fp16 off a GPU; bf16 on
            a GPU without it).
    """
    export_submitit_env()
    state = _state(ddp_backend, ddp_timeout)
    if state.num_processes > 1:
        import torch.distributed as dist

        backend = dist.get_backend() if dist.is_initialized() else state.backend
    else:
        backend = None
    device = str(state.device) if state.device.type == "cuda" else "cpu"
    chosen, reason = decide_precision(precision, device)
    from sllmx.memory import keep_freed_memory

    return Runtime(device=device, precision=chosen, precision_reason=reason, world_size=state.num_processes,
                   rank=state.process_index, backend=backend,
                   allocator=keep_freed_memory() if device == "cpu" else None)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``; empty where there
    is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def decide_precision(requested: str, device: str) -> tuple[str, str]:
    """``(precision, reason)`` for ``trainer.precision=requested`` on ``device``.

    ``auto``: bf16 on a CUDA device with ``torch.cuda.is_bf16_supported()`` and on a CPU with
    a native bf16 flag (:data:`CPU_BF16_FLAGS`), else fp32.  ``bf16`` on a CPU without the flags
    runs emulated (oneDNN converts to fp32: 0.8x the fp32 throughput with AVX-512), with that said in
    the reason, except on an x86 CPU without AVX-512, where it is refused: bf16 matrix products there
    ran 50x slower than fp32 (measured with oneDNN limited to AVX2 on an AVX-512 CPU;
    benchmarks/RESULTS.md §8).

    Raises:
        SllmxError: an unknown value; ``fp16`` off a CUDA device; ``bf16`` on a GPU without bf16 or
            on a CPU without AVX-512.
    """
    if requested not in PRECISIONS:
        raise SllmxError(f"trainer.precision={requested}: use one of {', '.join(PRECISIONS)}")
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(torch.device(device))
        has_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)  # T4 / V100 only emulate it
        if requested == "auto":
            return ("bf16", f"auto: {name} supports bf16") if has_bf16 else (
                "fp32", f"auto: {name} has no bf16 (trainer.precision=fp16 for mixed fp16)")
        if requested == "bf16" and not has_bf16:
            raise SllmxError(f"trainer.precision=bf16: {name} does not support bf16; use fp16 or fp32")
        return requested, f"trainer.precision={requested} on {name}"
    if requested == "fp16":
        raise SllmxError("trainer.precision=fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    flags = cpu_flags()
    native = sorted(set(CPU_BF16_FLAGS) & flags)
    if requested == "auto":
        if native:
            return "bf16", f"auto: the CPU has native bf16 ({', '.join(native)})"
        return "fp32", "auto: the CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag)"
    if requested == "bf16" and not native:
        if "avx2" in flags and "avx512f" not in flags:  # an x86 CPU without AVX-512
            raise SllmxError("trainer.precision=bf16: this CPU has neither native bf16 (avx512_bf16, amx_bf16) nor "
                             "AVX-512; bf16 matrix products without AVX-512 ran 50x slower than fp32 "
                             "(benchmarks/RESULTS.md §8); use trainer.precision=fp32")
        return "bf16", ("trainer.precision=bf16; the CPU has AVX-512 but no native bf16, so bf16 is emulated "
                        "(slower than fp32, benchmarks/RESULTS.md)")
    return requested, f"trainer.precision={requested}" + (f" (the CPU has {', '.join(native)})" if native else "")


# ----------------------------------------------------------------------------- between ranks


def from_main(value: Any, runtime: Runtime) -> Any:
    """The main process's ``value`` on every rank (``accelerate.utils.broadcast_object_list``); a
    collective call: every rank must make it.  One process: ``value`` itself."""
    if runtime.world_size == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def gather(value: Any, runtime: Runtime) -> list:
    """Every rank's ``value``, in rank order, on every rank (``accelerate.utils.gather_object``); a
    collective call.  One process: ``[value]``."""
    if runtime.world_size == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def wait_for_everyone(runtime: Runtime) -> None:
    """A barrier across the run's processes (no-op for one process)."""
    if runtime.world_size > 1:
        _state().wait_for_everyone()


def _fail_together(error: Optional[BaseException], runtime: Runtime) -> None:
    """Raise on every rank when the main process's part failed (``error`` there): the main process
    re-raises its own exception, the others a :class:`SllmxError` with its message (bad input) or a
    ``RuntimeError`` naming it.  A collective call."""
    sent = None if error is None else (type(error).__name__, str(error), isinstance(error, SllmxError))
    failed = from_main(sent, runtime)
    if error is not None:
        raise error
    if failed is not None:
        name, message, bad_input = failed
        raise SllmxError(message) if bad_input else RuntimeError(f"the main process failed: {name}: {message}")


def on_main(fn: Callable[[], Any], runtime: Runtime) -> Any:
    """``fn()`` on the main process only (files, the trial's storage, W&B); its result there, None on the
    other ranks.  If it raises, every rank raises (no rank is left waiting for the others in a later
    collective).  A collective call with several processes."""
    if runtime.world_size == 1:
        return fn()
    result, error = None, None
    if runtime.is_main:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    _fail_together(error, runtime)
    return result


def main_first(fn: Callable[[], Any], runtime: Runtime) -> Any:
    """``fn()`` on the main process, then on the others (a cache that the main process builds and the
    others read, e.g. a GGUF conversion); every rank's own result.  If it raises on the main process,
    every rank raises.  A collective call with several processes."""
    result = on_main(fn, runtime)
    return fn() if not runtime.is_main else result


def map_batches(fn: Callable[[list], list], items: list, batch_size: int, runtime: Runtime) -> list:
    """``fn`` applied to each ``batch_size`` slice of ``items``, concatenated in order.

    With several processes, slice ``i`` is computed on rank ``i % world_size`` and every rank
    receives all results (``accelerate.utils.gather_object``): each slice is the batch a single
    process would compute, so the results equal one process's.  A collective call.

    Args:
        fn: takes a list of at most ``batch_size`` items, returns one result per item.
        items: the inputs.
        batch_size: items per call of ``fn`` (at least 1).
    """
    starts = list(range(0, len(items), max(1, batch_size)))
    mine = [(s, fn(items[s:s + batch_size])) for k, s in enumerate(starts) if k % runtime.world_size == runtime.rank]
    if runtime.world_size > 1:
        from accelerate.utils import gather_object

        mine = sorted(gather_object(mine), key=lambda pair: pair[0])
    return [result for _, results in mine for result in results]

