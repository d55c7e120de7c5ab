"""Memory: whether a run needs gradient checkpointing, and the peak memory it used.

Gradient checkpointing recomputes every layer's activations in the backward pass: 20% more time per
step on CPU (SmolLM2-135M with LoRA, benchmarks/RESULTS.md), for memory a small model rarely needs.  With
``trainer.gradient_checkpointing=null`` sllmx turns it on only when the estimated activation memory
of the largest batch would take more than half of the memory available once the model is loaded.
"""

from __future__ import annotations

import functools
import resource
from typing import Any, Optional

#: gradient checkpointing goes on when the estimate exceeds this share of the available memory
CHECKPOINTING_SHARE = 0.5
#: glibc ``mallopt`` parameters (``<malloc.h>``) set for a run on a CPU: (number, value)
MALLOPT = {"M_TRIM_THRESHOLD": (-1, -1), "M_MMAP_MAX": (-4, 0)}


def keep_freed_memory() -> Optional[str]:
    """Make glibc's allocator keep freed memory for reuse instead of handing it back to the kernel; return what was
    set (for run.json ``memory.allocator``), or None where nothing was changed.

    A training step on a CPU allocates and frees the same large activations at every step.  With glibc's defaults a
    block over the mmap threshold (adaptive, at most 32 MiB) is mapped fresh and unmapped when freed, and a free heap
    top over the trim threshold is returned to the kernel, so every step faults its pages in again.  ``mallopt``
    (glibc manual, "Malloc Tunable Parameters") with ``M_MMAP_MAX`` 0 (the main heap serves large blocks too; other
    threads' arenas still map what exceeds their 64 MiB heaps) and ``M_TRIM_THRESHOLD`` -1 (no trimming) keeps the
    pages in the heap for the next step: 5 QLoRA DPO steps of SmolLM2-135M had a fifth of the page faults, half the
    kernel time and 1.20x the tokens/s (benchmarks/RESULTS.md section 18).  The settings hold for the rest of the
    process; the free memory they keep is handed back when the next run in it starts (:func:`reset_peak_memory`)
    and counted as available where sllmx checks for room (:func:`available_bytes`).  PyTorch's CPU performance guide
    recommends jemalloc or tcmalloc for the same reason; with such an allocator in the process (``LD_PRELOAD``,
    ``/etc/ld.so.preload``: seen in ``/proc/self/maps``), any ``LD_PRELOAD``, ``MALLOC_*`` variables or malloc
    ``GLIBC_TUNABLES`` set, or a C library other than glibc, nothing is changed.  Idempotent.
    """
    import ctypes
    import os

    libc = _glibc()
    if (libc is None or os.environ.get("LD_PRELOAD") or any(k.startswith("MALLOC_") for k in os.environ)
            or "malloc" in os.environ.get("GLIBC_TUNABLES", "") or _other_allocator()):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = [f"{name} {value}" for name, (number, value) in MALLOPT.items() if mallopt(number, value) == 1]
    return f"glibc mallopt: {', '.join(done)}" if done else None


def activation_bytes(model_config: Any, batch_size: int, seq_len: int, bytes_per_value: int = 4) -> int:
    """Estimated activation memory of one forward/backward of a decoder-only transformer, in bytes.

    Per layer ``s·b·h·(34 + 5·a·s/h)`` bytes for 16-bit activations (Korthikanti et al., 2022,
    "Reducing Activation Recomputation in Large Transformer Models", eq. 2, no parallelism),
    scaled by ``bytes_per_value / 2``; plus the output head's logits, their log-softmax and
    gradient (``3·b·s·V`` values; SFT with ``trainer.label_positions_only`` builds them only at the
    label positions).  An upper bound for LoRA, which keeps fewer activations;
    for SmolLM2-135M at batch 8 × 640 tokens in fp32 it gives 17.9 GB, where a step measured
    14.7 GB peak RSS.

    Args:
        model_config: a ``transformers`` config with ``hidden_size``, ``num_attention_heads``,
            ``num_hidden_layers`` and ``vocab_size`` (the text config of a multimodal model).
        batch_size: examples per forward pass.
        seq_len: tokens in the longest example of a batch.
        bytes_per_value: 4 for fp32, 2 for bf16/fp16.
    """
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    h, a, layers, vocab = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.vocab_size
    s, b = seq_len, batch_size
    per_layer = s * b * h * (34 + 5 * a * s / h) * bytes_per_value / 2
    return int(layers * per_layer + 3 * b * s * vocab * bytes_per_value)


def available_bytes(device: str) -> int:
    """Memory free for activations now: free memory of the CUDA ``device`` (``cuda``, ``cuda:1``),
    else the host's ``MemAvailable`` (psutil) plus the free memory glibc keeps in this process's heap
    (:func:`keep_freed_memory`; ``mallinfo2().fordblks``), which the process reuses without the kernel.  The heap is
    not trimmed here: a trim during training (the room check of every dev evaluation's generation copy) made the
    next steps fault all their memory in again (benchmarks/RESULTS.md section 20)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available) + _kept_free_bytes()


def decide_checkpointing(model_config: Any, batch_size: int, seq_len: int, device: str,
                         bytes_per_value: int = 4, processes: int = 1) -> dict[str, Any]:
    """Whether ``trainer.gradient_checkpointing=null`` turns checkpointing on, and why.

    ``processes`` is the number of processes that share this memory (the ranks of a run on one CPU
    host): each gets that share of it.

    Returns:
        ``{"gradient_checkpointing": bool, "activation_estimate_bytes": int, "available_bytes": int,
        "seq_len": int, "batch_size": int}``: on when the estimate (:func:`activation_bytes`)
        exceeds :data:`CHECKPOINTING_SHARE` of :func:`available_bytes` (this process's share).
        Recorded in run.json under ``memory``.
    """
    need = activation_bytes(model_config, batch_size, seq_len, bytes_per_value)
    free = available_bytes(device) // max(1, processes)
    return {"gradient_checkpointing": need > CHECKPOINTING_SHARE * free, "activation_estimate_bytes": need,
            "available_bytes": free, "seq_len": int(seq_len), "batch_size": int(batch_size)}


def reset_peak_memory(device: str) -> None:
    """Start this run's peaks anew, so that runs sharing a process (a sweep's trials under Hydra's basic
    launcher) each record their own: the peak resident set (Linux: ``5`` written to ``/proc/self/clear_refs``
    resets ``VmHWM``, proc(5)) and ``torch.cuda.reset_peak_memory_stats``.  Where that is not possible the
    peaks are the process's.  First the free memory an earlier run left in glibc's heap is handed back to the
    kernel (``malloc_trim(0)``; :func:`keep_freed_memory` keeps it otherwise), so it does not count in this run's
    peak."""
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    if device.startswith("cuda"):
        import torch

        try:
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        except RuntimeError:  # no CUDA context yet: nothing to reset
            pass


def _other_allocator() -> bool:
    """Whether an allocator other than glibc's is mapped into this process (jemalloc, tcmalloc, mimalloc), however
    it got there: glibc's ``mallopt`` would then change nothing that allocates."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            maps = f.read()
    except OSError:
        return False
    return any(name in maps for name in ("jemalloc", "tcmalloc", "mimalloc"))


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    """This process's C library (``ctypes.CDLL``) when it is glibc, else None."""
    import ctypes
    import os

    try:  # "glibc 2.41"; on other C libraries an unknown name (ValueError) or None
        return ctypes.CDLL(None) if os.confstr("CS_GNU_LIBC_VERSION") else None
    except (ValueError, OSError, AttributeError):
        return None


#: ``mallinfo2().fordblks`` right after the last ``malloc_trim``: free chunks whose pages the trim handed back stay
#: in glibc's free lists, and the kernel already counts those pages as available
_TRIMMED_FREE = [0]


def _kept_free_bytes() -> int:
    """Bytes free in glibc's heaps, all arenas (``mallinfo2().fordblks``, glibc >= 2.33), beyond what was free right
    after the last trim (:func:`_trim_heap`; that memory is the kernel's again); 0 elsewhere."""
    import ctypes

    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2") or _other_allocator():
        return 0

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    return max(0, int(libc.mallinfo2().fordblks) - _TRIMMED_FREE[0])


def _trim_heap() -> None:
    """glibc's ``malloc_trim(0)``: free heap pages back to the kernel (nothing elsewhere)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
        _TRIMMED_FREE[0] = 0
        _TRIMMED_FREE[0] = _kept_free_bytes()


def _high_water_mark() -> Optional[int]:
    """``VmHWM`` of ``/proc/self/status`` in bytes (the peak resident set since the last reset), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_memory(device: str) -> tuple[int, Optional[int]]:
    """(peak resident bytes of this process since :func:`reset_peak_memory`, peak CUDA bytes allocated or
    None)."""
    rss = _high_water_mark() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    if device.startswith("cuda"):
        import torch

        return rss, int(torch.cuda.max_memory_allocated(torch.device(device)))
    return rss, None
