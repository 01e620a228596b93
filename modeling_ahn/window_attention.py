# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Sinks + sliding-window softmax attention: the kernels behind the ``"ahn"`` attention's paths.

Every function here computes exact softmax attention of the base (its scaling, GQA, SDPA or eager) over the
sinks and the window, for one way of laying out the keys:

* ``inner_attention``: one call under an explicit boolean mask (the MASKED path and the steps);
* ``blocked_window_attention``: query blocks of ``W // 2``, each over the keys its window reaches (BLOCKED);
* ``banded_window_attention``: a steady cached chunk, its query blocks folded into the batch under one band
  mask (BANDED_PREFILL); on CPU ``strided_band_attention``: the same blocks reading their keys in place (a strided
  view of the cache), grouped heads folded into the rows, the sinks merged by log-sum-exp;
* ``fresh_window_attention``: a chunk that starts the sequence, on CPU: a causal head, then the strided band
  (FRESH_PREFILL);
* ``full_attention``: a layer kept at full attention (FULL);
* sink clamping beyond the base's trained context ``P``: ``window_attention`` rotates the queries back against the
  sinks (``sink_merged_attention`` for SDPA prefill, ``sink_clamped``'s doubled head otherwise).

The masks of one forward are the same in every layer: ``LastValueMemo`` keeps the last one built (one memo
mechanism for the block plans, the merged-sink masks, the band masks and the decoding step's sink rotation).
Hub remote-code payload: flat, sibling imports only.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

# Whole-sequence attention (training, one-shot prefill) and long cached chunks run in query blocks of
# max(W // 2, BLOCK_MIN) tokens, each over the sinks and the b + W - 1 keys its window can reach, when that is cheaper
# than all pairs. Blocks of W // 2 rather than W: 1.5 W keys per query instead of 2 W (measured per 2048-token chunk
# beyond the base's context, W = 1024: 154 vs 184 ms per layer; W = 512: 124 vs 132 ms); smaller blocks lose
# more to per-block work than they save.
BLOCK_MIN = 128


class LastValueMemo(threading.local):
    """The last result of a function of (a hashable key, small tensors), reused while its inputs are equal: the
    attention masks of one forward are the same in every layer, so they are built once per forward, not once per
    layer. Tensors compare by value (the memo keeps a clone: a caller may change its own tensor later)."""

    def __init__(self):
        self.key, self.tensors, self.value = None, (), None

    def get(self, key, tensors):
        if key == self.key and len(tensors) == len(self.tensors) and all(
                map(_same_tensor, tensors, self.tensors)):
            return self.value
        return None

    def put(self, key, tensors, value):
        self.key, self.tensors, self.value = key, tuple(None if t is None else t.clone() for t in tensors), value
        return value


def _same_tensor(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.device == b.device and torch.equal(a, b)


def query_block(W: int) -> int:
    return max(W // 2, BLOCK_MIN)


def eager_attention(module, query, key, value, mask, scaling, dropout):
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def inner_attention(spec, module, query, key, value, mask, scaling, dropout):
    """Softmax attention of the base with an explicit boolean mask ``[B, 1, q, kv]`` (``None``: every key)."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if spec.inner == "eager":
        return eager_attention(module, query, key, value, mask, scaling, dropout)
    if query.shape[2] == 1 and key.shape[1] < query.shape[1] and (mask is None or mask.shape[-2] == 1):
        return single_query_attention(query, key, value, mask, scaling, dropout), None
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling)


def single_query_attention(query, key, value, mask, scaling, dropout=0.0):
    """SDPA for one query per row (a decoding step) with grouped heads: the ``H / Hkv`` query heads of each KV
    head become rows of that head (as transformers' ``pack_gqa``), so that the keys are read once per KV head — with
    no mask, transformers' own call would take SDPA's ``enable_gqa`` instead, which on CPU costs ~6x this in bf16
    (measured: 14.9 ms against 2.5 ms per step over 30 layers, SmolLM2's 9/3 heads, 512 keys). ``mask``
    ``[B, 1, 1, kv]`` or ``None``. Returns ``[B, 1, H, D]``."""
    B, H, _, D = query.shape
    q = query.reshape(B, key.shape[1], H // key.shape[1], D)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(B, 1, H, value.shape[-1])


def full_attention(spec, module, query, key, value, mask2d, scaling, dropout, sliding_window=None):
    """A layer kept at full attention: causal (and the base's own window, if any) with padding."""
    B, _, q_len, _ = query.shape
    kv_len = key.shape[-2]
    if mask2d is not None and mask2d.shape[-1] < kv_len:
        raise ValueError(
            f"attention_mask covers {mask2d.shape[-1]} tokens but the layer sees {kv_len} (past + new): "
            "pass a mask over all tokens seen so far, as generate() does."
        )
    no_padding = mask2d is None or bool(mask2d[:, -kv_len:].all())
    if spec.inner == "sdpa" and no_padding and not sliding_window and q_len in (1, kv_len):
        # plain causal attention: let SDPA use its causal kernel (no explicit mask), as the base does
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      is_causal=q_len > 1)
    qidx = torch.arange(kv_len - q_len, kv_len, device=query.device)
    kidx = torch.arange(kv_len, device=query.device)
    rel = qidx[:, None] - kidx[None, :]
    vis = rel >= 0
    if sliding_window:
        vis = vis & (rel < sliding_window)
    vis = vis[None].expand(B, -1, -1)
    if mask2d is not None:
        vis = vis & mask2d[:, None, -kv_len:].to(device=query.device, dtype=torch.bool)
    vis = vis | (rel == 0)[None]  # a pad query attends to itself, so no row is empty (no NaN)
    return inner_attention(spec, module, query, key, value, vis[:, None], scaling, dropout)


def clamp_angles(spec, query, qpos, key_is_sink):
    """``[B, 1, q, D]`` angles by which queries rotate back against the sinks, or ``None`` if nothing is clamped."""
    inv_freq = spec.clamp_inv_freq(query.shape[-1])
    if inv_freq is None or qpos.numel() == 0 or int(qpos.max()) < spec.sink_position_limit \
            or not bool(key_is_sink.any()):
        return None
    return sink_angles(spec, qpos, inv_freq, query.device)


def rotated_back(query, ang):
    """``R(-ang) q``: the queries as the sinks see them (``[B, H, q, D]``, computed in float32)."""
    D = query.shape[-1]
    q = query.float()
    rot = torch.cat([q[..., D // 2:], -q[..., : D // 2]], dim=-1)  # rotate_half(q) rotated by -angle
    return q * ang.cos() + rot * ang.sin()


# Extra head channels of the merged attention: two carry the sinks' log-normaliser (hi + lo parts, so that it
# survives bf16), one returns the sinks' share; padded to a multiple of 8 for the fused SDPA kernels.
_MERGE_CHANNELS = 8


def sink_merged_attention(module, query, key, value, mask, scaling, dropout, ang, key_is_sink):
    """Sinks (clamped) + window attention in one fused SDPA call over the window keys plus one summary key.

    The sinks are scored apart, with the rotated-back queries: ``lse_s = logsumexp(s_sink)``,
    ``o_s = softmax(s_sink) v_sink`` (``S`` keys: cheap). The window keys go to SDPA together with a summary key
    whose score is ``lse_s`` for every query (an extra channel: query ``lse_s / scale``, key 1) and whose value is
    a one-hot channel, so SDPA returns ``o_w' = sum_w e^s_w v_w / Z`` and the summary's weight ``p = e^lse_s / Z``
    with ``Z = sum_w e^s_w + e^lse_s``; the result ``o_w' + p o_s`` is exactly softmax attention over all keys.
    The head grows by 8 channels (the doubled head of ``sink_clamped`` costs twice the attention). Key columns
    that are sinks in every row (the usual case: the first ``S``) are left out of the SDPA call.
    """
    B, H, q_len, D = query.shape
    Hkv = key.shape[1]
    scale = scaling if scaling is not None else D**-0.5
    plan = merge_masks(mask, key_is_sink, key.device)
    sink_cols, sink_vis, m2, win_cols = plan["sink_cols"], plan["sink_vis"], plan["m2"], plan["win_cols"]
    ks = repeat_kv(key[:, :, sink_cols], H // Hkv).float()  # [B, H, ns, D]
    vs = repeat_kv(value[:, :, sink_cols], H // Hkv).float()
    scores = (rotated_back(query, ang) @ ks.transpose(-1, -2)) * scale
    if sink_vis is not None:  # some sink hidden from some query (padding, or a sink not yet in the store)
        scores = scores.masked_fill(~sink_vis, float("-inf"))
    mx = scores.amax(-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).min)  # finite when nothing is visible
    e = (scores - mx).exp()
    z = e.sum(-1, keepdim=True)
    lse = (z.log() + mx)[..., 0]  # [B, H, q], -inf where no sink is visible
    o_s = (e @ vs) / z.clamp(min=torch.finfo(z.dtype).tiny)
    lse_q = (lse.clamp(min=-1e4) / scale)[..., None]
    E = _MERGE_CHANNELS
    hi = lse_q.to(query.dtype)
    q2 = query.new_zeros(B, H, q_len, D + E)
    q2[..., :D] = query
    q2[..., D: D + 1] = hi
    q2[..., D + 1: D + 2] = (lse_q - hi.float()).to(query.dtype)
    k_w = key if win_cols is None else key[:, :, win_cols:]
    v_w = value if win_cols is None else value[:, :, win_cols:]
    n_w = k_w.shape[2]
    k2 = key.new_zeros(B, Hkv, n_w + 1, D + E)
    k2[:, :, :n_w, :D] = k_w
    k2[:, :, n_w, D: D + 2] = 1  # the summary key
    v2 = value.new_zeros(B, Hkv, n_w + 1, D + E)
    v2[:, :, :n_w, :D] = v_w
    v2[:, :, n_w, D] = 1  # the summary's one-hot value
    out, _ = sdpa_attention_forward(module, q2, k2, v2, m2, dropout=dropout, scaling=scale)  # [B, q, H, D + E]
    p = out[..., D: D + 1].float()
    return (out[..., :D].float() + p * o_s.transpose(1, 2)).to(query.dtype)


_MERGE_MEMO = LastValueMemo()


def merge_masks(mask, key_is_sink, device):
    """What ``sink_merged_attention`` needs of the masks: the sink columns and their visibility
    ``[B, 1, q, ns]`` (``None``: all visible), the window mask plus the summary key, and ``win_cols``: the number of
    leading columns that are sinks in every row and no window key of any (left out of SDPA; ``None``: keep all).
    Reused while the same mask objects come back (every layer of one forward)."""
    hit = _MERGE_MEMO.get((str(device),), (mask, key_is_sink))
    if hit is not None:
        return hit
    sink_cols = key_is_sink.any(0).nonzero()[:, 0].to(device)  # sink columns of any row
    sink_vis = mask[..., sink_cols] & key_is_sink[:, None, None, sink_cols].to(mask.device)  # [B, 1, q, ns]
    win_vis = mask & ~key_is_sink[:, None, None, :].to(mask.device)
    ns = sink_cols.numel()
    prefix = ns > 0 and int(sink_cols[-1]) == ns - 1 and bool(key_is_sink[:, :ns].all())
    win_cols = ns if prefix else None
    if prefix:
        win_vis = win_vis[..., ns:]
    m2 = torch.cat([win_vis, win_vis.new_ones(*win_vis.shape[:-1], 1)], dim=-1)
    plan = dict(sink_cols=sink_cols, sink_vis=None if bool(sink_vis.all()) else sink_vis, m2=m2, win_cols=win_cols)
    return _MERGE_MEMO.put((str(device),), (mask, key_is_sink), plan)


def sink_clamped(query, key, value, ang, key_is_sink, scaling):
    """Queries beyond the base's trained context see the sinks as if they sat at its last position.

    ``ang``: the queries' clamp angles (``clamp_angles``); ``key_is_sink`` ``[B, kv]``. Returns
    ``(query, key, value, scaling)`` to attend with instead (the output's first ``D`` channels are the
    result). A query at position ``t > P`` is rotated back by
    ``t - P`` for the sink keys only, which one attention call does by doubling the head size:
    ``[q, R(P - t) q] . [k * not_sink, k * sink]``. Exact (RoPE rotations compose). Values are zero-padded
    to the same size, so that SDPA keeps its fused kernel (it falls back to the slow math path when the
    value head size differs from the query's). SDPA prefill uses the cheaper ``sink_merged_attention``; this
    form serves eager attention (and is the reference it is tested against).
    """
    D = query.shape[-1]
    if query.shape[2] == 1:
        # One query per row (decoding): rotating the query back by `back` against the sink keys equals rotating
        # the sink keys forward by it ((R(-b) q) . k = q . (R(b) k)); same head size, no second attention width.
        return query, sinks_rotated_forward(key, ang, key_is_sink), value, scaling if scaling is not None else D**-0.5
    q_sink = rotated_back(query, ang).to(query.dtype)
    is_sink = key_is_sink[:, None, :, None].to(device=key.device, dtype=key.dtype)
    key2 = torch.cat([key * (1 - is_sink), key * is_sink], dim=-1)
    value2 = F.pad(value, (0, D))
    return torch.cat([query, q_sink], dim=-1), key2, value2, scaling if scaling is not None else D**-0.5


def sink_angles(spec, qpos, inv_freq, device):
    """``[B, 1, q, D]`` RoPE angles by which the sinks are moved for queries at ``qpos`` (zero up to ``P - 1``)."""
    back = (qpos - (spec.sink_position_limit - 1)).clamp(min=0).to(torch.float32)  # [B, q]
    ang = back[:, None, :, None] * inv_freq.to(device=device, dtype=torch.float32)  # [B, 1, q, D/2]
    return torch.cat([ang, ang], dim=-1)


_SINK_ROTATIONS_MEMO = LastValueMemo()


def sink_rotations(spec, qpos, inv_freq, device):
    """``(cos, sin)`` of ``sink_angles``, built once for all layers of a forward (the same ``qpos`` in each)."""
    key = (spec.sink_position_limit, str(device))
    hit = _SINK_ROTATIONS_MEMO.get(key, (qpos, inv_freq))
    if hit is not None:
        return hit
    ang = sink_angles(spec, qpos, inv_freq, device)
    return _SINK_ROTATIONS_MEMO.put(key, (qpos, inv_freq), (ang.cos(), ang.sin()))


def rotated_forward(key, cos, sin):
    """``R(ang) k`` in float32, given ``cos``/``sin`` of the angles (RoPE's rotate-half layout)."""
    D = key.shape[-1]
    k = key.float()
    return k * cos + torch.cat([-k[..., D // 2:], k[..., : D // 2]], dim=-1) * sin  # rotate_half(k)


def sinks_rotated_forward(key, ang, key_is_sink):
    """``key`` with the sink keys rotated forward by ``ang`` (``[B, 1, 1, D]``, one query per row)."""
    k_fwd = rotated_forward(key, ang.cos(), ang.sin()).to(key.dtype)
    return torch.where(key_is_sink[:, None, :, None].to(key.device), k_fwd, key)


_ROTATION_MEMO = LastValueMemo()


def sink_rotation(spec, position: int, head_dim: int, device):
    """``(cos, sin)`` ``[D]`` of the angle by which the sinks are moved for a query at ``position`` beyond the base's
    context (``sink_angles`` of one position), or ``None`` where nothing is clamped; the same in every layer of a
    decoding step, so it is computed once per step."""
    inv_freq = spec.clamp_inv_freq(head_dim)
    limit = spec.sink_position_limit
    if inv_freq is None or position < limit:
        return None
    key = (position, limit, inv_freq.data_ptr(), str(device))
    hit = _ROTATION_MEMO.get(key, ())
    if hit is not None:
        return hit
    ang = sink_angles(spec, torch.tensor([[position]], device=device), inv_freq, device)[0, 0, 0]
    return _ROTATION_MEMO.put(key, (), (ang.cos(), ang.sin()))


def window_attention(spec, module, query, key, value, mask, scaling, dropout, qpos, key_is_sink):
    """``inner_attention`` over sinks + window keys, with the sinks clamped for queries beyond the base's
    trained context (see ``sink_clamped``)."""
    ang = clamp_angles(spec, query, qpos, key_is_sink)
    if ang is None:
        return inner_attention(spec, module, query, key, value, mask, scaling, dropout)
    if spec.inner == "sdpa" and query.shape[2] > 1 and not (dropout and module.training):  # (dropout: sinks too)
        return sink_merged_attention(module, query, key, value, mask, scaling, dropout, ang, key_is_sink), None
    clamped = sink_clamped(query, key, value, ang, key_is_sink, scaling)
    out, weights = inner_attention(spec, module, *clamped[:3], mask, clamped[3], dropout)
    return out[..., : value.shape[-1]], weights


def window_mask(qidx, kidx, rpos, W, S):
    """``[B, q, k]``: key ``j`` is visible to query ``i`` if real, causal, and in the window or a sink."""
    rel = (qidx[:, None] - kidx[None, :])[None]
    rp = rpos[:, None, :]
    return ((rp >= 0) & (rel >= 0) & ((rel < W) | (rp < S))) | (rel == 0)  # pad queries see themselves


def blocked_window_attention(spec, module, query, key, value, rpos, W, S, scaling, dropout, n_old=0,
                             store_vis=None, plans=None):
    """Sinks + window attention of ``q`` new queries, query block by query block.

    ``key``/``value``: ``[store (P slots), old (n_old), new (q)]`` (no store and no old keys for a whole sequence);
    ``rpos`` ``[B, n_old + q]``: real positions of old + new (-1 = pad); ``store_vis`` ``[B, P]``: which sink-store
    slots are filled. Block ``[q0, q1)`` only needs the store, the sink tokens among old + new and the keys
    ``[n_old + q0 - W + 1, n_old + q1)``; every other key is masked for all of its queries, so the result equals
    attention over all keys with the full mask, at O(q (S + W)) instead of O(q (S + W + q)). ``plans``: the blocks
    of ``block_plans`` (computed here if not given). Returns ``None`` when blocking saves nothing.
    """
    L = query.shape[2]
    if plans is None:
        plans = block_plans(rpos, W, S, n_old, L, store_vis, query.device)
    if plans is None:
        return None
    outs = []
    for q0, q1, aidx, mask, key_is_sink in plans:
        out, _ = window_attention(spec, module, query[:, :, q0:q1], key[:, :, aidx], value[:, :, aidx],
                                   mask, scaling, dropout, rpos[:, n_old + q0: n_old + q1], key_is_sink)
        outs.append(out)
    return torch.cat(outs, dim=1)


_BAND_MEMO = LastValueMemo()


def band_plan(b: int, W: int, S: int, rows: int, device: str):
    """Mask ``[1, 1, b, S + b + W - 1]`` (the sinks, then the band: query ``i`` sees keys ``i .. i + W - 1``) and
    ``key_is_sink`` ``[rows, S + b + W - 1]`` of ``banded_window_attention``; the same objects for every layer
    and chunk, so that the masks derived from them are memoised too."""
    key = (b, W, S, rows, device)
    hit = _BAND_MEMO.get(key, ())
    if hit is not None:
        return hit
    dev = torch.device(device)
    i = torch.arange(b, device=dev)[:, None]
    k = torch.arange(b + W - 1, device=dev)[None]
    band = (k >= i) & (k < i + W)
    mask = torch.cat([band.new_ones(b, S), band], dim=-1)[None, None]
    key_is_sink = torch.zeros(rows, S + b + W - 1, dtype=torch.bool, device=dev)
    key_is_sink[:, :S] = True
    return _BAND_MEMO.put(key, (), (mask, key_is_sink))


def banded_window_attention(spec, module, query, all_k, all_v, sink_k, sink_v, qpos, n_old, W, scaling, dropout):
    """Sinks + window attention of a steady cached chunk: every one of the ``q`` new queries sees the ``S`` sinks
    of the store and exactly the ``W`` keys that end at itself (no padding, no sink among ``all_k``).

    ``all_k``/``all_v`` ``[B, Hkv, n_old + q, D]`` (window then new, ``n_old >= W - 1``), ``sink_k``/``sink_v``
    ``[B, Hkv, S, D]``, ``qpos`` ``[B, q]``. Query blocks of ``b`` tokens become rows of one batch, each with its
    own ``S + b + W - 1`` keys (the sinks and an unfolded slice of the window), all under one band mask: the same
    result as ``blocked_window_attention``, without its per-block calls. Returns ``[B, q, H, D]``.
    """
    if strided_band_available(all_k, all_v, bool(dropout and module.training)):
        return strided_band_attention(spec, query, all_k, all_v, sink_k, sink_v, qpos, n_old, W, scaling)
    B, H, L, D = query.shape
    Hkv, S = all_k.shape[1], sink_k.shape[2]
    b = min(query_block(W), L)
    nblk = -(-L // b)
    pad = nblk * b - L  # the last block is filled up with zero queries and keys no real query can see

    def rows(x, sinks):  # [B, Hkv, n_old + L, D] -> [B * nblk, Hkv, S + b + W - 1, D]
        win = x[:, :, n_old - W + 1:]
        if pad:
            win = F.pad(win, (0, 0, 0, pad))
        out = x.new_empty(B, nblk, Hkv, S + b + W - 1, D)
        out[:, :, :, :S] = sinks[:, None]
        out[:, :, :, S:] = win.unfold(2, b + W - 1, b).permute(0, 2, 1, 4, 3)
        return out.view(B * nblk, Hkv, S + b + W - 1, D)

    q = F.pad(query, (0, 0, 0, pad)) if pad else query
    q = q.view(B, H, nblk, b, D).transpose(1, 2).reshape(B * nblk, H, b, D)
    qp = (F.pad(qpos, (0, pad)) if pad else qpos).reshape(B * nblk, b)
    mask, key_is_sink = band_plan(b, W, S, B * nblk, str(query.device))
    out, _ = window_attention(spec, module, q, rows(all_k, sink_k), rows(all_v, sink_v), mask, scaling, dropout,
                               qp, key_is_sink)
    return out.reshape(B, nblk * b, H, -1)[:, :L]


# Query block of ``strided_band_attention``. Per layer per 2048-token steady chunk (W 512, 32 sinks, SmolLM2's 9 query
# and 3 KV heads, one thread, the AVX512-BF16 EPYC), against the folded form's 60.9 ms (fp32) / 64.3 ms (bf16):
# b = 256 56.2 / 63.0, 128 49.1 / 52.1, 64 48.8 / 53.4, 32 45.6 / 50.7 ms (fewer keys per query, S + b + W - 1,
# against more rows; noisy to a few ms). 64: the middle of the flat part.
BAND_BLOCK = 64
# CPU flash attention with its log-sum-exp (torch's own SDPA kernel on CPU; the public API drops the lse)
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def strided_band_available(keys, values, dropout_active: bool) -> bool:
    """Whether ``strided_band_attention`` can serve a chunk: CPU tensors in float32 or bf16 (the keys' dtype is the
    queries') with contiguous head dimensions, torch's CPU flash kernel present, no attention dropout in training."""
    return (_CPU_FLASH is not None and keys.device.type == "cpu" and keys.dtype in (torch.float32, torch.bfloat16)
            and keys.stride(-1) == 1 and values.stride(-1) == 1 and not dropout_active)


_BIAS_MEMO = LastValueMemo()


def band_bias(b: int, W: int, rep: int, dtype, device):
    """Additive band mask ``[1, 1, rep * b, b + W - 1]`` (0 where query ``i`` of a block sees key ``i .. i + W - 1``,
    ``-inf`` elsewhere), repeated for the ``rep`` query heads folded into the rows; built once for all layers."""
    key = (b, W, rep, dtype, str(device))
    hit = _BIAS_MEMO.get(key, ())
    if hit is not None:
        return hit
    i = torch.arange(b, device=device)[:, None]
    k = torch.arange(b + W - 1, device=device)[None]
    band = ((k >= i) & (k < i + W)).repeat(rep, 1)
    bias = torch.zeros(band.shape, dtype=dtype, device=device).masked_fill(~band, float("-inf"))
    return _BIAS_MEMO.put(key, (), bias[None, None])


class BandExtra(NamedTuple):
    """More keys ``strided_band_attention`` scores with the sinks, in the same softmax (the recall slots,
    recall_slots.py): each query, rotated back by its ``rotation`` (``(cos, sin)`` of the angles of
    ``qpos - distance``; ``None``: not rotated), scores the keys it sees."""

    keys: torch.Tensor  # [B, Hkv, M, D]
    values: torch.Tensor  # [B, Hkv, M, D]
    visible: torch.Tensor  # [B, q, M]
    rotation: tuple[torch.Tensor, torch.Tensor] | None  # [B, 1, q, D] x 2
    distance: int


def strided_band_attention(spec, query, all_k, all_v, sink_k, sink_v, qpos, n_old, W, scaling, extra=None):
    """``banded_window_attention`` on CPU, without copying a key: each block of ``BAND_BLOCK`` queries reads its
    ``b + W - 1`` window keys as a strided view of the cache (``unfold``), the grouped query heads folded into the
    rows (no repeated keys), under one additive band mask; the sinks are attended apart (``S`` keys, float32, rotated
    back beyond the base's context as in ``sink_merged_attention``) and merged through the two parts' log-sum-exp:
    ``o = (e^lse_w o_w + e^lse_s o_s) / (e^lse_w + e^lse_s)``, exactly softmax attention over sinks + window.
    A last block shorter than ``BAND_BLOCK`` runs on its own. Returns ``[B, q, H, D]``.

    ``extra``: a ``BandExtra``, more keys in the same softmax, attended like the sinks (a part of their own, merged
    the same way). Where every query is beyond the base's context, the sinks are scored with the extra keys'
    rotated queries, their keys moved once instead: ``R(-(t - P + 1)) q = R(P - 1 - d) R(-(t - d)) q``, so
    ``q_sink . k = q_slot . R(d - P + 1) k``, and sinks and extra keys are one part. Every part other than the window
    is one call of the same CPU flash kernel, which returns its log-sum-exp."""
    B, H, L, D = query.shape
    Hkv, S = all_k.shape[1], sink_k.shape[2]
    rep = H // Hkv
    scale = scaling if scaling is not None else D**-0.5
    sink_rot = None  # (cos, sin) [B, 1, L, D] of the angles the queries rotate back by against the sinks
    inv_freq = spec.clamp_inv_freq(D) if S else None
    if inv_freq is not None and int(qpos.max()) >= spec.sink_position_limit:
        sink_rot = sink_rotations(spec, qpos, inv_freq, query.device)
    shared_sinks = None  # the sink keys as the extra keys' rotated queries score them (see above)
    if sink_rot is not None and extra is not None and extra.rotation is not None and \
            int(qpos.min()) >= spec.sink_position_limit - 1:
        shift = float(extra.distance - spec.sink_position_limit + 1) * inv_freq.to(query.device, torch.float32)
        shift = torch.cat([shift, shift])
        shared_sinks = rotated_forward(sink_k, shift.cos(), shift.sin())  # [B, Hkv, S, D] float32
    out = query.new_empty(B, L, H, D)
    b = min(BAND_BLOCK, L)
    full = L // b * b
    for r in range(B):
        for q0, q1, bb in ((0, full, b), (full, L, L - full)):
            if q1 <= q0:
                continue
            nb = (q1 - q0) // bb
            rows = query[r, :, q0:q1].view(Hkv, rep, nb, bb, D).permute(2, 0, 1, 3, 4)  # [nb, Hkv, rep, bb, D]
            qr = rows.reshape(nb, Hkv, rep * bb, D)
            k0, k1 = n_old + q0 - W + 1, n_old + q1
            win_k = all_k[r, :, k0:k1].unfold(1, bb + W - 1, bb).permute(1, 0, 3, 2)  # [nb, Hkv, bb + W - 1, D]
            win_v = all_v[r, :, k0:k1].unfold(1, bb + W - 1, bb).permute(1, 0, 3, 2)
            o, lse = _CPU_FLASH(qr, win_k, win_v, attn_mask=band_bias(bb, W, rep, query.dtype, query.device),
                                scale=scale)  # [nb, Hkv, rep * bb, D], [nb, Hkv, rep * bb]
            parts = []  # the other parts' (output, log-sum-exp), float32
            if S and shared_sinks is None:
                q_s = _block_queries(qr, None if sink_rot is None else [x[r, 0, q0:q1] for x in sink_rot], bb)
                k_s, v_s = sink_k[r].float(), sink_v[r].float()
                parts.append(_CPU_FLASH(q_s, k_s.expand(nb, *k_s.shape), v_s.expand(nb, *v_s.shape), scale=scale))
            if extra is not None:
                sinks = None if shared_sinks is None else (shared_sinks[r], sink_v[r])
                x_k, x_v, bias, seen_any = _block_extras(extra, r, q0, q1, nb, bb, rep, sinks)
                q_x = _block_queries(qr, None if extra.rotation is None else [x[r, 0, q0:q1] for x in extra.rotation],
                                     bb)
                o_x, lse_x = _CPU_FLASH(q_x, x_k, x_v, attn_mask=bias, scale=scale)
                if seen_any is not None:  # a query that sees no key of this part: the kernel gives lse 0, o 0
                    lse_x = lse_x.masked_fill(~seen_any, float("-inf"))
                    o_x = torch.nan_to_num_(o_x)
                parts.append((o_x, lse_x))
            if parts:
                o = o.float()
                for o_p, lse_p in parts:
                    o = torch.lerp(o_p, o, torch.sigmoid(lse - lse_p)[..., None])  # e^lse / (e^lse + e^lse_p)
                    lse = torch.logaddexp(lse, lse_p)
            o = o.reshape(nb, Hkv, rep, bb, D)
            out[r, q0:q1].view(nb, bb, Hkv, rep, D).copy_(o.permute(0, 3, 1, 2, 4))
    return out


def _block_queries(qr, rotation, bb):
    """``strided_band_attention``'s block queries ``qr`` ``[nb, Hkv, rep * bb, D]`` in float32, rotated back by the
    angles whose ``(cos, sin)`` ``rotation`` gives (``[nb * bb, D]`` each, their queries' in order) unless ``None``:
    ``R(-a) q`` written half by half (``q1 cos + q2 sin``, ``q2 cos - q1 sin``), no rotated copy of ``q``."""
    if rotation is None:
        return qr.float()
    nb, Hkv, rows, D = qr.shape
    h = D // 2
    q = qr.view(nb, Hkv, rows // bb, bb, D)
    cos, sin = (x.view(nb, 1, 1, bb, D)[..., :h] for x in rotation)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    lo, hi = out[..., :h], out[..., h:]
    torch.mul(q[..., :h], cos, out=lo).addcmul_(q[..., h:], sin)
    torch.mul(q[..., h:], cos, out=hi).addcmul_(q[..., :h], sin, value=-1)
    return out.view(nb, Hkv, rows, D)


def _block_extras(extra, r, q0, q1, nb, bb, rep, sinks=None):
    """Row ``r``'s extra keys for the query blocks of ``strided_band_attention`` (``nb`` blocks of ``bb`` queries from
    ``q0``), each block keeping only the keys some query of it sees, packed first, after the ``sinks`` (``(keys,
    values)`` ``[Hkv, S, D]``, seen by every query) where given: ``(keys, values [nb, Hkv, S + m, D] float32, bias,
    seen_any)`` with ``m`` the most any block sees; ``bias`` ``[nb, 1, rep * bb, S + m]`` additive mask (``None``:
    every key seen), ``seen_any`` ``[nb, 1, rep * bb]`` whether a row sees a key (``None``: every row does, the sinks'
    rows). A chunk's recall-slot candidates are all the tokens that hold a slot at some query of it (hundreds in a
    chunk that fills the slots); a block of ``bb`` queries sees at most ``G + bb`` of them, so the part stays narrow."""
    x_k, x_v, x_vis = extra.keys[r], extra.values[r], extra.visible[r, q0:q1]  # [Hkv, M, D] x 2, [q1 - q0, M]
    (Hkv, M, D), dev = x_k.shape, x_k.device
    vis = x_vis.reshape(nb, bb, M)
    used = vis.any(1)  # [nb, M]
    m = int(used.sum(1).max()) if M else 0
    idx = torch.sort(used.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :m]  # [nb, m]
    S = 0 if sinks is None else sinks[0].shape[1]
    keys = torch.empty(nb, Hkv, S + m, D, device=dev)
    values = torch.empty(nb, Hkv, S + m, x_v.shape[-1], device=dev)
    if S:
        keys[:, :, :S], values[:, :, :S] = sinks
    keys[:, :, S:], values[:, :, S:] = x_k[:, idx].transpose(0, 1), x_v[:, idx].transpose(0, 1)
    seen = vis.gather(2, idx[:, None, :].expand(nb, bb, m))  # [nb, bb, m]
    if bool(seen.all()):
        return keys, values, None, None
    bias = torch.zeros(nb, 1, bb, S + m, device=dev)
    bias[..., S:].masked_fill_(~seen[:, None], float("-inf"))
    bias = bias.expand(nb, rep, bb, S + m).reshape(nb, 1, rep * bb, S + m)
    seen_any = None if S else seen.any(-1)[:, None].expand(nb, rep, bb).reshape(nb, 1, rep * bb)
    return keys, values, bias, seen_any


def fresh_band_available(spec, keys, values, dropout_active: bool, W: int, S: int) -> bool:
    """Whether ``fresh_window_attention`` serves a chunk that starts the sequence: ``strided_band_attention``'s
    conditions, no gradient (training keeps the blocked path), and no sink clamping among the causal head's
    queries (positions below ``W + S - 1`` inside the base's context)."""
    limit = spec.sink_position_limit
    return (not torch.is_grad_enabled() and strided_band_available(keys, values, dropout_active)
            and (limit is None or W + S - 1 <= limit))


def fresh_window_attention(spec, module, query, keys, values, qpos, W, S, scaling, dropout, extra=None):
    """Sinks + window attention of a chunk that starts every row's sequence (positions ``0 .. L - 1``, no padding;
    ``keys``/``values`` ``[B, Hkv, L, D]``): query ``i < W + S - 1`` sees every key up to itself (its window reaches
    back into the sinks), so the first ``W + S - 1`` queries are plain causal attention (SDPA's causal kernel, no
    mask); each later query sees the first ``S`` keys (the sinks) and the ``W`` keys ending at itself, exactly what
    ``strided_band_attention`` computes. Returns ``[B, L, H, D]``. ``extra``: as there, for the later queries only
    (the causal head's evict nothing but sinks, so they see no recall slot)."""
    L = query.shape[2]
    c0 = min(L, W + S - 1)  # 0 for W = 1 without sinks: every query sees itself only, all of them in the band
    if extra is not None:
        extra = extra._replace(visible=extra.visible[:, c0:],
                               rotation=None if extra.rotation is None else [x[:, :, c0:] for x in extra.rotation])
    if c0 == 0:
        return strided_band_attention(spec, query, keys, values, keys[:, :, :S], values[:, :, :S], qpos, 0, W, scaling,
                                      extra)
    head, _ = sdpa_attention_forward(module, query[:, :, :c0], keys[:, :, :c0], values[:, :, :c0], None,
                                     dropout=dropout, scaling=scaling, is_causal=True)
    if c0 == L:
        return head
    tail = strided_band_attention(spec, query[:, :, c0:], keys, values, keys[:, :, :S], values[:, :, :S],
                                  qpos[:, c0:], c0, W, scaling, extra)
    return torch.cat([head, tail], dim=1)


_PLAN_MEMO = LastValueMemo()


def block_plans(rpos, W, S, n_old, L, store_vis, dev):
    """Query blocks of ``blocked_window_attention``: ``[(q0, q1, key index, mask [B,1,q,k], key_is_sink [B,k])]``,
    or ``None`` when blocking saves nothing. A pure function of its inputs, memoised across layers."""
    key, inputs = (W, S, n_old, L, str(dev), BLOCK_MIN), (rpos, store_vis)
    hit = _PLAN_MEMO.get(key, inputs)
    if hit is not None:
        return hit[0]
    P = 0 if store_vis is None else store_vis.shape[1]
    block = query_block(W)
    is_sink = (rpos >= 0) & (rpos < S)
    sink_end = int(is_sink.nonzero()[:, 1].max()) + 1 if S and bool(is_sink.any()) else 0
    if P + sink_end + block + W >= 0.75 * (P + n_old + L):
        return _PLAN_MEMO.put(key, inputs, (None,))[0]
    B = rpos.shape[0]
    rpos = rpos.to(dev)
    plans = []
    for q0 in range(0, L, block):
        q1 = min(L, q0 + block)
        a0 = max(0, n_old + q0 - W + 1)
        aidx = torch.cat([torch.arange(min(sink_end, a0), device=dev), torch.arange(a0, n_old + q1, device=dev)])
        rk = rpos[:, aidx]
        mask = window_mask(torch.arange(n_old + q0, n_old + q1, device=dev), aidx, rk, W, S)
        key_is_sink = (rk >= 0) & (rk < S)
        if P:
            mask = torch.cat([store_vis[:, None, :].to(dev).expand(B, q1 - q0, P), mask], dim=-1)
            key_is_sink = torch.cat([torch.ones_like(store_vis, dtype=torch.bool).to(dev), key_is_sink], dim=-1)
            aidx = torch.cat([torch.arange(P, device=dev), aidx + P])
        plans.append((q0, q1, aidx, mask[:, None], key_is_sink))
    return _PLAN_MEMO.put(key, inputs, (plans,))[0]
