# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Recall slots: up to ``G`` evicted tokens per AHN layer kept exactly, beside sinks and window.

Beyond the official format (``num_recall_slots = 0``, the default, computes the official AHN bit for bit). Every
evicted token is still written into the memory; the slots only add exact keys and values to the attention, so one
softmax runs over sinks + slots + window.

**Which tokens.** Each token gets a *raw score* when it enters a layer: a small learned retention classifier of the
layer's pre-normed input (``model.layers.{i}.ahn.recall``, a linear probe trained on text where later content asks
about earlier facts). A fact needs its neighbours to be answered from, so a token is kept for the best raw score
among the ``before`` tokens after it and the ``after`` tokens before it (its *span score*
``max(raw[j - after .. j + before])``): a selected token comes with the ``before`` tokens that precede it and the
``after`` that follow. The span score of a token is known when it leaves the window (``before < W``).

**The rule.** At every query the slots hold the ``G`` best-scored tokens among those that have left the window
(real tokens that are no sink), best = higher span score, then the earlier token. Equivalently: a leaving token
takes the weakest slot if it beats it. The set at a query depends only on the tokens before it, so a whole
sequence, chunked prefill and token-by-token decoding keep the same slots (tests compare them with a token-by-token
reference). Each token's tenure is one interval: it enters when it leaves the window (if it ranks among the ``G``
best then) and leaves when the ``G``-th token that beats it is evicted, never to return.

**Where they sit.** Every slot is seen at the same distance ``recall_distance`` ``D`` from its query (default: the
window's size ``W``, just beyond the window's edge), whatever its real position: the key, cached with RoPE at its real
position ``j``, is scored as if it sat at ``p - D`` for the query at ``p``. A fact read 30k tokens ago is then no
farther than what the base handles (measured on SmolLM2 at 4k: the needle's own tokens kept at their real distance,
~3,700, are not recalled; the same tokens seen from 512-2,048 tokens are, docs/recall_slots.md).
``recall_distance = 0`` keeps real positions (the control of that measurement).

Hub remote-code payload: flat, sibling imports only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv

from .cache_ahn import TensorMemo
from .memory_ahn import unrotate
from .window_attention import LastValueMemo, clamp_angles, rotated_back, rotated_forward, window_mask

# Raw scores are rounded to multiples of 2^-SCORE_BITS: equal tokens (the same token id in layer 0, repeated text) get
# scores that differ in the last bits between a whole sequence and chunks (a matrix product's rounding depends on the
# row's place in the batch); rounded, they tie exactly, and the tie goes to the earlier token on every path.
SCORE_BITS = 10

# Tokens taken at once by the novelty score's delta rule (its chunked form solves one triangular system per block).
NOVELTY_BLOCK = 64

# Rows of the eviction sequence compared at once when the slot tenures are computed (bounds memory to
# ``block x (G + evicted)`` per row).
PLAN_BLOCK = 512


def beats(s_a, r_a, s_b, r_b):
    """Whether token ``a`` ranks above token ``b``: a higher score, or the same score and an earlier position."""
    return (s_a > s_b) | ((s_a == s_b) & (r_a < r_b))


def raw_scores(recall, hidden: torch.Tensor, rpos: torch.Tensor, num_sinks: int) -> torch.Tensor:
    """``[B, q]`` float32 raw retention scores of new tokens from the layer's pre-normed input ``hidden``
    ``[B, q, hidden]``; ``-inf`` for pads and sinks (``rpos`` ``[B, q]``; ``None``: none), which never take a slot.
    The classifier runs in its own dtype (float32 beside a bf16 base, like the memory)."""
    dtype = recall.weight.dtype
    return rounded_scores(recall(hidden if hidden.dtype == dtype else hidden.to(dtype)).squeeze(-1), rpos, num_sinks)


def rounded_scores(s: torch.Tensor, rpos: torch.Tensor | None, num_sinks: int) -> torch.Tensor:
    """Raw scores ``[B, q]`` rounded to ``SCORE_BITS``, ``-inf`` for pads and sinks (``rpos < num_sinks``; ``rpos``
    ``None``: the caller knows every token is real and no sink, a steady decoding step's)."""
    s = torch.round((s if s.dtype == torch.float32 else s.float()) * 2.0**SCORE_BITS) / 2.0**SCORE_BITS
    return s if rpos is None else s.masked_fill(rpos.to(s.device) < num_sinks, float("-inf"))


class LayerPool:
    """The running mean of the raw scores of one forward's AHN layers (``recall_pool="mean"``): the AHN layers of a
    model share one pool and are called in order with the same new tokens, the first (``rank`` 0) starting it; each
    gets the mean of its own raw scores and those of the AHN layers before it, rounded like a raw score. A token most
    layers score high then reaches the slots of most layers (one layer's own score misses it in a few: measured,
    docs/recall_slots.md). Sums of rounded scores are exact, so every path gets the same means."""

    def __init__(self):
        self.total = None
        self.count = 0

    def mean(self, rank: int, raw: torch.Tensor, rpos: torch.Tensor, num_sinks: int) -> torch.Tensor:
        if rank == 0:
            self.total, self.count = raw, 0
        elif self.count != rank or self.total is None or self.total.shape != raw.shape:
            raise RuntimeError(
                f"recall_pool='mean' ranks a layer's tokens by the mean score of every AHN layer up to it, so the AHN "
                f"layers must run in order on the same tokens in one forward; AHN layer {rank} ran after "
                f"{self.count} of them (a layer run on its own, or recomputed by gradient checkpointing). Run the "
                "whole model in one pass, or use recall_pool='layer' (each layer's own score).")
        else:
            self.total = self.total + raw
        self.count = rank + 1
        return rounded_scores(self.total / self.count, rpos, num_sinks)


def novelty_scores(keys: torch.Tensor, values: torch.Tensor, rotation, rpos: torch.Tensor, num_sinks: int, state):
    """The training-free raw score of new tokens: how badly a plain delta-rule memory of every token before them
    (beta = 1, no decay, keys before RoPE and values both L2-normalised, per KV head) predicts each one's value,
    ``||v - S^T k||`` averaged over the KV heads. Repeated text is learned and scores near 0; a fact that stands out
    from its surroundings (a pass key in filler) scores high. Exact in float64 (float32 on MPS), so that paths that
    split the tokens differently agree to the last bits that matter (``SCORE_BITS``).

    ``keys``/``values`` ``[B, Hkv, q, D]`` as cached (after RoPE), ``rotation`` RoPE's ``(cos, sin)`` ``[B, q, D]`` of
    their positions, ``rpos`` ``[B, q]`` real positions (pads, ``-1``, are not written), ``state`` ``[B, Hkv, D, D]``
    or ``None`` (nothing read yet). Returns ``(scores [B, q] rounded, -inf for pads and sinks; state after)``. The
    tokens are taken ``NOVELTY_BLOCK`` at a time in the delta rule's chunked (UT) form:
    ``(I + tril(K K^T, -1)) U = V - K S``, ``S += K^T U``; ``U``'s rows are the residuals."""
    if rotation is None:
        raise ValueError("the novelty score of recall slots reads keys before RoPE and this layer got no rotary "
                         "(cos, sin): use the learned score (recall_score='learned') for this base.")
    dt = torch.float32 if keys.device.type == "mps" else torch.float64
    cos, sin = (r.to(dt)[:, None] for r in rotation)
    k = F.normalize(unrotate(keys.to(dt), cos, sin), dim=-1) * (rpos >= 0)[:, None, :, None].to(keys.device)
    v = F.normalize(values.to(dt), dim=-1)
    B, H, T, D = k.shape
    if state is None:
        state = k.new_zeros(B, H, D, v.shape[-1])
    residuals = []
    for t0 in range(0, T, NOVELTY_BLOCK):
        kb, vb = k[:, :, t0: t0 + NOVELTY_BLOCK], v[:, :, t0: t0 + NOVELTY_BLOCK]
        u = vb - kb @ state
        if kb.shape[2] > 1:
            a = torch.tril(kb @ kb.transpose(-1, -2), -1) + torch.eye(kb.shape[2], dtype=dt, device=kb.device)
            u = torch.linalg.solve_triangular(a, u, upper=False, unitriangular=True)
        state = state + kb.transpose(-1, -2) @ u
        residuals.append(u.norm(dim=-1))
    scores = torch.cat(residuals, dim=-1).mean(1)
    return rounded_scores(scores, rpos, num_sinks), state


def span_scores(raw_ext: torch.Tensor, before: int, after: int, count: int) -> torch.Tensor:
    """Span scores ``[B, count]`` of the first ``count`` tokens of ``raw_ext[:, after:]`` (``raw_ext`` ``[B, after +
    n]`` starts with the raw scores of the ``after`` tokens before them): ``max(raw[j - after .. j + before])``."""
    k = before + after + 1
    need = count + k - 1
    if raw_ext.shape[1] < need:  # (callers guarantee before < W; kept total for short inputs)
        raw_ext = F.pad(raw_ext, (0, need - raw_ext.shape[1]), value=float("-inf"))
    return raw_ext[:, :need].unfold(1, k, 1).amax(-1)


@dataclass
class SlotPlan:
    """Which of the candidate tokens (the slots before a step, then the tokens it evicts, in eviction order) is a
    slot at which query of the step. ``enter``/``leave`` ``[B, C]``: a candidate is a slot while ``enter <= e <
    leave``, ``e`` = the number of the step's evictions so far; ``keep`` ``[B, C]``: candidates that are a slot at
    some ``e`` of the step (the others are never attended)."""

    scores: torch.Tensor  # [B, C] span scores (-inf: empty slot or a token that may not take one)
    rpos: torch.Tensor  # [B, C] real positions (-1: empty)
    enter: torch.Tensor  # [B, C]
    leave: torch.Tensor  # [B, C]
    keep: torch.Tensor  # [B, C]
    num_evicted: int


def plan_slots(slot_scores, slot_rpos, ev_scores, ev_rpos, ev_valid, G: int) -> SlotPlan:
    """The tenures of the ``G`` old slots (``slot_scores``/``slot_rpos`` ``[B, G]``) and of ``n`` tokens evicted in
    order (``ev_*`` ``[B, n]``; ``ev_valid``: real and no sink). Candidate ``c`` is a slot after ``e`` evictions iff it
    has been evicted and fewer than ``G`` evicted tokens beat it; the count only grows, so each tenure is one
    interval, found from a running count, ``PLAN_BLOCK`` evictions at a time.

    Once every slot is taken, a token that does not beat the weakest slot can never take one, nor beat anything that
    can (the order is total): only the tokens that beat it are planned (``_plan_contenders``), the rest never kept,
    which makes a steady chunk's plan cost what its few contenders cost instead of ``n x (G + n)``."""
    B, n = ev_scores.shape
    if n and bool((slot_rpos >= 0).all()):
        return _plan_contenders(slot_scores, slot_rpos, ev_scores, ev_rpos, ev_valid, G)
    return _plan_all(slot_scores, slot_rpos, ev_scores, ev_rpos, ev_valid, G)


def _plan_contenders(slot_scores, slot_rpos, ev_scores, ev_rpos, ev_valid, G: int) -> SlotPlan:
    """``plan_slots`` with every slot taken: plan the evicted tokens that beat the weakest slot (``k`` per row at
    most, in eviction order) and map their tenures back to eviction counts."""
    B, n = ev_scores.shape
    w = weakest_slot(slot_scores, slot_rpos)[:, None]
    could = ev_valid & beats(ev_scores, ev_rpos, slot_scores.gather(1, w), slot_rpos.gather(1, w))
    k = int(could.sum(1).max())
    order = torch.sort((~could).to(torch.int8), dim=1, stable=True).indices[:, :k]  # contenders first, in order
    sub = _plan_all(slot_scores, slot_rpos, ev_scores.gather(1, order), ev_rpos.gather(1, order),
                    could.gather(1, order), G)
    dev = ev_scores.device
    # eviction count after the j-th contender (j = 1..k); 0 and "never" (k + 1) keep their meaning
    count_at = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=dev), order + 1,
                          torch.full((B, 1), n + 1, dtype=torch.long, device=dev)], dim=1)
    leave_sub = count_at.gather(1, sub.leave)
    Gs = slot_scores.shape[1]
    cols = torch.cat([torch.arange(Gs, device=dev).expand(B, Gs), order + Gs], dim=1)  # sub column -> column
    full = lambda fill, dtype: torch.full((B, Gs + n), fill, dtype=dtype, device=dev)  # noqa: E731
    enter = torch.cat([torch.zeros(B, Gs, dtype=torch.long, device=dev),
                       torch.arange(1, n + 1, device=dev).expand(B, n)], dim=1)
    leave = full(0, torch.long).scatter(1, cols, leave_sub)
    keep = full(False, torch.bool).scatter(1, cols, sub.keep)
    scores = torch.cat([slot_scores, ev_scores.masked_fill(~ev_valid, float("-inf"))], dim=1)
    rpos = torch.cat([slot_rpos, torch.where(ev_valid, ev_rpos, -1)], dim=1)
    return SlotPlan(scores, rpos, enter, leave, keep, n)


def _plan_all(slot_scores, slot_rpos, ev_scores, ev_rpos, ev_valid, G: int) -> SlotPlan:
    B, n = ev_scores.shape
    old_valid = slot_rpos >= 0
    ev_scores = ev_scores.masked_fill(~ev_valid, float("-inf"))
    s = torch.cat([slot_scores, ev_scores], dim=1)  # [B, C]
    r = torch.cat([slot_rpos, torch.where(ev_valid, ev_rpos, -1)], dim=1)
    valid = torch.cat([old_valid, ev_valid], dim=1)
    dev = s.device
    enter = torch.cat([torch.zeros(B, slot_scores.shape[1], dtype=torch.long, device=dev),
                       torch.arange(1, n + 1, device=dev).expand(B, n)], dim=1)
    count = (beats(slot_scores[:, :, None], slot_rpos[:, :, None], s[:, None], r[:, None])
             & old_valid[:, :, None]).sum(1)  # [B, C]: old slots beating each candidate
    leave = torch.where(count >= G, 0, n + 1)
    for k0 in range(0, n, PLAN_BLOCK):
        k1 = min(n, k0 + PLAN_BLOCK)
        b = beats(ev_scores[:, k0:k1, None], ev_rpos[:, k0:k1, None], s[:, None], r[:, None])
        b &= ev_valid[:, k0:k1, None]
        cum = count[:, None] + b.cumsum(1)  # [B, k1 - k0, C]: count after each eviction
        crossed = cum >= G
        first = torch.where(crossed.any(1), crossed.float().argmax(1) + k0 + 1, n + 1)
        leave = torch.minimum(leave, first)
        count = cum[:, -1]
    keep = valid & (enter < leave)
    return SlotPlan(s, r, enter, leave, keep, n)


def _packed(plan: SlotPlan, chosen: torch.Tensor, count: int, keys, values, slot_keys, slot_values):
    """The ``chosen`` ``[B, C]`` candidates (old slots, then the step's evicted tokens: ``keys``/``values``
    ``[B, Hkv, >= n, D]`` start with them) packed first: ``(idx [B, count], keys, values [B, Hkv, count, D],
    ok [B, count])``."""
    n = plan.num_evicted
    idx = torch.sort(chosen.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :count]

    def take(own, step):
        x = torch.cat([own, step[:, :, :n]], dim=2)
        return x.gather(2, idx[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1]))

    return idx, take(slot_keys, keys), take(slot_values, values), chosen.gather(1, idx)


def gather_candidates(plan: SlotPlan, keys, values, slot_keys, slot_values):
    """The candidates a step attends to (``keep``), packed: ``(idx [B, M], keys, values [B, Hkv, M, D], ok [B, M])``."""
    return _packed(plan, plan.keep, int(plan.keep.sum(1).max()), keys, values, slot_keys, slot_values)


def slot_visibility(plan: SlotPlan, idx, ok, e_query: torch.Tensor) -> torch.Tensor:
    """``[B, q, M]``: packed candidate ``m`` is a slot for the query that has seen ``e_query[i]`` evictions."""
    enter, leave = plan.enter.gather(1, idx), plan.leave.gather(1, idx)
    e = e_query[None, :, None]
    return ok[:, None] & (enter[:, None] <= e) & (e < leave[:, None])


def slots_after(plan: SlotPlan, keys, values, slot_keys, slot_values, G: int):
    """The slots after the step: ``(keys, values [B, Hkv, G, D], scores, rpos [B, G])`` (empty: -inf / -1)."""
    alive = plan.keep & (plan.leave > plan.num_evicted)  # at most G per row
    idx, k, v, ok = _packed(plan, alive, G, keys, values, slot_keys, slot_values)
    scores = torch.where(ok, plan.scores.gather(1, idx), float("-inf"))
    rpos = torch.where(ok, plan.rpos.gather(1, idx), -1)
    return k, v, scores, rpos


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` RoPE angles (rotate-half layout) of ``positions`` (any shape, float32)."""
    ang = positions.to(torch.float32)[..., None] * inv_freq.to(device=positions.device, dtype=torch.float32)
    return torch.cat([ang, ang], dim=-1)


_QUERY_ROTATION_MEMO = LastValueMemo()


def query_rotation(qpos: torch.Tensor, distance: int, inv_freq: torch.Tensor):
    """``(cos, sin)`` ``[B, 1, q, D]`` of the angles of ``qpos - distance`` (``qpos`` ``[B, q]``): the rotation by
    which a chunk's queries score the slots (``R(-(p - distance)) q``); the same in every layer of a forward, so
    built once for all of them."""
    key = (distance, str(qpos.device))
    hit = _QUERY_ROTATION_MEMO.get(key, (qpos, inv_freq))
    if hit is not None:
        return hit
    ang = rope_angles(qpos - distance, inv_freq)[:, None]
    return _QUERY_ROTATION_MEMO.put(key, (qpos, inv_freq), (ang.cos(), ang.sin()))


def slot_keys_at(keys: torch.Tensor, rpos: torch.Tensor, query_pos, distance: int, inv_freq) -> torch.Tensor:
    """Slot keys ``[B, Hkv, M, D]`` (cached with RoPE at their real positions ``rpos`` ``[B, M]``) moved to
    ``query_pos - distance`` (``query_pos``: an int or ``[B, 1]``): rotated by ``query_pos - distance - rpos``
    (``distance`` 0: left at their real positions)."""
    if not distance:
        return keys
    ang = rope_angles(query_pos - distance - rpos, inv_freq)[:, None]  # [B, 1, M, D]
    return rotated_forward(keys, ang.cos(), ang.sin()).to(keys.dtype)


def slotted_attention(spec, module, query, keys, values, rpos_keys, qpos, n_old, W, S, cand_k, cand_v, cand_rpos,
                      cand_vis, distance, inv_freq, scaling, store=None, plans=None):
    """Sinks + slots + window attention of a chunk's ``q`` queries: one softmax per query over the sink keys, the
    slot candidates it sees (``cand_vis`` ``[B, q, M]``, seen at ``distance``) and its window, query block by block,
    in float32.

    ``keys``/``values``: ``[store (P), old (n_old), new (q)]`` with ``store = (store_vis [B, P])``, or ``[old, new]``
    (a whole sequence: no store); ``rpos_keys`` ``[B, n_old + q]``. ``plans``: the blocks of ``block_plans`` (the
    BLOCKED path's), or ``None`` for one block over every key. A slot at ``j`` is scored with the query rotated back
    to ``distance`` (``R(-(p - distance)) q . R(-j) k``); sinks are clamped beyond the base's context as everywhere.
    Returns ``[B, q, H, D]``."""
    B, H, L, D = query.shape
    dev = query.device
    P = 0 if store is None else store.shape[1]
    if plans is None:
        qidx = torch.arange(n_old, n_old + L, device=dev)
        kidx = torch.arange(n_old + L, device=dev)
        vis = window_mask(qidx, kidx, rpos_keys, W, S)
        kis = (rpos_keys >= 0) & (rpos_keys < S)
        if P:
            vis = torch.cat([store[:, None, :].to(dev).expand(B, L, P), vis], dim=-1)
            kis = torch.cat([torch.ones_like(store, dtype=torch.bool), kis], dim=-1)
        plans = [(0, L, torch.arange(P + n_old + L, device=dev), vis[:, None], kis)]
    rep = H // keys.shape[1]
    scale = scaling if scaling is not None else D**-0.5
    free = slot_keys_free(cand_k, cand_rpos, distance, inv_freq)
    free, cand_vf = repeat_kv(free, rep), repeat_kv(cand_v, rep).float()
    out = query.new_empty(B, L, H, D)
    for q0, q1, aidx, mask, key_is_sink in plans:
        q = query[:, :, q0:q1].float()
        k = repeat_kv(keys[:, :, aidx], rep).float()
        scores = (q @ k.transpose(-1, -2)) * scale
        ang = clamp_angles(spec, q, qpos[:, q0:q1], key_is_sink)
        if ang is not None:  # queries beyond the base's context see the sinks from its last position
            clamped = (rotated_back(q, ang) @ k.transpose(-1, -2)) * scale
            scores = torch.where(key_is_sink[:, None, None, :].to(dev), clamped, scores)
        q_slot = rotated_back(q, rope_angles(qpos[:, q0:q1] - distance, inv_freq)[:, None]) if distance else q
        slot_scores = (q_slot @ free.transpose(-1, -2)) * scale
        allowed = torch.cat([cand_vis[:, None, q0:q1].to(dev), mask.to(dev)], dim=-1)
        weights = torch.softmax(torch.cat([slot_scores, scores], dim=-1).masked_fill(~allowed, float("-inf")), -1)
        v = torch.cat([cand_vf, repeat_kv(values[:, :, aidx], rep).float()], dim=2)
        out[:, q0:q1] = (weights @ v).transpose(1, 2).to(out.dtype)
    return out


def slot_keys_free(cand_k, cand_rpos, distance, inv_freq):
    """The slot candidates' keys ``[B, Hkv, M, D]`` (cached with RoPE at ``cand_rpos``) with RoPE undone
    (``R(-j) k``, float32), which a query rotated back to ``p - distance`` scores as seen from ``distance`` tokens;
    ``distance`` 0: the cached keys (real positions)."""
    if not distance:
        return cand_k.float()
    return rotated_forward(cand_k, *_cos_sin(rope_angles(-cand_rpos.clamp_min(0), inv_freq)[:, None]))


def rotation_matrix(position: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """``[D, D]`` float32 ``M`` with ``k @ M = R(position) k`` (RoPE's rotate-half layout, ``rotated_forward``'s
    rotation as one product: ``[[diag(cos), diag(sin)], [-diag(sin), diag(cos)]]``)."""
    ang = inv_freq.to(torch.float32) * float(position)
    c, s = torch.diag(ang.cos()), torch.diag(ang.sin())
    return torch.cat([torch.cat([c, s], dim=1), torch.cat([-s, c], dim=1)], dim=0)


def steady_slot_keys(layer, keys: torch.Tensor, rpos: torch.Tensor, position: int, distance: int, inv_freq,
                     rotation: TensorMemo) -> torch.Tensor:
    """The slot keys ``[B, Hkv, G, D]`` (float32) of a steady decoding step's query at ``position``, seen
    ``distance`` before it: the slots' free keys (``slot_keys_free``, kept in ``layer.free_slot_keys_memo`` while
    the slots are the same, unmodified tensors: most steps admit nothing) times the step's rotation to
    ``position - distance`` (``rotation_matrix``, kept in ``rotation``, which a model's AHN layers share:
    ``attach_ahn``). Equals ``slot_keys_at`` up to rounding."""
    free = layer.free_slot_keys_memo.get((keys, rpos), (distance,),
                                         lambda: slot_keys_free(keys, rpos, distance, inv_freq))
    at = position - distance
    return free @ rotation.get((inv_freq,), (at,), lambda: rotation_matrix(at, inv_freq))


def _cos_sin(ang):
    return ang.cos(), ang.sin()


def weakest_slot(slot_scores, slot_rpos):
    """``[B]``: the index of the slot every other beats (lowest score, then the latest position)."""
    low = slot_scores == slot_scores.amin(1, keepdim=True)
    return torch.where(low, slot_rpos, -2).argmax(1)


__all__ = ["NOVELTY_BLOCK", "PLAN_BLOCK", "SCORE_BITS", "LayerPool", "SlotPlan", "beats",
           "gather_candidates", "novelty_scores", "plan_slots", "query_rotation", "raw_scores", "rope_angles",
           "rotation_matrix", "rounded_scores", "slot_keys_at", "slot_keys_free", "slot_visibility", "slots_after",
           "slotted_attention", "span_scores", "steady_slot_keys", "weakest_slot"]
