# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""AHN memories: GatedDeltaNet (``gdn``), DeltaNet (``dn``) and Mamba2 (``mamba2``).

Every memory folds the tokens that leave the sliding window into a fixed-size state, one
``D x D`` matrix per attention head, and reads it with the current query (AHN_SPEC section 2).

All three are a *gated linear recurrence* over a state ``S`` of shape ``[K, V]`` per head
(the orientation of flash-linear-attention, ``o_t = S_t^T q_t``)::

    S_t = exp(g_t) * S_{t-1} + k_t u_t^T
    u_t = beta_t * (v_t - exp(g_t) * S_{t-1}^T k_t)      (delta rule: GDN, DN)
    u_t = beta_t * v_t                                    (plain write: Mamba2, beta = dt, g = dt * A)
    o_t = scale * S_t^T q_t

A token that must not enter memory (a pad token, a sink, nothing evicted yet) has
``beta = 0`` and ``g = 0``, which leaves the state exactly unchanged.

This file is part of the Hub remote-code payload: flat, sibling imports only, optional CUDA
kernels imported on first use (``_load_kernels``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

# The optional CUDA/Triton kernels (flash-linear-attention for GDN/DN, mamba-ssm's SSD for Mamba2) are imported on
# first use, by ``_load_kernels``, never with this module: importing fla on a machine without a GPU warns ("Triton is
# not supported on current platform"), and a CPU run never needs them.
_KERNELS: dict = {}  # kernel name -> function or None; "interpret": whether they were imported under TRITON_INTERPRET=1
_KERNEL_ERRORS: dict = {}  # package -> why it could not be imported


AHN_TYPES = {"gdn": "GatedDeltaNet", "dn": "DeltaNet", "mamba2": "Mamba2"}
_AHN_ALIASES = {
    "gdn": "gdn",
    "gateddeltanet": "gdn",
    "gated_deltanet": "gdn",
    "dn": "dn",
    "deltanet": "dn",
    "mamba2": "mamba2",
}

L2_EPS = 1e-6
NORM_EPS = 1e-5

# Which backend the memories use: "auto" (CUDA kernels when installed and the tensors are on CUDA,
# else torch), "torch" (always the pure-PyTorch kernels) or "kernels" (CUDA kernels, error if they cannot run; on
# CPU tensors only through Triton's interpreter, TRITON_INTERPRET=1: see _use_kernels).
_BACKEND = {"value": "auto"}


def set_memory_backend(backend: str) -> None:
    """Choose the memory kernels: ``"auto"`` (default), ``"torch"`` or ``"kernels"``."""
    if backend not in ("auto", "torch", "kernels"):
        raise ValueError(f"memory backend must be 'auto', 'torch' or 'kernels', got {backend!r}")
    _BACKEND["value"] = backend


def get_memory_backend() -> str:
    return _BACKEND["value"]


def canonical_ahn_type(name: str) -> str:
    """Map ``gdn``/``GatedDeltaNet``, ``dn``/``DeltaNet``, ``mamba2``/``Mamba2`` to the short name."""
    key = str(name).strip().lower()
    if key not in _AHN_ALIASES:
        raise ValueError(
            f"Unknown ahn_type {name!r}. Use one of 'gdn' (GatedDeltaNet), 'dn' (DeltaNet) or 'mamba2' (Mamba2)."
        )
    return _AHN_ALIASES[key]


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``: ``x`` itself when it already is (``x.to`` would still be an op of its own, and the
    memory's calls are op-bound at decoding sizes)."""
    return x if x.dtype == dtype else x.to(dtype)


def l2norm(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dimension (the release's kernels' numerics), in float32 whatever
    ``x``'s dtype (the norm is accumulated in float32 without a float32 copy of ``x``)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    return x * torch.rsqrt(norm * norm + eps)


def derived_from_parameters(module: nn.Module, params: tuple, make):
    """``make()``: tensors made from a module's ``params`` (a stacked weight, ``-exp(A_log)``), kept on the module (one
    entry per ``make`` function) while they cannot have changed: every parameter the same storage at the same version
    counter. A decoding step then skips the ops that make them (three per layer and step for GDN's gates). Made afresh
    with gradients enabled (the autograd graph needs them, and a kept inference tensor could not be saved for
    backward), under ``torch.compile`` (which traces the ops) and for inference-mode parameters (which keep no version
    counter)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or any(p.is_inference() for p in params):
        return make()
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    memos = module.__dict__.setdefault("_derived_memos", {})
    maker = getattr(make, "__func__", make)  # (a bound method: its function, the same object on every call)
    memo = memos.get(maker)
    if memo is None or memo[0] != key:
        memo = memos[maker] = (key, make())
    return memo[1]


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` (``y > 0``)."""
    return y + torch.log(-torch.expm1(-y))


def rms_factor(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """``rsqrt(mean(x^2) + eps)`` over the last dimension, float32 ``[..., 1]`` (accumulated in float32 without a
    float32 copy of ``x``)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    return torch.rsqrt(norm * norm / x.shape[-1] + eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """RMSNorm over the last dimension in float32."""
    return x.float() * rms_factor(x, eps) * weight.float()


# ----------------------------------------------------------------------------------------------
# Pure-PyTorch kernels. Layout: q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H];
# state [B, H, K, V] float32. All arithmetic in float32.
# ----------------------------------------------------------------------------------------------


def torch_recurrent_rule(q, k, v, g, beta, initial_state=None, scale=1.0, delta=True):
    """Step-by-step form of the recurrence (used for decoding). Returns ``(o [B,T,H,V] fp32, state)``."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outs = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].float().exp()[..., None, None]
        k_t = k[:, t]
        if delta:
            u = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k_t))
        else:
            u = beta[:, t, :, None] * v[:, t]
        S = S + k_t[..., :, None] * u[..., None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]) * scale)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, V)
    return o, S


def torch_step_rule(q, k, v, g, beta, state=None, scale=1.0, delta=True):
    """One token of the recurrence (a decoding step): ``q, k`` ``[..., K]``, ``v`` ``[..., V]`` fp32, ``g, beta``
    ``[...]``, state ``[..., K, V]``; ``k``/``v`` may broadcast over query heads (GQA: ``[B, Hkv, 1, K]`` against
    ``q`` ``[B, Hkv, rep, K]``). Equal to ``torch_recurrent_rule`` on one token, with the state's two reads in one
    product: ``S' = e^g S + k u^T`` gives ``S'^T q = e^g S^T q + u (k . q)``. Returns ``(o [..., V], state)``."""
    S = q.new_zeros(*q.shape, v.shape[-1]) if state is None else _as(state, torch.float32)
    if g is not None:
        S = S * g.exp().view(*g.shape, 1, 1)
    if scale != 1.0:
        q = q * scale
    if delta:
        r = torch.stack([k.expand_as(q), q], dim=-2) @ S  # [..., 2, V]: S^T k and S^T q
        u, s_q = beta[..., None] * (v - r[..., 0, :]), r[..., 1, :]
    else:
        u, s_q = beta[..., None] * v, (q[..., None, :] @ S)[..., 0, :]
    S = torch.addcmul(S, k[..., :, None], u[..., None, :])
    return torch.addcmul(s_q, u, (k * q).sum(-1, keepdim=True)), S


# Chunk length of the torch kernel. Measured on the 2-core CPU (one thread, SmolLM2's 9 heads of 64, 8k tokens):
# 32 beats 64 by ~20 %; the intra-chunk work grows with C, the sequential loop with T / C.
TORCH_CHUNK_SIZE = 32
# Tokens per segment: the chunk-parallel work runs one segment at a time (state carried across), so that its
# [B, H, chunks, C, ...] intermediates stay cache-sized instead of growing with T (see benchmarks/kernel_speed.py).
TORCH_SEGMENT = 2048
# Chunk states kept in float32 at a time by the bf16 chunk kernel (``_chunk_segment``), converted together.
RING = 8


def torch_chunk_rule(q, k, v, g, beta, initial_state=None, scale=1.0, delta=True, chunk_size=TORCH_CHUNK_SIZE,
                     segment=TORCH_SEGMENT, matmul_dtype=None):
    """Chunked (parallel) form of the recurrence, ``segment`` tokens at a time (``None``: all at once).
    Inputs ``[B, T, H, ·]``; ``k``/``v`` may have fewer heads ``Hkv`` (grouped-query attention: key/value head ``j``
    serves query heads ``j * H / Hkv ..``, as ``repeat_interleave`` would give). Returns ``(o [B, T, H, V] fp32,
    state)``; see ``_chunk_segment`` for the maths.

    Each input is laid out chunk-major, ``[chunks, B*H, C, ·]``, in one copy (with the grouped heads repeated by the
    same copy; a segment is then a contiguous slice), and without a gradient the output is written into one
    head-major buffer (returned as a ``[B, T, H, V]`` view). A final chunk shorter than ``chunk_size`` is run as a
    chunk of its own length (no padding).
    ``matmul_dtype``: the operand dtype of the chunk-parallel products (``None``: float32). ``torch.bfloat16``
    (bf16 models, no gradient) takes them in bf16 with float32 accumulation, as fla's kernels do on GPU; the state
    and its recurrence stay float32 either way.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    BH = B * H
    if H % k.shape[2] or H % v.shape[2]:
        raise ValueError(f"{H} query heads cannot share {k.shape[2]} key / {v.shape[2]} value heads")
    S = q.new_zeros(BH, K, V, dtype=torch.float32) if initial_state is None else \
        _as(initial_state, torch.float32).reshape(BH, K, V)
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, beta, g, S))
    md = torch.float32 if grad or matmul_dtype is None else matmul_dtype
    out = None if grad else torch.empty(BH, T, V, dtype=torch.float32, device=q.device)
    seg = T if segment is None else max(C, segment - segment % C)
    full = T // C * C  # whole chunks, then (at the very end) one shorter chunk
    outs = []
    for a, b_, c in ((0, full, C), (full, T, T - full)):
        if b_ <= a:
            continue
        n = (b_ - a) // c

        def chunk_major(x, dtype=torch.float32, a=a, b_=b_, n=n, c=c):  # [B, T, h, ...] -> [n, B*H, c, ...], heads
            # repeated to H, one copy
            h, rest = x.shape[2], x.shape[3:]
            if grad:  # through differentiable views
                x = x[:, a:b_].unflatten(1, (n, c))  # [B, n, c, h, ...]
                x = x.permute(1, 0, 3, 2, *range(4, x.dim()))  # [n, B, h, c, ...]
                x = x.unsqueeze(3).expand(n, B, h, H // h, c, *rest)
            else:  # the same view in one op (a decoding-size call is op-bound)
                sB, sT, sh, *srest = x.stride()
                x = x.as_strided((n, B, h, H // h, c, *rest), (c * sT, sB, sh, 0, sT, *srest),
                                 x.storage_offset() + a * sT)
            y = torch.empty(x.shape, dtype=dtype, device=x.device)
            return y.copy_(x).view(n, BH, c, *rest)  # (copy_ is differentiable)

        # the queries (and with the delta rule the values) enter products only: laid out in their operand dtype
        cq, ck, cv = chunk_major(q, md), chunk_major(k), chunk_major(v, md if delta else torch.float32)
        cb, cg = chunk_major(beta), chunk_major(g) if g is not None else None
        per = max(1, seg // c)  # chunks per segment
        for i0 in range(0, n, per):
            i1 = min(n, i0 + per)
            part = (cq, ck, cv, cg, cb)
            if i1 - i0 < n:  # (one segment: no slicing ops)
                part = (x if x is None else x[i0:i1] for x in part)
            o, S = _chunk_segment(*part, S, scale, delta, md)  # o: [i1 - i0, BH, c, V], chunk-major
            t0, t1 = a + i0 * c, a + i1 * c
            if out is None:
                outs.append(o.transpose(0, 1).reshape(BH, t1 - t0, V))
            else:
                (out if t1 - t0 == T else out[:, t0:t1]).view(BH, -1, c, V).copy_(o.transpose(0, 1))
    if out is None:
        out = torch.cat(outs, dim=1) if outs else q.new_zeros(BH, 0, V, dtype=torch.float32)
    return out.view(B, H, T, V).transpose(1, 2), S.view(B, H, K, V)


_CHUNK_CONSTANTS: dict = {}


def _chunk_constants(C: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk kernel's masks, made once per chunk length and device: causal ``[C, C]`` (bool, ``j <= i``) and
    its complement. Made as normal tensors even under ``torch.inference_mode`` (``generate``): an inference tensor
    cached there could not be saved for backward by a later training step."""
    key = (C, str(device))
    if key not in _CHUNK_CONSTANTS:
        with torch.inference_mode(False):
            causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()
            _CHUNK_CONSTANTS[key] = (causal, ~causal)
    return _CHUNK_CONSTANTS[key]


def _recurrence_step(S, out, w_key, kend, cdec, u):
    """One chunk of ``_chunk_segment``'s state recurrence in place, float32: ``u``, which holds ``W_v``, becomes
    ``U = W_v - W_k S`` (the delta rule only, ``w_key`` ``None`` otherwise: ``U = W_v``; in place, so that no copy
    of ``W_v`` precedes the product) and ``out = cdec * S + E U`` (``cdec`` ``None``: no decay)."""
    if w_key is not None:
        u.baddbmm_(w_key, S, alpha=-1)
    if cdec is None:
        torch.baddbmm(S, kend, u, out=out)
    else:
        torch.mul(S, cdec, out=out).baddbmm_(kend, u)


def _chunk_segment(q, k, v, g, beta, S, scale, delta, md=torch.float32):
    """Chunked (parallel) form of the recurrence over chunk-major ``[n, BH, C, ·]`` inputs, from state ``S``
    ``[BH, K, V]``, exact up to float rounding (``md``: the operand dtype of the chunk-parallel products; ``k``, ``g``
    and ``beta`` are float32, ``q`` and, with the delta rule, ``v`` may be in ``md`` already).

    Inside a chunk of ``C`` steps with cumulative log-decay ``c_i = sum_{j<=i} g_j``:
    ``U = T (beta*V - (beta*exp(c)*K) S0) = W_v - W_k S0`` with ``T = (I + A)^-1``,
    ``A_ij = beta_i exp(c_i - c_j) k_i.k_j`` for ``j < i`` (the WY form of the delta rule; ``U = beta*V``
    without the delta rule), then ``O = (Q*exp(c)) S0 + (QK^T * exp(c_i - c_j))_{j<=i} U`` and
    ``S_C = exp(c_C) S0 + E U`` with ``E = (K * exp(c_C - c))^T``. Only the ``S`` recurrence runs chunk by chunk
    (three ops per chunk: ``U`` from ``S0``, the decay, then the next ``S``, all float32 and written in place into
    two buffers); everything else is computed for all chunks of the segment at once, the outputs after the loop
    from the states it kept. DeltaNet (``g is None``) skips every exponential. (The affine form ``S_C = M S0 + B``,
    ``M = exp(c_C) I - E W_k``, needs one op per chunk but ~1.5x the products: measured 1.2x slower on an AVX2 CPU,
    benchmarks/README.md, "Where the time goes".) Returns ``(o [n, BH, C, V], state)``, ``o`` in ``md``.
    """
    n, BH, C, K = k.shape
    V = v.shape[-1]
    low = md != torch.float32
    qm, km, vm = (_as(x, md) for x in (q, k, v))
    causal, future = _chunk_constants(C, k.device)
    if g is not None:
        gc = g.cumsum(-1)  # [n, BH, C]
        col = gc[..., None]  # [n, BH, C, 1]
        decay = (col - gc[..., None, :]).masked_fill_(future, float("-inf")).exp_()  # exp(c_i - c_j), j <= i
        egc = col.exp()  # [n, BH, C, 1]
        e_keys = k * (col[..., -1:, :] - col).exp_()  # E^T: the keys decayed to the chunk's end
    else:  # DeltaNet: no decay
        decay, egc, e_keys = causal.to(torch.float32), None, k
    k_t = km.transpose(-1, -2)
    if delta:
        A = (km @ k_t) * (decay * beta[..., :, None] if g is not None else beta[..., :, None])
        # T diag(beta) = (I + A)^-1 diag(beta), solved once per chunk (a C x C right-hand side, cheaper than solving
        # for [V | K] columns); the solve reads only A's strict lower triangle (lower, unitriangular), so A needs no
        # mask and no identity
        t_beta = torch.linalg.solve_triangular(A, torch.diag_embed(beta), upper=False, unitriangular=True)
        tb = _as(t_beta, md)
        w_value = _as(tb @ vm, torch.float32)
        w_key = _as((tb if egc is None else tb * _as(egc.transpose(-1, -2), md)) @ km, torch.float32)
    else:
        w_value = v * beta[..., None]
    kend = e_keys.transpose(-1, -2)
    cdec = None if egc is None else egc[..., -1:, :]  # [n, BH, 1, 1]: the chunk's decay
    # One unbind per tensor, not x[i] per chunk: fewer ops, and each indexing op's backward would materialise a zero
    # tensor of the full shape (O(n^2) in the number of chunks).
    kend_c = kend.unbind(0)
    wk_c = w_key.unbind(0) if delta else None
    cd_c = None if cdec is None else cdec.unbind(0)
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, beta, S, g))
    if grad:  # lists (out= has no backward)
        states, us, wv_c = [S], [], w_value.unbind(0)
        for i in range(n):
            u = wv_c[i] - torch.bmm(wk_c[i], states[-1]) if delta else wv_c[i]
            us.append(u)
            s = states[-1] if cd_c is None else states[-1] * cd_c[i]
            states.append(torch.baddbmm(s, kend_c[i], u))
        S_prev, U, S = torch.stack(states[:-1]), torch.stack(us), states[-1]
    else:  # states and updates written in place; U_i over W_v (a fresh tensor, read nowhere else)
        U = w_value
        Uc = U.unbind(0)
        if low:  # through a float32 ring of RING states, each S_{i-1} kept in ``md`` only (converted RING at a
            # time, instead of a float32 buffer of every chunk's state converted at the end: ~6-9 % of the memory's
            # bf16 prefill on an AVX512-BF16 CPU, bit for bit the same result)
            S_prev = S.new_empty(n, *S.shape, dtype=md)
            blocks, ring = S_prev.split(RING), S.new_empty(RING, *S.shape)
            rc = ring.unbind(0)
            rc[0].copy_(S)
            for i in range(n):
                j = (i + 1) % RING
                if j == 0:  # the ring holds S_{i-RING+1} .. S_i: into S_prev before its first place is reused
                    blocks[i // RING].copy_(ring)
                _recurrence_step(rc[i % RING], rc[j], wk_c[i] if delta else None, kend_c[i],
                                 None if cd_c is None else cd_c[i], Uc[i])
            if n % RING:
                blocks[-1].copy_(ring[: n % RING])
            S = rc[n % RING].clone()  # (not a view of the ring)
        else:  # S_{i-1} of every chunk in one buffer (read by the outputs' batched product); the final state in a
            # tensor of its own, so that the cache keeping it does not keep the buffer alive
            S_prev = S.new_empty(n, *S.shape)
            Sc = (*S_prev.unbind(0), S.new_empty(S.shape))
            Sc[0].copy_(S)
            for i in range(n):
                _recurrence_step(Sc[i], Sc[i + 1], wk_c[i] if delta else None, kend_c[i],
                                 None if cd_c is None else cd_c[i], Uc[i])
            S = Sc[n]
    # O_i = (Q_i exp(c) scale) S_{i-1} + (Q_i K_i^T exp(c_i - c_j) scale)_{j<=i} U_i
    if scale != 1.0:
        qm = qm * scale
    qk = (qm @ k_t).mul_(decay)  # [n, BH, C, C]
    q_read = qm if egc is None else qm * _as(egc, md)
    if low:  # (qk is in md already: the product's own dtype, scaled in place; without a gradient S_prev too)
        qk, U, S_prev = _as(qk, md), U.to(md), _as(S_prev, md)
    if grad:
        return q_read @ S_prev + qk @ U, S
    o = torch.baddbmm((qk @ U).flatten(0, 1), q_read.flatten(0, 1), S_prev.flatten(0, 1))
    return o.view(n, BH, C, V), S  # (in md: the caller's copy into its float32 buffer converts)


# ----------------------------------------------------------------------------------------------
# Dispatch: CUDA kernels when available, torch otherwise.
# ----------------------------------------------------------------------------------------------


def _interpreting() -> bool:
    """Whether Triton runs its kernels through its CPU interpreter (``TRITON_INTERPRET=1``, read by Triton when a
    kernel is defined, i.e. when fla / mamba-ssm are imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_interpreted() -> bool:
    """Whether Triton's own ``@triton.jit`` helpers (``tl.sigmoid``, ``tl.sum``, ...) were defined under the
    interpreter: Triton reads ``TRITON_INTERPRET`` for them when it is imported, which ``torch._dynamo`` (and so
    ``import transformers``) does whenever Triton is installed; interpreted kernels cannot call compiled helpers."""
    try:
        from triton.language import standard
        from triton.runtime.interpreter import InterpretedFunction
    except Exception:
        return False
    return isinstance(getattr(standard, "sigmoid", None), InterpretedFunction)


def _import_mamba_ssd():
    """mamba-ssm's ``mamba_chunk_scan_combined``, imported without running ``mamba_ssm/__init__.py``.

    That ``__init__`` imports the compiled ``selective_scan_cuda`` extension (and the model classes), which the SSD
    Triton ops do not use: an install without the extension (``MAMBA_SKIP_CUDA_BUILD``) would fail there, and a
    failed package import leaves some submodules behind in ``sys.modules``, so that whether a later import
    succeeded depended on what had been imported before. Here the subpackage is loaded under a bare parent package
    (its ``__init__`` not executed) that is removed again afterwards; an already imported ``mamba_ssm`` is used as is.
    """
    name = "mamba_ssm.ops.triton.ssd_combined"
    if "mamba_ssm" in sys.modules or name in sys.modules:
        return importlib.import_module(name).mamba_chunk_scan_combined
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError("No module named 'mamba_ssm'", name="mamba_ssm")
    bare = importlib.util.module_from_spec(spec)
    sys.modules["mamba_ssm"] = bare
    try:
        return importlib.import_module(name).mamba_chunk_scan_combined
    finally:
        if sys.modules.get("mamba_ssm") is bare:
            del sys.modules["mamba_ssm"]


def _load_kernels() -> dict:
    """Import the optional kernels once (see ``_KERNELS``); a package that fails leaves its entries ``None`` and its
    reason in ``_KERNEL_ERRORS``."""
    if _KERNELS:
        return _KERNELS
    fla_names = ("chunk_delta_rule", "fused_recurrent_delta_rule", "chunk_gated_delta_rule",
                 "fused_recurrent_gated_delta_rule", "chunk_simple_gla")
    found = dict.fromkeys(fla_names + ("mamba_chunk_scan_combined",))
    try:
        with warnings.catch_warnings():  # fla warns at import where Triton has no GPU driver (the interpreter)
            warnings.filterwarnings("ignore", message="Triton is not supported on current platform")
            from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
            from fla.ops.simple_gla import chunk_simple_gla
        found.update(chunk_delta_rule=chunk_delta_rule, fused_recurrent_delta_rule=fused_recurrent_delta_rule,
                     chunk_gated_delta_rule=chunk_gated_delta_rule,
                     fused_recurrent_gated_delta_rule=fused_recurrent_gated_delta_rule,
                     chunk_simple_gla=chunk_simple_gla)
    except Exception as e:  # ImportError, or an error raised by fla / triton at import
        _KERNEL_ERRORS["flash-linear-attention"] = f"{type(e).__name__}: {e}"
    try:
        found["mamba_chunk_scan_combined"] = _import_mamba_ssd()
    except Exception as e:
        _KERNEL_ERRORS["mamba-ssm"] = f"{type(e).__name__}: {e}"
    _KERNELS.update(found, interpret=_interpreting() and _triton_interpreted())
    return _KERNELS


def kernels_available(ahn_type: str) -> bool:
    """Whether the optional CUDA kernels for this memory type are importable (imports them on the first call)."""
    kernels = _load_kernels()
    if canonical_ahn_type(ahn_type) == "mamba2":
        return kernels["mamba_chunk_scan_combined"] is not None or kernels["chunk_simple_gla"] is not None
    return kernels["chunk_gated_delta_rule"] is not None and kernels["chunk_delta_rule"] is not None


def _use_kernels(ahn_type: str, x: torch.Tensor) -> bool:
    """Whether the memory of ``ahn_type`` runs the kernels on ``x``: CUDA tensors with the kernels installed; under
    backend ``"kernels"`` also CPU tensors when Triton runs its interpreter (``TRITON_INTERPRET=1`` set before Triton
    is first imported, see ``_triton_interpreted``), which executes the very same kernels and dispatch on the CPU --
    slowly, for testing the CUDA branch without a GPU (with the shims of ``tests/triton_interpreter.py``). Backend
    ``"auto"`` never takes the interpreter; ``"kernels"`` raises where the kernels cannot run."""
    backend = _BACKEND["value"]
    if backend == "torch":
        return False
    if x.is_cuda:
        ok = kernels_available(ahn_type)
    elif backend == "kernels" and x.device.type == "cpu" and _interpreting():
        ok = kernels_available(ahn_type) and _KERNELS["interpret"]
    else:
        ok = False
    if backend == "kernels" and not ok:
        raise RuntimeError(_kernel_error(ahn_type, x))
    return ok


def _kernel_error(ahn_type: str, x: torch.Tensor) -> str:
    name = AHN_TYPES[canonical_ahn_type(ahn_type)]
    fallback = "use set_memory_backend('auto') to fall back to the torch kernels"
    if not x.is_cuda and not (x.device.type == "cpu" and _interpreting()):
        return (f"memory backend 'kernels': the {name} kernels need CUDA tensors, got tensors on {x.device} (to run "
                f"them on CPU tensors through Triton's interpreter, for testing, set TRITON_INTERPRET=1 in the "
                f"environment of a fresh process); {fallback}.")
    if not kernels_available(ahn_type):
        pkgs = ["mamba-ssm", "flash-linear-attention"] if canonical_ahn_type(ahn_type) == "mamba2" else [
            "flash-linear-attention"]
        why = "; ".join(f"{p}: {_KERNEL_ERRORS.get(p, 'not importable')}" for p in pkgs)
        need = " or ".join(pkgs)
        return (f"memory backend 'kernels': the {name} kernels need {need}, which could not be imported ({why}); "
                f"install modeling-ahn[cuda] or {fallback}.")
    return (f"memory backend 'kernels': the kernels were imported without Triton's interpreter, so they cannot run "
            f"on CPU tensors; set TRITON_INTERPRET=1 before Triton is first imported (torch._dynamo and transformers "
            f"import it: set it in the environment of a fresh process), or {fallback}.")


def _fp32(x: torch.Tensor):
    """The torch recurrences run in fp32 even under ``torch.autocast`` (bf16 training): autocast would cast every
    chunk product to bf16 (a copy per operand) and hand the state recurrence back in bf16. (No context at all when
    autocast is off: entering one costs more than a decoding step's arithmetic on small states.)"""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def _repeat_heads(q, *xs):
    """``[B, T, h, D]`` key/value heads repeated to the query's ``H`` (grouped-query attention)."""
    H = q.shape[2]
    return [x if x.shape[2] == H else x.repeat_interleave(H // x.shape[2], dim=2) for x in xs]


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's bf16 path: AVX512-BF16 or AMX). Elsewhere PyTorch emulates
    bf16 products: on an AVX2-only CPU a bf16 product ran at 11 GFLOP/s against 68 in float32 (2026-12-01, torch
    2.13), and the memory's bf16 chunk kernel took 4-5x its float32 time."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# Asked once, at import: the check returns a Python bool from a torch op, which torch.compile cannot trace (a bf16
# decoding step compiled with fullgraph=True failed on it).
CPU_MULTIPLIES_BF16 = cpu_multiplies_bf16()


def product_dtype(x: torch.Tensor):
    """The operand dtype of the torch chunk kernel's products for a model computing in ``x.dtype``: bf16 for bf16
    (float32 accumulation, as fla's kernels on GPU) where the device multiplies bf16 natively, else ``None``
    (float32: on a CPU that emulates bf16, float32 products are the faster ones, and exact to float32)."""
    if x.dtype != torch.bfloat16 or (x.device.type == "cpu" and not CPU_MULTIPLIES_BF16):
        return None
    return torch.bfloat16


def delta_rule(q, k, v, g, beta, initial_state, scale, ahn_type, matmul_dtype=None):
    """(Gated) delta rule over ``[B,T,H,D]`` inputs (``k``/``v`` may have fewer, grouped heads); ``g is None`` for
    DeltaNet. ``matmul_dtype``: see ``torch_chunk_rule`` (the torch kernel only)."""
    if _use_kernels(ahn_type, q) or q.shape[1] == 1:
        k, v = _repeat_heads(q, k, v)
    if _use_kernels(ahn_type, q):
        dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        qq, kk, vv = q.to(dtype), k.to(dtype), v.to(dtype)
        state = None if initial_state is None else initial_state.float()
        # one token: the fused recurrent kernel; but fla's fused_recurrent_gated_delta_rule has no backward
        # (NotImplementedError), so a gated one-token call that needs a gradient takes the chunked kernel
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, g, beta, state))
        kind = "fused_recurrent" if q.shape[1] == 1 and not (grad and g is not None) else "chunk"
        if g is None:
            fn = _KERNELS[f"{kind}_delta_rule"]
            o, S = fn(qq, kk, vv, beta=beta.to(dtype), scale=scale, initial_state=state, output_final_state=True)
        else:
            fn = _KERNELS[f"{kind}_gated_delta_rule"]
            o, S = fn(
                qq, kk, vv, g=g.float(), beta=beta.to(dtype), scale=scale, initial_state=state, output_final_state=True
            )
        return o.float(), S.float()
    with _fp32(q):
        if q.shape[1] == 1:
            return torch_recurrent_rule(q, k, v, g, beta, initial_state, scale, delta=True)
        return torch_chunk_rule(q, k, v, g, beta, initial_state, scale, delta=True, matmul_dtype=matmul_dtype)


def ssd_rule(q, k, v, dt, A, initial_state, matmul_dtype=None):
    """Mamba2 / SSD: ``S = exp(dt*A) S + dt k v^T``, ``o = S^T q`` over ``[B,T,H,D]`` inputs (``k``/``v`` may have
    fewer, grouped heads; ``matmul_dtype``: see ``torch_chunk_rule``).

    On CUDA: mamba-ssm's SSD kernel if installed, else fla's ``chunk_simple_gla`` (the same recurrence with
    ``k * dt`` as key and ``dt * A`` as log-decay). Decoding steps use the torch recurrence (one step).
    """
    if _use_kernels("mamba2", q) or q.shape[1] == 1:
        k, v = _repeat_heads(q, k, v)
    if _use_kernels("mamba2", q) and q.shape[1] > 1:
        dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        if _KERNELS["mamba_chunk_scan_combined"] is None:
            state = None if initial_state is None else initial_state.float()
            o, S = _KERNELS["chunk_simple_gla"](
                q.to(dtype), (k.float() * dt.float()[..., None]).to(dtype), v.to(dtype), g=dt.float() * A.float(),
                scale=1.0, initial_state=state, output_final_state=True,
            )
            return o.float(), S.float()
        # mamba-ssm: x [B,T,H,P], dt [B,T,H], A [H], B/C [B,T,G,N] with G = H groups; state [B,H,P,N].
        state = None if initial_state is None else initial_state.float().transpose(-1, -2).contiguous()
        y, S = _KERNELS["mamba_chunk_scan_combined"](
            v.to(dtype),
            dt.float(),
            A.float(),
            k.to(dtype),
            q.to(dtype),
            chunk_size=256,
            initial_states=state,
            return_final_states=True,
        )
        return y.float(), S.float().transpose(-1, -2)
    with _fp32(q):
        g = dt.float() * A.float()
        if q.shape[1] == 1:
            return torch_recurrent_rule(q, k, v, g, dt, initial_state, 1.0, delta=False)
        return torch_chunk_rule(q, k, v, g, dt, initial_state, 1.0, delta=False, matmul_dtype=matmul_dtype)


# ----------------------------------------------------------------------------------------------
# Modules (official parameter names: model.layers.{i}.ahn.fn.<param>)
# ----------------------------------------------------------------------------------------------


class AhnRMSNorm(nn.Module):
    """RMSNorm holding only ``weight`` (the official ``o_norm.weight`` / ``norm.weight``)."""

    def __init__(self, size: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class PerHeadLinear(nn.Module):
    """``y[h] = x[h] @ weight[h]`` with ``weight`` of shape ``(H, D, D)`` (the official ``o_proj``)."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_heads, head_dim, head_dim))

    def forward(self, x, row_scale=None):
        """``x`` ``[..., H, D]``: one ``[H, N, D] x [H, D, D]`` product (as einsum would, without its overhead),
        returned as a ``[..., H, E]`` view of the head-major result. ``row_scale`` ``[H, D]``: ``x * row_scale``
        times the weight, applied to the weight's rows (``D x D`` work instead of ``N x D``)."""
        H, D, E = self.weight.shape
        w = self.weight if row_scale is None else self.weight * _as(row_scale, self.weight.dtype)[..., None]
        y = torch.bmm(_as(x, w.dtype).reshape(-1, H, D).transpose(0, 1), w)
        return y.transpose(0, 1).unflatten(0, x.shape[:-2])


def unrotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The inverse of RoPE's ``x * cos + rotate_half(x) * sin`` (rotate-half layout; exact also with an attention
    scaling folded into ``cos``/``sin``, whose squares then sum to its square)."""
    D = x.shape[-1]
    rot = torch.cat([x[..., D // 2:], -x[..., : D // 2]], dim=-1)  # rotate_half(x) rotated by -angle
    return (x * cos + rot * sin) / (cos * cos + sin * sin)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE: ``x * cos + rotate_half(x) * sin``."""
    D = x.shape[-1]
    return x * cos + torch.cat([-x[..., D // 2:], x[..., : D // 2]], dim=-1) * sin


class AhnMemory(nn.Module):
    """Common interface of the three memories.

    ``write_gates(x)``: per-token write gates from the token's pre-normed input, ``[B, T, G, H]`` float32.
    They are cached with the window, so an evicted token needs no hidden state.
    ``log_decay(gates)``: the per-token log-decay ``[B, T, H]`` the write applies to the state (``None``: no decay).
    ``forward(query, keys, values, gates, valid, x_read, state)`` writes token ``i`` of
    ``keys/values/gates`` (where ``valid``) and then reads the state with ``query`` ``i``.
    ``read_query(query, rotation)``: the query the memory reads with; the attention's own query unless
    ``use_q_proj`` (the official option): then a learned per-head projection ``q_proj.weight`` ``(H, D, D)`` of the
    query *before* RoPE, rotated again (the release's order: project, then RoPE). Initialised to the identity, so a
    fresh ``q_proj`` reads exactly as no ``q_proj``.
    ``write_keys(keys, rotation)``: the keys the memory writes; the cached keys unless one of two options beyond the
    official format is on (both off by default and recorded in the config; the release's code cannot run them):
    ``use_k_proj``, a learned per-head projection ``k_proj.weight`` ``(H, D, D)`` of the key before RoPE (the write
    side of ``q_proj``, identity-initialised), and ``position_free``, a memory that writes and reads the keys and
    queries *before* RoPE (a linear memory cannot undo the rotation between a query and a key thousands of
    positions apart, which softmax attention averages away).
    ``write_values(values)``: the values the memory writes; the cached values unless ``value_centring`` (beyond the
    official format) is on: then ``values - v_mean``, a learned per-head mean ``v_mean`` ``(H, D)`` (zero-initialised;
    ``training/centring.py`` sets it to the layer's mean value before training). A memory whose values share a mean
    stores it with every write, and after the read-out's RMSNorm that shared direction, the same for every
    document, can dominate what it returns; centred values leave the state to what differs between tokens.
    """

    ahn_type = ""
    num_gates = 1

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, use_q_proj: bool = False,
                 use_k_proj: bool = False, position_free: bool = False, value_centring: bool = False):
        super().__init__()
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.q_proj = PerHeadLinear(num_heads, head_dim) if use_q_proj else None
        self.k_proj = PerHeadLinear(num_heads, head_dim) if use_k_proj else None
        self.position_free = bool(position_free)
        self.v_mean = nn.Parameter(torch.zeros(num_heads, head_dim)) if value_centring else None

    def _reset_q_proj(self):
        for proj in (self.q_proj, self.k_proj):
            if proj is not None:
                proj.weight.copy_(torch.eye(self.head_dim).expand_as(proj.weight))
        if self.v_mean is not None:
            self.v_mean.zero_()

    @property
    def needs_key_rotation(self) -> bool:
        """Whether ``write_keys`` needs the keys' rotary ``(cos, sin)`` (``use_k_proj`` or ``position_free``)."""
        return self.k_proj is not None or self.position_free

    def _unrotated(self, x: torch.Tensor, rotation, what: str) -> tuple[torch.Tensor, tuple]:
        if rotation is None:
            raise ValueError(f"this memory ({what}) needs the rotary (cos, sin) of its positions: the layer got none")
        cos, sin = (r.to(torch.float32)[:, None] for r in rotation)  # [B, 1, T, D]
        return unrotate(x.float(), cos, sin), (cos, sin)

    def read_query(self, query: torch.Tensor, rotation=None) -> torch.Tensor:
        """``query`` ``[B, H, T, D]`` (after RoPE) -> the memory's read query; ``rotation``: RoPE's ``(cos, sin)``
        ``[B, T, D]`` of the query positions (the base's ``position_embeddings``; needed with ``q_proj`` or
        ``position_free``)."""
        if self.q_proj is None and not self.position_free:
            return query
        raw, (cos, sin) = self._unrotated(query, rotation, "use_q_proj" if self.q_proj is not None else "position_free")
        if self.q_proj is not None:
            raw = self.q_proj(raw.transpose(1, 2)).transpose(1, 2)
        return (raw if self.position_free else rotate(raw, cos, sin)).to(query.dtype)

    def write_keys(self, keys: torch.Tensor, rotation=None) -> torch.Tensor:
        """``keys`` ``[B, Hkv, T, D]`` (as cached, after RoPE) -> the keys the memory writes: ``keys`` itself, or with
        ``use_k_proj`` / ``position_free`` ``[B, H, T, D]`` from the keys before RoPE (``rotation``: RoPE's
        ``(cos, sin)`` ``[B, T, D]`` of the keys' positions)."""
        if not self.needs_key_rotation:
            return keys
        raw, (cos, sin) = self._unrotated(keys, rotation, "use_k_proj" if self.k_proj is not None else "position_free")
        if self.k_proj is not None:
            rep = self.num_heads // raw.shape[1]
            raw = self.k_proj(raw.repeat_interleave(rep, dim=1).transpose(1, 2)).transpose(1, 2)
        return (raw if self.position_free else rotate(raw, cos, sin)).to(keys.dtype)

    def write_values(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` ``[B, Hkv, T, D]`` (as cached) -> the values the memory writes: ``values`` itself, or with
        ``value_centring`` ``values - v_mean`` ``[B, H, T, D]`` in float32 (the grouped heads repeated to the memory's
        ``H``, each query head centred by its own mean)."""
        if self.v_mean is None:
            return values
        rep = self.num_heads // values.shape[1]
        return _as(values, torch.float32).repeat_interleave(rep, dim=1) - _as(self.v_mean, torch.float32)[:, None]

    @property
    def official_name(self) -> str:
        return AHN_TYPES[self.ahn_type]

    def log_decay(self, gates):
        return None

    @staticmethod
    def _proj(linear, x):
        return _as(linear(_as(x, linear.weight.dtype)), torch.float32)

    def step(self, query, key, value, gates, x_read, state=None):
        """One decoding step: write one evicted token (``key``/``value`` ``[B, Hkv, D]``, ``gates`` ``[B, G, H]``;
        it enters memory) and read the state with ``query`` ``[B, H, 1, D]``. Equals ``forward`` on that token
        with ``valid`` true, in fewer operations (the state and query reads share one product)."""
        if _use_kernels(self.ahn_type, query):  # the CUDA kernels' own one-token path
            valid = torch.ones(query.shape[0], 1, dtype=torch.bool, device=query.device)
            return self(query, key[:, :, None], value[:, :, None], gates[:, None], valid, x_read, state)
        B, H, _, D = query.shape
        if self.v_mean is not None:  # values centred per query head by ``write_values``
            value = self.write_values(value[:, :, None])[:, :, 0]
            key = key.repeat_interleave(H // key.shape[1], dim=1)
        Hkv = key.shape[1]
        if value.shape[1] < Hkv:  # keys projected per query head by ``write_keys``
            value = value.repeat_interleave(Hkv // value.shape[1], dim=1)
        # grouped by KV head (query head h reads KV head h // rep): keys/values broadcast, nothing is repeated
        f32 = torch.float32
        q = l2norm(_as(query, f32).view(B, Hkv, H // Hkv, D))
        k, v = l2norm(_as(key, f32))[:, :, None], _as(value, f32)[:, :, None]
        gates = _as(gates, f32)
        decay = self.log_decay(gates)
        g = None if decay is None else decay.view(B, Hkv, H // Hkv)
        beta = gates[:, 0].view(B, Hkv, H // Hkv)  # beta (GDN, DN) or dt (Mamba2)
        S = None if state is None else state.view(B, Hkv, H // Hkv, D, state.shape[-1])
        with _fp32(q):
            o, S = self._step(q, k, v, g, beta, S)
        return _as(self._readout(o.reshape(B, 1, H, -1), x_read), query.dtype), S.reshape(B, H, D, -1)

    def _prepare(self, query, keys, values):
        """Query ``[B,H,T,D]`` and GQA keys/values ``[B,Hkv,T,D]`` -> the kernels' ``[B,T,·,D]`` views, the query and the
        keys l2-normalised in float32 (the keys before any repetition: the kernels share grouped heads)."""
        values = self.write_values(values)
        return l2norm(query).transpose(1, 2), l2norm(keys).transpose(1, 2), values.transpose(1, 2)


class _DeltaRuleMemory(AhnMemory):
    """GDN and DN: delta-rule write, ``o = M q / sqrt(D)``, ``RMSNorm_D(o) * silu(g_proj(x_t))``, per-head o_proj."""

    def _init_readout(self, hidden_size, num_heads, head_dim):
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.g_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.o_norm = AhnRMSNorm(head_dim)
        self.o_proj = PerHeadLinear(num_heads, head_dim)

    def forward(self, query, keys, values, gates, valid, x_read, state=None):
        q, k, v = self._prepare(query, keys, values)
        gates = gates * valid.to(torch.float32).view(*valid.shape, 1, 1)  # an invalid token: beta = g = 0
        beta, g = gates[..., 0, :], self.log_decay(gates)
        o, state = delta_rule(q, k, v, g, beta, state, 1.0 / math.sqrt(self.head_dim), self.ahn_type,
                              product_dtype(query))
        return _as(self._readout(o, x_read), query.dtype), state

    def _step(self, q, k, v, g, beta, state):
        return torch_step_rule(q, k, v, g, beta, state, 1.0 / math.sqrt(self.head_dim))

    def _readout(self, o, x_read):  # o [B, T, H, D] fp32
        """``o_proj(o_norm(o) * silu(g_proj(x)))``, with the norm's and the gate's per-row factors in one product and
        the norm's weight folded into ``o_proj``'s rows (one pass over ``o``)."""
        gate = F.silu(self._proj(self.g_proj, x_read))[..., None]  # one scalar per head
        rows = rms_factor(o, self.o_norm.eps) * gate
        return self.o_proj(o * rows, _as(self.o_norm.weight, torch.float32).expand(self.num_heads, -1))


class GatedDeltaNet(_DeltaRuleMemory):
    """AHN-GDN (spec 2.1): gated delta rule with per-head decay and a gated RMSNorm read-out."""

    ahn_type = "gdn"
    num_gates = 2  # beta, log-decay

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, use_q_proj: bool = False, **options):
        super().__init__(hidden_size, num_heads, head_dim, use_q_proj, **options)
        self._init_readout(hidden_size, num_heads, head_dim)
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(num_heads))
        # stored by the release (kept in the checkpoint under its official name), unused: never trained
        self.D = nn.Parameter(torch.ones(num_heads), requires_grad=False)
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        H = self.num_heads
        for lin in (self.b_proj, self.a_proj, self.g_proj):
            lin.reset_parameters()
        self.A_log.copy_(torch.empty(H).uniform_(0, 16).log())
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias.copy_(inverse_softplus(dt))
        self.D.fill_(1.0)
        self.o_norm.weight.fill_(1.0)
        self.o_proj.weight.zero_()
        self._reset_q_proj()

    def write_gates(self, x):
        H = self.num_heads
        weight, neg_a = derived_from_parameters(self, (self.b_proj.weight, self.a_proj.weight, self.A_log),
                                                self._gate_parameters)
        ba = _as(F.linear(_as(x, weight.dtype), weight), torch.float32)
        beta = torch.sigmoid(ba[..., :H])  # b_proj and a_proj in one product
        g = neg_a * F.softplus(ba[..., H:] + _as(self.dt_bias, torch.float32))
        return torch.stack([beta, g], dim=-2)

    def _gate_parameters(self):
        """``(b_proj's and a_proj's weights stacked, -exp(A_log) float32)``."""
        return torch.cat([self.b_proj.weight, self.a_proj.weight]), -_as(self.A_log, torch.float32).exp()

    def log_decay(self, gates):
        return gates[..., 1, :]


class DeltaNet(_DeltaRuleMemory):
    """AHN-DN (spec 2.2): the delta rule without decay."""

    ahn_type = "dn"
    num_gates = 1  # beta

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, use_q_proj: bool = False, **options):
        super().__init__(hidden_size, num_heads, head_dim, use_q_proj, **options)
        self._init_readout(hidden_size, num_heads, head_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        self.b_proj.reset_parameters()
        self.g_proj.reset_parameters()
        self.o_norm.weight.fill_(1.0)
        self.o_proj.weight.zero_()
        self._reset_q_proj()

    def write_gates(self, x):
        return torch.sigmoid(self._proj(self.b_proj, x))[..., None, :]


class Mamba2(AhnMemory):
    """AHN-Mamba2 (spec 2.3): SSD recurrence, gate before a norm over all heads."""

    ahn_type = "mamba2"
    num_gates = 1  # dt

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, use_q_proj: bool = False, **options):
        super().__init__(hidden_size, num_heads, head_dim, use_q_proj, **options)
        H = num_heads
        self.dt_proj = nn.Linear(hidden_size, H, bias=True)
        self.g_proj = nn.Linear(hidden_size, H, bias=True)
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.norm = AhnRMSNorm(H * head_dim)
        self.o_proj = PerHeadLinear(H, head_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        self.dt_proj.reset_parameters()
        self.g_proj.reset_parameters()
        self.A_log.copy_(torch.arange(1, self.num_heads + 1, dtype=torch.float32).log())
        self.dt_bias.fill_(1.0)
        self.norm.weight.fill_(1.0)
        self.o_proj.weight.zero_()
        self._reset_q_proj()

    def write_gates(self, x):
        return F.softplus(self._proj(self.dt_proj, x) + self.dt_bias.float())[..., None, :]

    def log_decay(self, gates):  # the SSD step decays by exp(dt * A), A = -exp(A_log)
        return gates[..., 0, :] * -self.A_log.float().exp()

    def forward(self, query, keys, values, gates, valid, x_read, state=None):
        q, k, v = self._prepare(query, keys, values)
        dt = gates[..., 0, :] * valid.to(torch.float32)[..., None]
        o, state = ssd_rule(q, k, v, dt, -self.A_log.float().exp(), state, product_dtype(query))
        return _as(self._readout(o, x_read), query.dtype), state

    def _step(self, q, k, v, g, beta, state):
        return torch_step_rule(q, k, v, g, beta, state, 1.0, delta=False)

    def _readout(self, o, x_read):  # o [B, T, H, D] fp32
        z = F.silu(self._proj(self.g_proj, x_read))[..., None]
        y = self.norm((o * z).flatten(-2)).unflatten(-1, (self.num_heads, self.head_dim))
        return self.o_proj(y)


MEMORY_CLASSES = {"gdn": GatedDeltaNet, "dn": DeltaNet, "mamba2": Mamba2}


# The memory options beyond the official checkpoint format (off by default; see ``AhnMemory``).
UNOFFICIAL_OPTIONS = ("use_k_proj", "position_free", "value_centring")


def memory_options(config) -> dict:
    """The memory's options recorded in ``config`` (an ``AhnConfig`` or a PEFT config): ``use_q_proj`` (official)
    and ``UNOFFICIAL_OPTIONS``. The one place that reads them, for every entry point that builds memories."""
    return {name: bool(getattr(config, name, False)) for name in ("use_q_proj", *UNOFFICIAL_OPTIONS)}


def unofficial_options(config) -> list[str]:
    """The options of ``config`` beyond the official checkpoint format that are on (the memory's, and the recall
    slots' retention classifier ``recall_head``, whose weights ``model.layers.{i}.ahn.recall.*`` the official code
    does not know)."""
    return [name for name in (*UNOFFICIAL_OPTIONS, "recall_head") if getattr(config, name, False)]


def build_memory(ahn_type: str, hidden_size: int, num_heads: int, head_dim: int, use_q_proj: bool = False,
                 use_k_proj: bool = False, position_free: bool = False, value_centring: bool = False) -> AhnMemory:
    return MEMORY_CLASSES[canonical_ahn_type(ahn_type)](hidden_size, num_heads, head_dim, use_q_proj,
                                                        use_k_proj=use_k_proj, position_free=position_free,
                                                        value_centring=value_centring)


class AhnModule(nn.Module):
    """The per-layer container, ``model.layers.{i}.ahn``, holding the memory as ``fn`` and, beyond the official
    format, the recall slots' retention classifier as ``recall`` (a linear probe of the layer's pre-normed input:
    ``model.layers.{i}.ahn.recall.weight`` ``(1, hidden)``, ``.bias`` ``(1,)``; present when ``recall_head``)."""

    def __init__(self, fn: AhnMemory, recall_hidden_size: int | None = None):
        super().__init__()
        self.fn = fn
        if recall_hidden_size:
            self.add_recall(recall_hidden_size)

    def add_recall(self, hidden_size: int) -> nn.Linear:
        """A zero retention classifier ``recall`` (to be trained or loaded), on the memory's device and dtype."""
        ref = next(self.fn.parameters())
        self.recall = nn.Linear(hidden_size, 1, device=ref.device, dtype=ref.dtype)
        nn.init.zeros_(self.recall.weight)
        nn.init.zeros_(self.recall.bias)
        return self.recall

    @property
    def recall_head(self):
        """The retention classifier, or ``None``."""
        return self._modules.get("recall")
