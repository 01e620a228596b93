"""The CUDA branch of the memories on a machine without a GPU: Triton's interpreter (``TRITON_INTERPRET=1``) runs
flash-linear-attention's and mamba-ssm's Triton kernels on CPU tensors, with the small runtime shims below.

The shims are our own monkeypatches of upstream behaviour that the interpreter (or the kernels' host code) gets wrong
or cannot do without a GPU; they touch nothing in ``modeling_ahn`` and are undone by ``deactivate()``. They were
written for the versions in ``PINNED`` (the ``interpret`` extra installs them: ``make install-interpret``); under
the interpreter other versions are refused (``unavailable_reason``), since a shim may then no longer fit.

On a CUDA machine nothing here is used: the same tests run the kernels compiled for real
(``benchmarks/gpu_session.sh``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import types

import numpy as np
import torch

# The versions the shims were written and checked for (the `interpret` extra of pyproject.toml,
# `make install-interpret`).
# mamba-ssm is not in the extra: its setup needs MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE and
# --no-build-isolation --no-deps on a machine without nvcc (the Makefile does that); without it only the mamba-ssm
# tests skip (Mamba2 still runs on fla's simple-GLA fallback).
PINNED = {"triton": "3.9.0", "fla-core": "0.6.0", "flash-linear-attention": "0.6.0", "einops": "0.8.2"}
PINNED_MAMBA = {"mamba-ssm": "2.3.2.post1"}
INSTALL_HINT = "run `make install-interpret`"

_STATE: dict = {"active": False, "undo": [], "env": None}


def use_gpu() -> bool:
    """Whether the CUDA-branch tests run the kernels compiled on a GPU (no interpreter, no shims)."""
    return torch.cuda.is_available() and os.environ.get("AHN_FORCE_INTERPRETER") != "1"


def _version_mismatch(pins: dict) -> str | None:
    for dist, want in pins.items():
        try:
            found = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return (f"the Triton-interpreter extra is not installed ({dist} missing): {INSTALL_HINT} (installs "
                    f"{', '.join(f'{d}=={v}' for d, v in {**PINNED, **PINNED_MAMBA}.items())})")
        if found != want:
            return f"the interpreter shims were written for {dist}=={want}, found {found} ({INSTALL_HINT})"
    return None


def unavailable_reason(package: str = "flash-linear-attention") -> str | None:
    """Why the CUDA-branch tests of ``package`` (``"flash-linear-attention"`` or ``"mamba-ssm"``) cannot run here
    (``None``: they can). On a GPU: whether the kernels import; under the interpreter also the pinned versions."""
    from modeling_ahn import memory_ahn

    if not use_gpu():
        why = _version_mismatch(PINNED if package == "flash-linear-attention" else {**PINNED, **PINNED_MAMBA})
        if why:
            return why
        if memory_ahn._KERNELS and not memory_ahn._KERNELS["interpret"]:
            return "the kernels were already imported in this process without TRITON_INTERPRET=1"
    # Import errors can be told once the kernels are imported (on CPU only by activate(), under the interpreter).
    if memory_ahn._KERNELS or use_gpu():
        memory_ahn._load_kernels()
        if package in memory_ahn._KERNEL_ERRORS:
            return f"{package} kernels not importable: {memory_ahn._KERNEL_ERRORS[package]}"
    return None


_MISSING = object()


def _patch(owner, name, value):
    """``owner.name = value`` (a module or class attribute), undone by ``deactivate()``: the attribute's own previous
    value is put back, or the attribute removed where ``owner`` had none of its own (a builtin, an inherited method)."""
    _STATE["undo"].append((owner, name, vars(owner).get(name, _MISSING)))
    setattr(owner, name, value)


def activate():
    """Set ``TRITON_INTERPRET=1``, import the kernels through ``modeling_ahn``'s own loader and apply the shims
    (on a GPU: only import the kernels, compiled for real)."""
    if _STATE["active"]:
        return
    if use_gpu():
        from modeling_ahn import memory_ahn

        memory_ahn._load_kernels()
        _STATE["active"] = True
        return
    _STATE["env"] = os.environ.get("TRITON_INTERPRET")
    # Triton reads TRITON_INTERPRET when a kernel is *defined* (@triton.jit at import): it must be set before fla and
    # mamba-ssm are imported, which memory_ahn does on the kernels' first use.
    os.environ["TRITON_INTERPRET"] = "1"
    from modeling_ahn import memory_ahn

    _STATE["active"] = True
    _shim_triton_imported_before()
    memory_ahn._load_kernels()
    assert memory_ahn._KERNELS["interpret"], "kernels imported without the interpreter"
    _shim_autotune()
    _shim_bf16()
    _shim_fla_loop_variable()
    if memory_ahn._KERNELS["mamba_chunk_scan_combined"] is not None:
        _shim_mamba_cuda_calls()


def deactivate():
    """Undo the shims and restore ``TRITON_INTERPRET`` (the imported kernels stay interpreted in this process)."""
    while _STATE["undo"]:
        owner, name, value = _STATE["undo"].pop()
        if value is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, value)
    if use_gpu():
        _STATE["active"] = False
        return
    if _STATE["env"] is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _STATE["env"]
    _STATE["active"] = False


# ---------------------------------------------------------------------------------------------------------------
# Shim 0: triton imported before TRITON_INTERPRET=1. torch._dynamo imports triton whenever it is installed
# (torch.utils._triton.has_triton_package, reached by `import transformers`), so in a test process triton.language's
# own @triton.jit helpers (tl.sigmoid, tl.sum, tl.cumsum and their combine functions, ...) are compiled-mode
# JITFunctions, which an interpreted kernel cannot call ("Cannot call @triton.jit'd outside of the scope of a kernel").
# Each JITFunction that triton's modules (and triton.language.tensor, as member functions) hold is replaced by the
# InterpretedFunction that @triton.jit makes under the interpreter. (fla's and mamba-ssm's own kernels are defined
# after TRITON_INTERPRET=1 is set, and are interpreted anyway.)
# ---------------------------------------------------------------------------------------------------------------
def _shim_triton_imported_before():
    import sys

    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    made: dict = {}

    def interpreted(jf):
        if id(jf) not in made:
            made[id(jf)] = InterpretedFunction(jf.fn)
        return made[id(jf)]

    owners = [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "triton" and m is not None]
    for owner in owners + [tl.core.tensor]:
        for name, value in list(vars(owner).items()):
            if isinstance(value, JITFunction):
                _patch(owner, name, interpreted(value))


# ---------------------------------------------------------------------------------------------------------------
# Shim 1: autotuning. triton's Autotuner benchmarks every config on the active GPU driver; under the interpreter
# there is none ("0 active drivers ([]). There should only be one."). Keep the first config that survives the
# kernel's own pruning: every config computes the same result (only the speed differs, which the interpreter cannot
# measure anyway), and a single config makes triton skip benchmarking.
# ---------------------------------------------------------------------------------------------------------------
def _shim_autotune():
    from triton.runtime.autotuner import Autotuner

    prune = Autotuner.prune_configs
    _patch(Autotuner, "prune_configs", lambda self, kwargs: prune(self, kwargs)[:1])


# ---------------------------------------------------------------------------------------------------------------
# Shim 2: bfloat16 arithmetic. The interpreter stores bf16 as raw uint16 bits (numpy has no bf16) and then
#   - tl.dot on bf16 operands multiplies the raw bit patterns as integers (InterpreterBuilder.create_dot),
#   - elementwise ops (binary_op, unary_op, fma, rsqrt, erf, clamp) compute on the bit patterns (NaN / garbage),
#   - reductions and scans (tl.sum, tl.max, tl.cumsum, ...: ReduceScanOpInterface.apply) run numpy on the bit
#     patterns (integer sums: e.g. fla's chunked gated-delta backward from an initial state gave dg ~1e17),
#   - the fp32 -> bf16 cast truncates the mantissa (cast_impl passes no rounding mode; the GPU rounds to nearest even;
#     its explicit round-to-nearest path carries mantissa overflow into the exponent wrongly), and casts between bf16
#     and anything but fp32 (ints, fp64) reinterpret the bits.
# So bf16 operands are widened to fp32 (exact: the bf16 bits are the fp32's upper half), the op runs in fp32, and the
# result is rounded back to bf16 to nearest even (torch's conversion, as the GPU's cvt.rn.bf16.f32).
# ---------------------------------------------------------------------------------------------------------------
def _shim_bf16():
    import triton.language as tl
    from triton.runtime import interpreter

    Builder, Handle = interpreter.InterpreterBuilder, interpreter.TensorHandle
    bf16, fp32 = tl.bfloat16, tl.float32

    def widen(data):  # bf16 bits (uint16) -> float32
        return (np.asarray(data).astype(np.uint32) << 16).view(np.float32)

    def narrow(data):  # float32 -> bf16 bits (uint16), round to nearest even
        t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(torch.bfloat16)
        return t.view(torch.int16).numpy().view(np.uint16)

    def is_bf16(h):
        return h.dtype.scalar == bf16

    def as_fp32(h):
        return Handle(widen(h.data), fp32) if is_bf16(h) else h

    cast_impl, binary_op, unary_op = Builder.cast_impl, Builder.binary_op, Builder.unary_op
    create_dot, create_fma, ternary_op = Builder.create_dot, Builder.create_fma, Builder.ternary_op
    create_fp_to_fp, create_rsqrt, create_erf = Builder.create_fp_to_fp, Builder.create_rsqrt, Builder.create_erf

    def to_bf16(h):  # any handle -> bf16, via float32
        if is_bf16(h):
            return h
        return Handle(narrow(np.asarray(h.data).astype(np.float32)), bf16)

    def cast(self, src, dst_type):
        if dst_type.scalar == bf16:
            return to_bf16(as_fp32(src))
        if is_bf16(src):
            return cast_impl(self, as_fp32(src), dst_type)
        return cast_impl(self, src, dst_type)

    def fp_to_fp(self, src, dst_type, rounding_mode):
        if dst_type.scalar == bf16 and rounding_mode in (None, interpreter._ir.ROUNDING_MODE.RTNE):
            return to_bf16(as_fp32(src))
        if is_bf16(src) and dst_type.scalar == fp32:
            return as_fp32(src)
        return create_fp_to_fp(self, src, dst_type, rounding_mode)

    def in_fp32(fn):  # run `fn` on fp32 widenings of bf16 operands; a bf16 (non-bool) result is rounded back
        def wrapped(self, *handles, **kw):
            if not any(isinstance(h, Handle) and is_bf16(h) for h in handles):
                return fn(self, *handles, **kw)
            out = fn(self, *(as_fp32(h) if isinstance(h, Handle) else h for h in handles), **kw)
            return out if out.data.dtype == np.bool_ else to_bf16(out)
        return wrapped

    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        out = create_dot(self, as_fp32(a), as_fp32(b), as_fp32(d), input_precision, max_num_imprecise_acc)
        return to_bf16(out) if is_bf16(d) else out

    def ternary(self, lhs, rhs, other, op):  # select (np.where) moves bits; clamp (np.clip) must compare values
        if op is np.clip:
            return in_fp32(ternary_op)(self, lhs, rhs, other, op)
        return ternary_op(self, lhs, rhs, other, op)

    Reduce = interpreter.ReduceScanOpInterface
    reduce_apply = Reduce.apply

    def retyped(t, handle, dtype):  # a tl tensor with handle and element type dtype, shape kept
        return tl.core.tensor(handle, t.type.with_element_ty(dtype) if t.type.is_block() else dtype)

    def reduce_fp32(self, input):
        if not isinstance(input, tuple):
            return reduce_fp32(self, (input,))[0]
        if not any(is_bf16(t.handle) for t in input):
            return reduce_apply(self, input)
        wide = tuple(retyped(t, as_fp32(t.handle), fp32) if is_bf16(t.handle) else t for t in input)
        out = reduce_apply(self, wide)
        return tuple(retyped(o, to_bf16(o.handle), bf16) if i < len(input) and is_bf16(input[i].handle)
                     and o.handle.dtype.scalar == fp32 else o for i, o in enumerate(out))

    _patch(Reduce, "apply", reduce_fp32)
    _patch(Builder, "cast_impl", cast)  # create_fp_trunc / fp_ext / si_to_fp / ... all call self.cast_impl
    _patch(Builder, "create_fp_to_fp", fp_to_fp)
    _patch(Builder, "binary_op", in_fp32(binary_op))
    _patch(Builder, "unary_op", in_fp32(unary_op))
    _patch(Builder, "create_fma", in_fp32(create_fma))
    _patch(Builder, "create_rsqrt", in_fp32(create_rsqrt))
    _patch(Builder, "create_erf", in_fp32(create_erf))
    _patch(Builder, "ternary_op", ternary)
    _patch(Builder, "create_dot", dot)


# ---------------------------------------------------------------------------------------------------------------
# Shim 3: fla's chunk_delta_h.py and chunk_h.py (the state recurrences of the chunked delta rules and of simple GLA)
# call `i_t.to(tl.int64)` on the variable of a plain `for i_t in range(NT)` loop. Compiled, that variable is a Triton
# scalar; the interpreter runs the loop with Python's range, whose ints have no `.to` (AttributeError). The modules'
# `range` (used only in those kernels there) is replaced by one whose ints answer `.to(dtype)` with themselves (a
# Python int is exact in any integer width).
# ---------------------------------------------------------------------------------------------------------------
class _LoopInt(int):
    def to(self, *args, **kwargs):
        return self


def _loop_range(*args):
    return map(_LoopInt, range(*args))


def _shim_fla_loop_variable():
    from fla.ops.common import chunk_delta_h, chunk_h

    for module in (chunk_delta_h, chunk_h):  # chunk_h: the same loop in simple GLA's state recurrence (Mamba2 fallback)
        _patch(module, "range", _loop_range)


# ---------------------------------------------------------------------------------------------------------------
# Shim 4: mamba-ssm's host code assumes CUDA tensors (its package `__init__`, which imports the compiled
# `selective_scan_cuda`, is not run at all: modeling_ahn imports the SSD ops without it, `_import_mamba_ssd`):
#   - every launch runs inside `with torch.cuda.device(x.device.index):`, and a CPU tensor's index is None, which
#     torch.cuda.device rejects (TypeError in torch.cuda._exchange_device): None gets a null context;
#   - the backward sizes its grids with `torch.cuda.get_device_properties(x.device).multi_processor_count`, which
#     fails for a CPU device: a CPU device gets one "multiprocessor" (fewest programs; the result does not depend
#     on it).
# Both patches leave CUDA devices to torch.
# ---------------------------------------------------------------------------------------------------------------
def _shim_mamba_cuda_calls():
    device, properties = torch.cuda.device, torch.cuda.get_device_properties

    def cuda_device(index):
        return contextlib.nullcontext() if index is None else device(index)

    def device_properties(dev=None):
        if dev is not None and torch.device(dev).type == "cpu":
            return types.SimpleNamespace(multi_processor_count=1)
        return properties(dev)

    _patch(torch.cuda, "device", cuda_device)
    _patch(torch.cuda, "get_device_properties", device_properties)
