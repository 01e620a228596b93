"""Slow, independent references written straight from AHN_SPEC section 2: plain per-token loops,
float64, one head at a time, state ``M`` as the spec writes it (``M k``, shape ``[D_v, D_k]``).
Nothing here imports the package's kernels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _l2(x):
    return x / torch.sqrt((x * x).sum() + 1e-6)


def _rms(x, w, eps=1e-5):
    return x / torch.sqrt((x * x).mean() + eps) * w


def naive_memory(fn, ahn_type, q, k, v, x, valid_write):
    """Per-token memory of one sequence, spec 2.1-2.3.

    q, k, v: ``[T, H, D]`` (k/v already GQA-expanded); x: ``[T, hidden]`` the pre-normed inputs.
    Step ``t`` writes token ``t`` of (k, v, x) if ``valid_write[t]``, then reads with ``q[t]`` and the
    output gate from ``x_read[t]``; here the write and the read come from separate arrays, so the
    caller passes the evicted token's data aligned to the query. Returns ``[T, H, D]`` float64.
    ``x`` is a pair ``(x_write, x_read)``.
    """
    x_write, x_read = x
    T, H, D = q.shape
    p = {n: t.detach().double() for n, t in fn.named_parameters()}
    q, k, v = q.double(), k.double(), v.double()
    x_write, x_read = x_write.double(), x_read.double()
    M = [torch.zeros(D, D, dtype=torch.float64) for _ in range(H)]
    out = torch.zeros(T, H, D, dtype=torch.float64)
    for t in range(T):
        ys = []
        for h in range(H):
            if valid_write[t]:
                kh, vh = _l2(k[t, h]), v[t, h]
                if ahn_type in ("gdn", "dn"):
                    beta = torch.sigmoid(p["b_proj.weight"][h] @ x_write[t])
                    if ahn_type == "gdn":
                        a = p["a_proj.weight"][h] @ x_write[t] + p["dt_bias"][h]
                        alpha = -torch.exp(p["A_log"][h]) * F.softplus(a)
                        M[h] = torch.exp(alpha) * M[h]
                    M[h] = M[h] + beta * torch.outer(vh - M[h] @ kh, kh)
                else:
                    dt = F.softplus(p["dt_proj.weight"][h] @ x_write[t] + p["dt_proj.bias"][h] + p["dt_bias"][h])
                    A = -torch.exp(p["A_log"][h])
                    M[h] = torch.exp(dt * A) * M[h] + dt * torch.outer(vh, kh)
            qh = _l2(q[t, h])
            if ahn_type in ("gdn", "dn"):
                o = M[h] @ qh / math.sqrt(D)
                g = p["g_proj.weight"][h] @ x_read[t]
                y = _rms(o, p["o_norm.weight"]) * F.silu(g)
                out[t, h] = y @ p["o_proj.weight"][h]
            else:
                z = p["g_proj.weight"][h] @ x_read[t] + p["g_proj.bias"][h]
                ys.append(M[h] @ qh * F.silu(z))
        if ahn_type == "mamba2":
            y = _rms(torch.cat(ys), p["norm.weight"]).view(H, D)
            for h in range(H):
                out[t, h] = y[h] @ p["o_proj.weight"][h]
    return out


def naive_slot_sets(raw, window, sinks, slots, before, after):
    """The recall slots of every query ``t`` of one unpadded sequence, by their definition: among the tokens that have
    left the window (``sinks <= j <= t - window``), the ``slots`` best by span score ``max(raw[j - after .. j +
    before])`` (sinks scoring ``-inf``), ties to the earlier token. ``raw``: ``[T]`` float. Returns a list of sets."""
    T = len(raw)
    r = [float("-inf") if j < sinks else float(raw[j]) for j in range(T)]
    span = [max(r[max(0, j - after): j + before + 1]) for j in range(T)]
    sets = []
    for t in range(T):
        evicted = [j for j in range(sinks, t - window + 1)]
        ranked = sorted(evicted, key=lambda j: (-span[j], j))
        sets.append(set(ranked[:slots]))
    return sets


def naive_novelty(keys, values, inv_freq):
    """The novelty score of every token of one unpadded sequence, by its definition, token by token in float64: a
    delta-rule memory (beta = 1, no decay) of the tokens before it, over keys before RoPE (``keys`` ``[Hkv, T, D]``
    after RoPE at positions ``0..T-1``, un-rotated here) and values, both L2-normalised, predicts each token's value;
    the score is the norm of the miss averaged over the KV heads. Returns ``[T]`` float64 (not rounded)."""
    Hkv, T, D = keys.shape
    scores = torch.zeros(T, dtype=torch.float64)
    for h in range(Hkv):
        state = torch.zeros(D, values.shape[-1], dtype=torch.float64)
        for t in range(T):
            k = _rope(keys[h, t].double(), -t, inv_freq)
            k = k / k.norm()
            v = values[h, t].double() / values[h, t].double().norm()
            miss = v - state.T @ k
            scores[t] += miss.norm() / Hkv
            state = state + torch.outer(k, miss)
    return scores


def _rope(vec, angle, inv_freq):
    """``R(angle) vec`` for one head vector (rotate-half layout), float64."""
    a = angle * inv_freq.double()
    cos, sin = torch.cat([a.cos(), a.cos()]), torch.cat([a.sin(), a.sin()])
    half = vec.shape[-1] // 2
    return vec * cos + torch.cat([-vec[half:], vec[:half]]) * sin


def naive_ahn_layer(fn, ahn_type, q, k, v, x, window, sinks, scaling, slot_sets=None, slot_distance=None,
                    inv_freq=None):
    """One AHN layer for one unpadded sequence, token by token (spec section 2).

    q: ``[H, T, D]``; k, v: ``[Hkv, T, D]``; x: ``[T, hidden]``. Returns the pre-``o_proj`` output
    ``[T, H, D]`` float64 as ``(attention, memory)``: softmax attention over sinks + window (+ the recall slots of
    ``slot_sets[t]``, see ``naive_slot_sets``, each seen ``slot_distance`` tokens before the query: its key rotated by
    ``t - slot_distance - j`` with the rotary ``inv_freq``), and the memory read-out for the memory holding tokens
    ``S .. t-W``.
    """
    H, T, D = q.shape
    rep = H // k.shape[0]
    k = k.double().repeat_interleave(rep, 0)
    v = v.double().repeat_interleave(rep, 0)
    qd = q.double()
    attn = torch.zeros(T, H, D, dtype=torch.float64)
    for t in range(T):
        keys = [j for j in range(t + 1) if t - j < window or j < sinks or (slot_sets and j in slot_sets[t])]
        moved = {j for j in (slot_sets[t] if slot_sets else ()) if slot_distance and not (t - j < window or j < sinks)}
        for h in range(H):
            s = torch.stack([qd[h, t] @ (_rope(k[h, j], t - slot_distance - j, inv_freq) if j in moved else k[h, j])
                             for j in keys]) * scaling
            w = torch.softmax(s, 0)
            attn[t, h] = sum(w[i] * v[h, j] for i, j in enumerate(keys))
    # memory: query t writes token e = t - W (if e >= S), then reads
    e = torch.arange(T) - window
    valid = e >= sinks
    idx = e.clamp(min=0)
    mem = naive_memory(
        fn, ahn_type, q.transpose(0, 1), k[:, idx].transpose(0, 1), v[:, idx].transpose(0, 1), (x[idx], x), valid
    )
    return attn, mem


class LayerRecorder:
    """Record (query, key, value, hidden, output) of every call of the 'ahn' attention function."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        from modeling_ahn.attention_ahn import get_layer_spec

        self._mapping = ALL_ATTENTION_FUNCTIONS
        self._orig = ALL_ATTENTION_FUNCTIONS["ahn"]

        def wrapped(module, query, key, value, attention_mask, **kwargs):
            hidden = get_layer_spec(module).inputs.hidden
            out, w = self._orig(module, query, key, value, attention_mask, **kwargs)
            self.calls.append(dict(module=module, query=query, key=key, value=value, hidden=hidden, out=out,
                                   scaling=kwargs.get("scaling")))
            return out, w

        ALL_ATTENTION_FUNCTIONS.register("ahn", wrapped)
        return self

    def __exit__(self, *exc):
        self._mapping.register("ahn", self._orig)
