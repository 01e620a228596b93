# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Which floating-point type runs fast on a device (``--dtype auto`` of ``ahn demo`` and ``ahn bench``).

bf16 halves the weights' and the cache's bytes, but on a CPU it is only fast where the hardware multiplies bf16
natively (AVX512-BF16 or AMX: oneDNN's bf16 support). Elsewhere PyTorch emulates it: on an AVX2-only CPU (measured
2026-12-01 on this project's 2-core AMD EPYC, torch 2.13) a bf16 ``[2048, 576] x [576, 1536]`` product ran at
11 GFLOP/s against 68 GFLOP/s in float32, so a bf16 prefill of SmolLM2 took 3.5x as long as a float32 one.
Not part of the remote-code payload.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's bf16 path: AVX512-BF16 / AMX): the memory's own check."""
    from ..memory_ahn import CPU_MULTIPLIES_BF16

    return CPU_MULTIPLIES_BF16


def preferred_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bf16 on a GPU that supports it and on CPUs with native bf16, else float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32


def resolve_dtype(name: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` (see :func:`preferred_dtype`), ``"float32"``, ``"bfloat16"`` or ``"float16"`` -> a dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return preferred_dtype(device)
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


__all__ = ["cpu_has_fast_bf16", "dtype_name", "preferred_dtype", "resolve_dtype"]
