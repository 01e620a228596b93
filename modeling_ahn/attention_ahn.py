# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""The ``"ahn"`` attention implementation: sinks + sliding-window attention plus the AHN read-out.

Augmenting a base model uses only transformers' extension points:

* ``AttentionInterface.register("ahn", ahn_attention_forward)``: the base's own attention module
  computes q/k/v (with its biases, q/k norms and RoPE), updates the cache, then calls this function,
  which attends over sinks + window and adds the memory read-out *before* the base ``o_proj``.
* ``AttentionMaskInterface.register("ahn", ...)``: hands the raw 2D padding mask through, since the
  sink+window pattern with per-row padding cannot be expressed by transformers' mask functions.
* a forward pre-hook on each ``self_attn`` that stashes the layer's pre-normed input (the AHN gates
  are computed from it) and the cache, which the attention function does not receive.

Hub remote-code payload: flat, sibling imports only.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

from .cache_ahn import SinkWindowLayer

AHN_ATTENTION = "ahn"
INNER_IMPLEMENTATIONS = ("sdpa", "eager")
# Whole-sequence attention (training, one-shot prefill) and long cached chunks run in query blocks of
# max(W // 2, BLOCK_MIN) tokens, each over the sinks and the b + W - 1 keys its window can reach, when that is cheaper
# than all pairs. Blocks of W // 2 rather than W: 1.5 W keys per query instead of 2 W (measured per 2048-token chunk
# beyond the base's context, W = 1024: 154 vs 184 ms per layer; W = 512: 124 vs 132 ms); smaller blocks lose
# more to per-block work than they save.
BLOCK_MIN = 128
# A steady cached chunk (window full, every sink in the store, no padding) folds the same query blocks into the
# batch: one attention call under one band mask, without the per-block work (``_banded_window_attention``). Smaller
# blocks did not pay there either (W = 512, blocks of 128: 115-137 against 72 ms per layer and 2048-token chunk).


def _query_block(W: int) -> int:
    return max(W // 2, BLOCK_MIN)


class AhnLayerSpec:
    """What the attention function needs to know about one layer (kept in ``self_attn.__dict__``,
    not as a submodule, so the base's ``state_dict`` is unchanged).

    ``memory`` is ``None`` for a layer kept at full attention. ``config`` is the live ``AhnConfig``:
    changing ``config.sliding_window`` / ``config.num_sinks`` takes effect on the next fresh cache.
    """

    def __init__(self, memory, config, inner="sdpa"):
        self.memory = memory
        self.config = config
        self.inner = inner
        # "ahn": sinks + window + memory; "swa": sinks + window only (the baseline a fresh AHN equals);
        # "full": the base's own causal attention (the distillation teacher; no AHN cache)
        self.mode = "ahn"
        # This code's own implementation: if another copy of this code (the installed package and a
        # repo's remote code) registered "ahn" last, its dispatcher still calls the right one.
        self.attention = _ahn_attention
        self.rotary = None  # the base's rotary embedding module (set by attach_ahn), for sink clamping

    @property
    def sink_position_limit(self):
        """The base's trained context ``P`` if queries beyond it get clamped sink distances, else ``None``."""
        if not getattr(self.config, "clamp_sink_positions", True) or not self.config.num_sinks:
            return None
        base = getattr(self.config, "base_config", None)
        return getattr(base, "max_position_embeddings", None) if base is not None else None

    def inv_freq(self):
        return getattr(self.rotary, "inv_freq", None) if self.rotary is not None else None

    def clamp_inv_freq(self, head_dim: int):
        """The rotary frequencies to clamp sinks with, or ``None`` where nothing is clamped (clamping off, no sinks, or
        no full-dimension rotary embedding to undo)."""
        inv_freq = self.inv_freq() if self.sink_position_limit is not None else None
        return inv_freq if inv_freq is not None and 2 * inv_freq.numel() == head_dim else None


def _eager_attention(module, query, key, value, mask, scaling, dropout):
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _inner_attention(spec, module, query, key, value, mask, scaling, dropout):
    """Softmax attention of the base with an explicit boolean mask ``[B, 1, q, kv]`` (``None``: every key)."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if spec.inner == "eager":
        return _eager_attention(module, query, key, value, mask, scaling, dropout)
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling)


def _check_mask(attention_mask):
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "AHN attention takes a 2D padding mask [batch, tokens]; a custom 4D attention mask cannot be combined "
            "with the sink + window pattern."
        )
    return attention_mask


def _full_attention(spec, module, query, key, value, mask2d, scaling, dropout, sliding_window=None):
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
    return _inner_attention(spec, module, query, key, value, vis[:, None], scaling, dropout)


def ahn_attention_forward(module, *args, **kwargs):
    """The registered ``"ahn"`` attention: dispatches to the implementation of the layer's own AHN code."""
    spec = module.__dict__.get("_ahn")
    if spec is None:
        raise RuntimeError(
            "The 'ahn' attention implementation is active on a layer without AHN; build the model with "
            "AhnForCausalLM.from_base(...) instead of setting attn_implementation='ahn' by hand."
        )
    return spec.attention(module, *args, **kwargs)


def _clamp_angles(spec, query, qpos, key_is_sink):
    """``[B, 1, q, D]`` angles by which queries rotate back against the sinks, or ``None`` if nothing is clamped."""
    inv_freq = spec.clamp_inv_freq(query.shape[-1])
    if inv_freq is None or qpos.numel() == 0 or int(qpos.max()) < spec.sink_position_limit \
            or not bool(key_is_sink.any()):
        return None
    return _sink_angles(spec, qpos, inv_freq, query.device)


def _rotated_back(query, ang):
    """``R(-ang) q``: the queries as the sinks see them (``[B, H, q, D]``, computed in float32)."""
    D = query.shape[-1]
    q = query.float()
    rot = torch.cat([q[..., D // 2:], -q[..., : D // 2]], dim=-1)  # rotate_half(q) rotated by -angle
    return q * ang.cos() + rot * ang.sin()


# Extra head channels of the merged attention: two carry the sinks' log-normaliser (hi + lo parts, so that it
# survives bf16), one returns the sinks' share; padded to a multiple of 8 for the fused SDPA kernels.
_MERGE_CHANNELS = 8


def _sink_merged_attention(module, query, key, value, mask, scaling, dropout, ang, key_is_sink):
    """Sinks (clamped) + window attention in one fused SDPA call over the window keys plus one summary key.

    The sinks are scored apart, with the rotated-back queries: ``lse_s = logsumexp(s_sink)``,
    ``o_s = softmax(s_sink) v_sink`` (``S`` keys: cheap). The window keys go to SDPA together with a summary key
    whose score is ``lse_s`` for every query (an extra channel: query ``lse_s / scale``, key 1) and whose value is
    a one-hot channel, so SDPA returns ``o_w' = sum_w e^s_w v_w / Z`` and the summary's weight ``p = e^lse_s / Z``
    with ``Z = sum_w e^s_w + e^lse_s``; the result ``o_w' + p o_s`` is exactly softmax attention over all keys.
    The head grows by 8 channels (the doubled head of ``_sink_clamped`` costs twice the attention). Key columns
    that are sinks in every row (the usual case: the first ``S``) are left out of the SDPA call.
    """
    B, H, q_len, D = query.shape
    Hkv = key.shape[1]
    scale = scaling if scaling is not None else D**-0.5
    plan = _merge_masks(mask, key_is_sink, key.device)
    sink_cols, sink_vis, m2, win_cols = plan["sink_cols"], plan["sink_vis"], plan["m2"], plan["win_cols"]
    ks = repeat_kv(key[:, :, sink_cols], H // Hkv).float()  # [B, H, ns, D]
    vs = repeat_kv(value[:, :, sink_cols], H // Hkv).float()
    scores = (_rotated_back(query, ang) @ ks.transpose(-1, -2)) * scale
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


_MERGE_MEMO = threading.local()


def _merge_masks(mask, key_is_sink, device):
    """What ``_sink_merged_attention`` needs of the masks: the sink columns and their visibility
    ``[B, 1, q, ns]`` (``None``: all visible), the window mask plus the summary key, and ``win_cols``: the number of
    leading columns that are sinks in every row and no window key of any (left out of SDPA; ``None``: keep all).
    Reused while the same mask objects come back (every layer of one forward)."""
    memo = getattr(_MERGE_MEMO, "value", None)
    if memo is not None and memo[0] is mask and memo[1] is key_is_sink:  # the memo holds them: ids cannot recur
        return memo[2]
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
    _MERGE_MEMO.value = (mask, key_is_sink, plan)
    return plan


def _sink_clamped(query, key, value, ang, key_is_sink, scaling):
    """Queries beyond the base's trained context see the sinks as if they sat at its last position.

    ``ang``: the queries' clamp angles (``_clamp_angles``); ``key_is_sink`` ``[B, kv]``. Returns
    ``(query, key, value, scaling)`` to attend with instead (the output's first ``D`` channels are the
    result). A query at position ``t > P`` is rotated back by
    ``t - P`` for the sink keys only, which one attention call does by doubling the head size:
    ``[q, R(P - t) q] . [k * not_sink, k * sink]``. Exact (RoPE rotations compose). Values are zero-padded
    to the same size, so that SDPA keeps its fused kernel (it falls back to the slow math path when the
    value head size differs from the query's). SDPA prefill uses the cheaper ``_sink_merged_attention``; this
    form serves eager attention (and is the reference it is tested against).
    """
    D = query.shape[-1]
    if query.shape[2] == 1:
        # One query per row (decoding): rotating the query back by `back` against the sink keys equals rotating
        # the sink keys forward by it ((R(-b) q) . k = q . (R(b) k)); same head size, no second attention width.
        return query, _sinks_rotated_forward(key, ang, key_is_sink), value, scaling if scaling is not None else D**-0.5
    q_sink = _rotated_back(query, ang).to(query.dtype)
    is_sink = key_is_sink[:, None, :, None].to(device=key.device, dtype=key.dtype)
    key2 = torch.cat([key * (1 - is_sink), key * is_sink], dim=-1)
    value2 = F.pad(value, (0, D))
    return torch.cat([query, q_sink], dim=-1), key2, value2, scaling if scaling is not None else D**-0.5


def _sink_angles(spec, qpos, inv_freq, device):
    """``[B, 1, q, D]`` RoPE angles by which the sinks are moved for queries at ``qpos`` (zero up to ``P - 1``)."""
    back = (qpos - (spec.sink_position_limit - 1)).clamp(min=0).to(torch.float32)  # [B, q]
    ang = back[:, None, :, None] * inv_freq.to(device=device, dtype=torch.float32)  # [B, 1, q, D/2]
    return torch.cat([ang, ang], dim=-1)


def _rotated_forward(key, cos, sin):
    """``R(ang) k`` in float32, given ``cos``/``sin`` of the angles (RoPE's rotate-half layout)."""
    D = key.shape[-1]
    k = key.float()
    return k * cos + torch.cat([-k[..., D // 2:], k[..., : D // 2]], dim=-1) * sin  # rotate_half(k)


def _sinks_rotated_forward(key, ang, key_is_sink):
    """``key`` with the sink keys rotated forward by ``ang`` (``[B, 1, 1, D]``, one query per row)."""
    k_fwd = _rotated_forward(key, ang.cos(), ang.sin()).to(key.dtype)
    return torch.where(key_is_sink[:, None, :, None].to(key.device), k_fwd, key)


def _static_decode_step(spec, module, layer, query, key, value, hidden, mask2d, scaling, dropout):
    """One token per row over a :class:`StaticSinkWindowLayer`: the same result as the dynamic path, with
    fixed shapes and no host sync (``torch.compile`` / CUDA graphs). ``key``/``value`` are
    ``[sink store (S), ring (W)]``, the new token already in its slot; the evicted token is in ``layer.pending``."""
    pending = layer.pending
    slot, ev = pending["slot"], pending["evicted"]
    S = layer.num_sinks
    B = query.shape[0]
    rpos_new = layer.real_positions(None if mask2d is None else mask2d[:, -1:], 1)  # [B, 1]
    ring_rpos = layer.ring_rpos.index_copy(1, slot, rpos_new)
    is_slot = torch.arange(layer.sliding_window, device=query.device) == slot
    # visible: filled sink slots, real tokens of the ring (all within the window), and the query itself
    mask = torch.cat([layer.sink_filled, (ring_rpos >= 0) | is_slot], dim=-1)[:, None, None, :]
    inv_freq = spec.clamp_inv_freq(query.shape[-1])
    if inv_freq is not None:
        key_is_sink = torch.cat([torch.ones_like(layer.sink_filled), (ring_rpos >= 0) & (ring_rpos < S)], dim=-1)
        key = _sinks_rotated_forward(key, _sink_angles(spec, rpos_new, inv_freq, query.device), key_is_sink)
    attn_out, attn_weights = _inner_attention(spec, module, query, key, value, mask, scaling, dropout)
    memory = spec.memory
    gates_new = memory.write_gates(hidden)  # [B, 1, G, H]
    layer.ensure_buffers(gates_new, B, query.shape[1], query.shape[-1], value.shape[-1])
    state = None
    if spec.mode == "ahn":  # the evicted token enters memory if it is real and no sink; then the query reads
        valid = ev["rpos"][:, None] >= S
        ev_gates = ev["gates"] if ev["gates"] is not None else torch.zeros_like(gates_new)
        mem_out, state = memory(query, ev["keys"], ev["values"], ev_gates, valid, hidden, layer.recurrent_state)
        attn_out = attn_out + mem_out
    layer.commit_step(slot, rpos_new, gates_new, state)
    return attn_out, attn_weights


class _RotationMemo(threading.local):
    value = None


_ROTATION_MEMO = _RotationMemo()


def _sink_rotation(spec, position: int, head_dim: int, device):
    """``(cos, sin)`` ``[D]`` of the angle by which the sinks are moved for a query at ``position`` beyond the base's
    context (``_sink_angles`` of one position), or ``None`` where nothing is clamped; the same in every layer of a
    decoding step, so it is computed once per step."""
    inv_freq = spec.clamp_inv_freq(head_dim)
    limit = spec.sink_position_limit
    if inv_freq is None or position < limit:
        return None
    key = (position, limit, inv_freq.data_ptr(), str(device))
    memo = _ROTATION_MEMO.value
    if memo is not None and memo[0] == key:
        return memo[1]
    ang = _sink_angles(spec, torch.tensor([[position]], device=device), inv_freq, device)[0, 0, 0]
    _ROTATION_MEMO.value = (key, (ang.cos(), ang.sin()))
    return _ROTATION_MEMO.value[1]


def _steady_decode_step(spec, module, layer, query, key, value, hidden, scaling, dropout):
    """One token per row, no padding, a full window and every sink in the store (``SinkWindowLayer.steady``).

    ``key``/``value`` are ``[sink store (S), window[1:] (W - 1), new]``: every key is visible, so attention needs no
    mask; window[0] leaves the window and is written into the memory, which the query then reads. The same result
    as the general path (tests compare the two), with a fraction of its operations.
    """
    rot = _sink_rotation(spec, layer.pending["start"], query.shape[-1], query.device)
    if rot is not None:  # beyond the base's context: the sinks as seen from its last position (see _sink_clamped)
        # `key` is this step's own concatenation (the store is unchanged)
        key[:, :, : layer.num_sinks] = _rotated_forward(layer.sink_keys, *rot).to(key.dtype)
    attn_out, attn_weights = _inner_attention(spec, module, query, key, value, None, scaling, dropout)
    memory = spec.memory
    gates_new = memory.write_gates(hidden)  # [B, 1, G, H]
    state = None
    if spec.mode == "ahn":
        ev_k, ev_v, ev_g = layer.evicted()
        mem_out, state = memory.step(query, ev_k, ev_v, ev_g, hidden, layer.recurrent_state)
        attn_out = attn_out + mem_out
    layer.commit_steady(gates_new, state)
    return attn_out, attn_weights


def _window_attention(spec, module, query, key, value, mask, scaling, dropout, qpos, key_is_sink):
    """``_inner_attention`` over sinks + window keys, with the sinks clamped for queries beyond the base's
    trained context (see ``_sink_clamped``)."""
    ang = _clamp_angles(spec, query, qpos, key_is_sink)
    if ang is None:
        return _inner_attention(spec, module, query, key, value, mask, scaling, dropout)
    if spec.inner == "sdpa" and query.shape[2] > 1 and not (dropout and module.training):  # (dropout: sinks too)
        return _sink_merged_attention(module, query, key, value, mask, scaling, dropout, ang, key_is_sink), None
    clamped = _sink_clamped(query, key, value, ang, key_is_sink, scaling)
    out, weights = _inner_attention(spec, module, *clamped[:3], mask, clamped[3], dropout)
    return out[..., : value.shape[-1]], weights


def _window_mask(qidx, kidx, rpos, W, S):
    """``[B, q, k]``: key ``j`` is visible to query ``i`` if real, causal, and in the window or a sink."""
    rel = (qidx[:, None] - kidx[None, :])[None]
    rp = rpos[:, None, :]
    return ((rp >= 0) & (rel >= 0) & ((rel < W) | (rp < S))) | (rel == 0)  # pad queries see themselves


def _blocked_window_attention(spec, module, query, key, value, rpos, W, S, scaling, dropout, n_old=0,
                              store_vis=None):
    """Sinks + window attention of ``q`` new queries, query block by query block.

    ``key``/``value``: ``[store (P slots), old (n_old), new (q)]`` (no store and no old keys for a whole sequence);
    ``rpos`` ``[B, n_old + q]``: real positions of old + new (-1 = pad); ``store_vis`` ``[B, P]``: which sink-store
    slots are filled. Block ``[q0, q1)`` only needs the store, the sink tokens among old + new and the keys
    ``[n_old + q0 - W + 1, n_old + q1)``; every other key is masked for all of its queries, so the result equals
    attention over all keys with the full mask, at O(q (S + W)) instead of O(q (S + W + q)). Returns ``None`` when
    blocking saves nothing.
    """
    L = query.shape[2]
    plans = _block_plans(rpos, W, S, n_old, L, store_vis, query.device)
    if plans is None:
        return None
    outs = []
    for q0, q1, aidx, mask, key_is_sink in plans:
        out, _ = _window_attention(spec, module, query[:, :, q0:q1], key[:, :, aidx], value[:, :, aidx],
                                   mask, scaling, dropout, rpos[:, n_old + q0: n_old + q1], key_is_sink)
        outs.append(out)
    return torch.cat(outs, dim=1)


@functools.lru_cache(maxsize=8)
def _band_plan(b: int, W: int, S: int, rows: int, device: str):
    """Mask ``[1, 1, b, S + b + W - 1]`` (the sinks, then the band: query ``i`` sees keys ``i .. i + W - 1``) and
    ``key_is_sink`` ``[rows, S + b + W - 1]`` of ``_banded_window_attention``; the same objects for every layer
    and chunk, so that the masks derived from them are memoised too."""
    dev = torch.device(device)
    i = torch.arange(b, device=dev)[:, None]
    k = torch.arange(b + W - 1, device=dev)[None]
    band = (k >= i) & (k < i + W)
    mask = torch.cat([band.new_ones(b, S), band], dim=-1)[None, None]
    key_is_sink = torch.zeros(rows, S + b + W - 1, dtype=torch.bool, device=dev)
    key_is_sink[:, :S] = True
    return mask, key_is_sink


def _banded_window_attention(spec, module, query, all_k, all_v, sink_k, sink_v, qpos, n_old, W, scaling, dropout):
    """Sinks + window attention of a steady cached chunk: every one of the ``q`` new queries sees the ``S`` sinks
    of the store and exactly the ``W`` keys that end at itself (no padding, no sink among ``all_k``).

    ``all_k``/``all_v`` ``[B, Hkv, n_old + q, D]`` (window then new, ``n_old >= W - 1``), ``sink_k``/``sink_v``
    ``[B, Hkv, S, D]``, ``qpos`` ``[B, q]``. Query blocks of ``b`` tokens become rows of one batch, each with its
    own ``S + b + W - 1`` keys (the sinks and an unfolded slice of the window), all under one band mask: the same
    result as ``_blocked_window_attention``, without its per-block calls. Returns ``[B, q, H, D]``.
    """
    B, H, L, D = query.shape
    Hkv, S = all_k.shape[1], sink_k.shape[2]
    b = min(_query_block(W), L)
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
    mask, key_is_sink = _band_plan(b, W, S, B * nblk, str(query.device))
    out, _ = _window_attention(spec, module, q, rows(all_k, sink_k), rows(all_v, sink_v), mask, scaling, dropout,
                               qp, key_is_sink)
    return out.reshape(B, nblk * b, H, -1)[:, :L]


class _Memo(threading.local):
    """The last result of a function of (small tensors, ints), reused while its inputs are equal: the attention
    masks of one forward are the same in every layer, so they are built once per forward, not once per layer."""

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


_PLAN_MEMO = _Memo()


def _block_plans(rpos, W, S, n_old, L, store_vis, dev):
    """Query blocks of ``_blocked_window_attention``: ``[(q0, q1, key index, mask [B,1,q,k], key_is_sink [B,k])]``,
    or ``None`` when blocking saves nothing. A pure function of its inputs, memoised across layers."""
    key, inputs = (W, S, n_old, L, str(dev), BLOCK_MIN), (rpos, store_vis)
    hit = _PLAN_MEMO.get(key, inputs)
    if hit is not None:
        return hit[0]
    P = 0 if store_vis is None else store_vis.shape[1]
    block = _query_block(W)
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
        mask = _window_mask(torch.arange(n_old + q0, n_old + q1, device=dev), aidx, rk, W, S)
        key_is_sink = (rk >= 0) & (rk < S)
        if P:
            mask = torch.cat([store_vis[:, None, :].to(dev).expand(B, q1 - q0, P), mask], dim=-1)
            key_is_sink = torch.cat([torch.ones_like(store_vis, dtype=torch.bool).to(dev), key_is_sink], dim=-1)
            aidx = torch.cat([torch.arange(P, device=dev), aidx + P])
        plans.append((q0, q1, aidx, mask[:, None], key_is_sink))
    return _PLAN_MEMO.put(key, inputs, (plans,))[0]


def _ahn_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention over ``[sinks, window, new]`` plus the AHN memory read-out, for one layer.

    ``query`` ``[B, H, q, D]``; ``key``/``value`` as returned by the cache (``[B, Hkv, kv, D]``).
    Returns ``(out [B, q, H, D], weights)`` like transformers' attention functions.
    """
    spec = module.__dict__["_ahn"]
    hidden, cache = module.__dict__.pop("_ahn_ctx", (None, None))
    mask2d = _check_mask(attention_mask)
    if spec.memory is None or spec.mode == "full":
        if isinstance(cache, Cache) and spec.memory is not None:
            raise ValueError("attention mode 'full' runs without an AHN cache: pass use_cache=False.")
        return _full_attention(spec, module, query, key, value, mask2d, scaling, dropout, kwargs.get("sliding_window"))
    if hidden is None:
        raise RuntimeError("AHN pre-hook did not run: the layer input is missing.")

    W, S = spec.config.sliding_window, spec.config.num_sinks
    layer = cache.layers[module.layer_idx] if isinstance(cache, Cache) else None
    whole_sequence = layer is None
    if whole_sequence:  # no cache: the whole sequence at once (training, use_cache=False)
        layer = SinkWindowLayer(S, W)
        key, value = layer.update(key, value)
    elif not isinstance(layer, SinkWindowLayer) or layer.pending is None:
        raise RuntimeError(f"layer {module.layer_idx}: the cache layer is {type(layer).__name__}, not an AHN layer.")
    elif (layer.sliding_window, layer.num_sinks) != (W, S):
        raise ValueError(
            f"This cache was built for sliding_window={layer.sliding_window}, num_sinks={layer.num_sinks} but the "
            f"model now uses {W}, {S}: start a new cache after changing the window."
        )

    B, _, q_len, _ = query.shape
    if layer.pending.get("static"):
        return _static_decode_step(spec, module, layer, query, key, value, hidden, mask2d, scaling, dropout)
    if layer.pending.get("steady"):
        if mask2d is None:
            return _steady_decode_step(spec, module, layer, query, key, value, hidden, scaling, dropout)
        key, value = layer.general_pending()  # a padding mask after all: the general path below
    pending = layer.pending
    start, n_old = pending["start"], pending["num_old"]
    all_k, all_v = pending["keys"], pending["values"]
    n_all = n_old + q_len
    rpos_new = layer.real_positions(None if mask2d is None else mask2d[:, -q_len:], q_len)
    rpos_all = torch.cat([layer.window_rpos, rpos_new], dim=-1)  # [B, n_all], -1 = pad

    dev = query.device
    attn_out = attn_weights = None
    if (spec.inner == "sdpa" and not whole_sequence and q_len > W and n_old >= W - 1
            and bool(layer.sink_filled.all()) and int(rpos_all.min()) >= S):  # a steady long prefill chunk
        attn_out = _banded_window_attention(spec, module, query, all_k, all_v, layer.sink_keys, layer.sink_values,
                                            rpos_new.to(dev), n_old, W, scaling, dropout)
    if attn_out is None and spec.inner == "sdpa" and (whole_sequence or q_len > W):  # another long sequence
        # a whole sequence has no sink store (its sinks are among its own keys), a cached chunk has one
        k_b, v_b, store = (all_k, all_v, None) if whole_sequence else (key, value, layer.sink_filled)
        attn_out = _blocked_window_attention(spec, module, query, k_b, v_b, rpos_all.to(dev), W, S, scaling, dropout,
                                             n_old=n_old, store_vis=store)
    if attn_out is None:  # mask over [sink store (S), window + new (n_all)], per row
        qidx = torch.arange(start, start + q_len, device=dev)
        kidx = torch.arange(start - n_old, start + q_len, device=dev)
        rp = rpos_all.to(dev)
        vis = _window_mask(qidx, kidx, rp, W, S)
        sink_vis = layer.sink_filled[:, None, :].to(dev).expand(B, q_len, S)
        mask = torch.cat([sink_vis, vis], dim=-1)[:, None]
        key_is_sink = torch.cat([torch.ones_like(sink_vis[:, 0]), (rp >= 0) & (rp < S)], dim=-1)
        attn_out, attn_weights = _window_attention(spec, module, query, key, value, mask, scaling, dropout,
                                                   rpos_new.to(dev), key_is_sink)

    # Memory: the token leaving the window at query i is slot i - W; it enters memory if it is real and no sink.
    memory = spec.memory
    gates_new = memory.write_gates(hidden)
    n_ev = max(0, n_all - W)
    state = layer.recurrent_state
    if spec.mode == "ahn" and (n_ev > 0 or state is not None):
        gates_all = gates_new if layer.window_gates is None else torch.cat([layer.window_gates, gates_new], dim=1)
        lead = q_len - n_ev  # queries with nothing to write (the window is not full yet)
        if state is None and lead > 0:
            # An empty memory reads exactly zero, so the first `lead` queries need no recurrence at all.
            mem_out, state = memory(query[:, :, lead:], all_k[:, :, :n_ev], all_v[:, :, :n_ev],
                                    gates_all[:, :n_ev], rpos_all[:, :n_ev] >= S, hidden[:, lead:], None)
            mem_out = F.pad(mem_out, (0, 0, 0, 0, lead, 0))
        else:
            k_w = F.pad(all_k[:, :, :n_ev], (0, 0, lead, 0))
            v_w = F.pad(all_v[:, :, :n_ev], (0, 0, lead, 0))
            g_w = F.pad(gates_all[:, :n_ev], (0, 0, 0, 0, lead, 0))
            valid = F.pad(rpos_all[:, :n_ev] >= S, (lead, 0), value=False)
            mem_out, state = memory(query, k_w, v_w, g_w, valid, hidden, state)
        attn_out = attn_out + mem_out
    layer.commit(rpos_new, gates_new, state)
    return attn_out, attn_weights


def _ahn_pre_hook(module, args, kwargs):
    """Stash the layer input and the cache; turn an empty stock cache layer into an AHN one."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.24 / earlier 5.x
    spec = module.__dict__.get("_ahn")
    if spec is not None and spec.memory is not None and isinstance(cache, Cache):
        idx = module.layer_idx
        if cache.layer_class_to_replicate is not None:
            while len(cache.layers) <= idx:
                cache.layers.append(cache.layer_class_to_replicate())
        layer = cache.layers[idx]
        if not isinstance(layer, SinkWindowLayer):
            if type(layer) is not DynamicLayer or layer.get_seq_length() > 0:
                raise ValueError(
                    f"layer {idx} has a {type(layer).__name__} holding tokens; AHN needs an AhnCache "
                    "(or an empty DynamicCache) from the start of the sequence."
                )
            cache.layers[idx] = SinkWindowLayer(spec.config.num_sinks, spec.config.sliding_window)
    module.__dict__["_ahn_ctx"] = (hidden, cache)


def ensure_pre_hook(attn) -> None:
    """Register the stashing pre-hook on an attention module once."""
    if "_ahn_hook" not in attn.__dict__:
        attn.__dict__["_ahn_hook"] = attn.register_forward_pre_hook(_ahn_pre_hook, with_kwargs=True)


AttentionInterface.register(AHN_ATTENTION, ahn_attention_forward)
AttentionMaskInterface.register(AHN_ATTENTION, lambda *args, attention_mask=None, **kwargs: attention_mask)


def attach_ahn(decoder, config, memories, inner="sdpa"):
    """Install AHN on a base decoder (``Qwen2Model``/``LlamaModel``/...): ``memories`` maps layer index ->
    ``AhnModule``; layers without one stay at full attention. Registers each memory as
    ``decoder.layers[i].ahn`` so that its parameters are ``model.layers.{i}.ahn.fn.<param>``."""
    if inner not in INNER_IMPLEMENTATIONS:
        raise ValueError(f"inner attention must be one of {INNER_IMPLEMENTATIONS}, got {inner!r}")
    for i, layer in enumerate(decoder.layers):
        attn = layer.self_attn
        mem = memories.get(i)
        if mem is not None:
            layer.ahn = mem
        elif "ahn" in layer._modules:
            del layer._modules["ahn"]
        spec = AhnLayerSpec(mem.fn if mem is not None else None, config, inner)
        spec.rotary = getattr(decoder, "rotary_emb", None)
        attn.__dict__["_ahn"] = spec
        ensure_pre_hook(attn)


__all__ = ["AHN_ATTENTION", "AhnLayerSpec", "ahn_attention_forward", "attach_ahn"]
