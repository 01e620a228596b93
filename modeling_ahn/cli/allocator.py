# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""The CPU allocator setting of an ``ahn`` process: glibc's malloc keeps freed blocks for reuse.

A 2,048-token prefill chunk allocates tens of MB of short-lived tensors (the memory's chunk kernel, the base's
activations). Under glibc's defaults a large block is mapped fresh from the system and unmapped when freed (or the
heap's top trimmed back), so every chunk pays first-touch page faults on memory it had a moment ago. Measured with
``ahn bench --profile`` (8 layers of ``random:smollm2``, 16k tokens, bf16; AMD EPYC family 25 model 17, 2 cores,
the other idle; benchmarks/README.md): the memory 44.0 -> 20.9 ms per layer per 2k tokens, AHN / memory off
1.65 -> 1.19, with the thresholds below set. PyTorch's CPU tuning guide gives the same advice (a caching allocator,
jemalloc or tcmalloc through ``LD_PRELOAD``); this is its glibc equivalent, for the process that asks for it.

``ahn`` applies it when it starts (``tune_cpu_allocator``); a Python program calls it once itself, or sets
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in its environment. It is left alone where it does not
apply or the user chose: not Linux with glibc, a preloaded jemalloc / tcmalloc, any ``MALLOC_*_`` threshold already
in the environment, or ``AHN_CPU_ALLOCATOR=default``. The price: up to ``TRIM_THRESHOLD`` of freed memory stays with
the process (reused by the next chunk) instead of going back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Blocks up to this size come from the heap (reused), not from fresh mappings; glibc's own dynamic threshold stops at
# 32 MiB, below one MLP activation of a 3B base at a 2k chunk (2,048 x 11,008 float32 = 90 MB).
MMAP_THRESHOLD = 256 * 2**20
# Free memory at the heap's top kept for reuse rather than returned to the system.
TRIM_THRESHOLD = 2**30

OPT_OUT = "AHN_CPU_ALLOCATOR"
_ENV_THRESHOLDS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_STATE: dict = {"tuned": False, "why": "not asked (tune_cpu_allocator was not called)"}


def _reason_to_skip() -> str | None:
    if os.environ.get(OPT_OUT, "").lower() == "default":
        return f"{OPT_OUT}=default"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "a caching allocator is preloaded (LD_PRELOAD)"
    chosen = [name for name in _ENV_THRESHOLDS if name in os.environ]
    if chosen:
        return f"the environment sets {', '.join(chosen)}"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    return None


def tune_cpu_allocator() -> dict:
    """Set glibc's mmap and trim thresholds for this process (see the module's docstring), once; returns what is in
    force (``allocator_info``). A no-op, with the reason, where it does not apply or the user chose otherwise."""
    if _STATE["tuned"]:
        return allocator_info()
    why = _reason_to_skip()
    if why is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                      (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
        why = None if ok else "mallopt refused the thresholds"
    tuned = f"glibc mmap_threshold={MMAP_THRESHOLD}, trim_threshold={TRIM_THRESHOLD}"
    _STATE.update(tuned=why is None, why=why or tuned)
    return allocator_info()


def allocator_info() -> dict:
    """``{"tuned": bool, "why": str}``: whether this process's allocator was tuned, and how or why not (recorded with
    every ``ahn bench`` result)."""
    return dict(_STATE)


__all__ = ["MMAP_THRESHOLD", "OPT_OUT", "TRIM_THRESHOLD", "allocator_info", "tune_cpu_allocator"]
