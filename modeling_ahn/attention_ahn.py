# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""The ``"ahn"`` attention implementation: sinks + sliding-window attention plus the AHN read-out.

Augmenting a base model uses only transformers' extension points:

* ``AttentionInterface.register("ahn", ahn_attention_forward)``: the base's own attention module
  computes q/k/v (with its biases, q/k norms and RoPE), updates the cache, then calls this function,
  which attends over sinks + window and adds the memory read-out *before* the base ``o_proj``.
* ``AttentionMaskInterface.register("ahn", ...)``: hands the raw 2D padding mask through, since the
  sink+window pattern with per-row padding cannot be expressed by transformers' mask functions.
* a forward pre-hook on each ``self_attn`` that hands the layer's pre-normed input (the AHN gates are computed
  from it) and the cache, which the attention function does not receive, to the layer's :class:`AhnLayerSpec`.

One call runs one :class:`AttentionPath`, chosen by :func:`choose_path` from the layer's cache step
(``cache_ahn``) and the inputs; the window/sink kernels behind the paths are in ``window_attention``.

Hub remote-code payload: flat, sibling imports only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface

from .cache_ahn import ChunkStep, SinkWindowLayer, StaticStep, SteadyStep, TensorMemo
from .configuration_ahn import recall_score_of
from .recall_slots import (
    LayerPool,
    gather_candidates,
    novelty_scores,
    plan_slots,
    query_rotation,
    raw_scores,
    slot_keys_at,
    slot_keys_free,
    slot_visibility,
    slots_after,
    slotted_attention,
    span_scores,
    steady_slot_keys,
)
from .window_attention import (
    BandExtra,
    banded_window_attention,
    block_plans,
    blocked_window_attention,
    fresh_band_available,
    fresh_window_attention,
    full_attention,
    inner_attention,
    rotated_forward,
    sink_angles,
    sink_rotation,
    sinks_rotated_forward,
    strided_band_attention,
    strided_band_available,
    window_attention,
    window_mask,
)

AHN_ATTENTION = "ahn"
INNER_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class LayerInputs:
    """What the pre-hook hands to the attention function of one call: the layer's pre-normed input
    ``[B, q, hidden]``, the cache (``None``: a whole sequence without cache) and RoPE's ``(cos, sin)`` of the new
    tokens (the base's ``position_embeddings``; the memory's ``q_proj`` reads before RoPE)."""

    hidden: torch.Tensor
    cache: Cache | None
    rotation: tuple[torch.Tensor, torch.Tensor] | None = None


class AhnLayerSpec:
    """What the attention function needs to know about one layer, as ``self_attn.ahn_spec`` (a plain attribute,
    not a submodule, so the base's ``state_dict`` is unchanged). Made by :func:`make_layer_spec`.

    ``memory`` is ``None`` for a layer kept at full attention. ``config`` holds the runtime settings
    (``sliding_window``, ``num_sinks``, ``clamp_sink_positions``): changing them takes effect on the next fresh
    cache. ``base_config``: the base's config, whose ``max_position_embeddings`` is its trained context ``P``;
    ``rotary``: the base's rotary embedding module; both serve sink clamping beyond ``P``.
    """

    def __init__(self, memory, config, inner="sdpa", rotary=None, base_config=None):
        if inner not in INNER_IMPLEMENTATIONS:
            raise ValueError(f"inner attention must be one of {INNER_IMPLEMENTATIONS}, got {inner!r}")
        self.memory = memory
        self.config = config
        self.inner = inner
        # "ahn": sinks + window + memory; "swa": sinks + window only (the baseline a fresh AHN equals);
        # "full": the base's own causal attention (the distillation teacher; no AHN cache);
        # MEMORY_ONLY: the memory's read-out alone, whole sequences only (layer-local training adds it to a window
        # attention it has computed already)
        self.mode = "ahn"
        # This code's own implementation: if another copy of this code (the installed package and a
        # repo's remote code) registered "ahn" last, its dispatcher still calls the right one.
        self.attention = ahn_attention
        self.rotary = rotary
        self.base_config = base_config
        self.recall = None  # the recall slots' retention classifier (AhnModule.recall), if the adapter has one
        # recall_pool="mean": the pool the model's AHN layers share, and this layer's place among them (attach_ahn)
        self.layer_pool, self.pool_rank = LayerPool(), 0
        self.slot_rotation = TensorMemo()  # a steady step's slot rotation, shared by the model's AHN layers
        self.inputs: LayerInputs | None = None  # set by the pre-hook, taken by the attention function

    @property
    def num_recall_slots(self) -> int:
        """``G`` in force for this layer's attention: the config's, in modes ``"ahn"`` and ``"swa"``."""
        return int(getattr(self.config, "num_recall_slots", 0)) if self.mode in ("ahn", "swa") else 0

    def recall_geometry(self, head_dim: int):
        """``(distance, inv_freq)``: every recall slot is seen ``distance`` tokens before its query
        (``recall_distance``, default the window's size; 0: at its real position), which moves its key with the base's
        rotary frequencies."""
        distance = getattr(self.config, "recall_distance", None)
        distance = self.config.sliding_window if distance is None else int(distance)
        inv_freq = self.inv_freq()
        if distance and (inv_freq is None or 2 * inv_freq.numel() != head_dim):
            raise ValueError("recall slots move their keys with the base's rotary embedding, and this layer has no "
                             "full-dimension RoPE (rotary_emb.inv_freq): set recall_distance=0 (real positions) or "
                             "num_recall_slots=0 for this base.")
        return distance, inv_freq

    def recall_scores(self, layer, inputs, keys, values, rpos, steady=False):
        """The recall scores ``[B, q]`` of a step's new tokens (``keys``/``values`` ``[B, Hkv, q, D]`` as cached,
        ``rpos`` ``[B, q]``) by the score in force (``config.recall_score``), pooled over the AHN layers up to this one
        by ``config.recall_pool``, and the novelty score's delta-rule state after them (``None`` for the learned
        score): ``(scores, novelty_state)``. ``steady``: a steady decoding step, whose new token is real and no sink
        (nothing to mask)."""
        masked = None if steady else rpos
        S = layer.num_sinks
        kind = recall_score_of(self.config.recall_score, self.config.recall_head)
        pool = self.config.recall_pool
        if layer.scored_by not in (None, (kind, pool)):
            raise ValueError(f"this cache's recall slots were scored with recall_score={layer.scored_by[0]!r}, "
                             f"recall_pool={layer.scored_by[1]!r} and the model now uses {kind!r}, {pool!r}: start a "
                             "new cache (model.new_cache()) after changing them.")
        layer.scored_by = (kind, pool)
        if kind == "novelty":
            raw, state = novelty_scores(keys, values, inputs.rotation, rpos, S, layer.novelty_state)
        elif self.recall is None:
            raise ValueError(
                "recall_score='learned' needs a trained retention classifier and this layer has none: train one with "
                "`ahn train-recall`, load an adapter that carries one (config recall_head=True), or use "
                "recall_score='novelty'.")
        else:
            raw, state = raw_scores(self.recall, inputs.hidden, masked, S), None
        if pool == "mean":
            raw = self.layer_pool.mean(self.pool_rank, raw, masked, S)
        return raw, state

    @property
    def memory_on(self) -> bool:
        """Whether the memory takes part in this mode (``"ahn"``, or its read-out alone): writes, gates, reads."""
        return self.mode in ("ahn", MEMORY_ONLY)

    def take_inputs(self) -> LayerInputs | None:
        inputs, self.inputs = self.inputs, None
        return inputs

    @property
    def sink_position_limit(self):
        """The base's trained context ``P`` if queries beyond it get clamped sink distances, else ``None``."""
        if not getattr(self.config, "clamp_sink_positions", True) or not self.config.num_sinks:
            return None
        return getattr(self.base_config, "max_position_embeddings", None)

    def inv_freq(self):
        return getattr(self.rotary, "inv_freq", None) if self.rotary is not None else None

    def clamp_inv_freq(self, head_dim: int):
        """The rotary frequencies to clamp sinks with, or ``None`` where nothing is clamped (clamping off, no sinks, or
        no full-dimension rotary embedding to undo)."""
        inv_freq = self.inv_freq() if self.sink_position_limit is not None else None
        return inv_freq if inv_freq is not None and 2 * inv_freq.numel() == head_dim else None


def make_layer_spec(memory, config, base_config, rotary=None, inner="sdpa") -> AhnLayerSpec:
    """The one way to make a layer's spec (the model's ``attach_ahn`` and the PEFT layers): ``base_config`` gives the
    base's trained context and ``rotary`` (the base decoder's ``rotary_emb``) its frequencies, for sink clamping."""
    return AhnLayerSpec(memory, config, inner, rotary=rotary, base_config=base_config)


def get_layer_spec(attn) -> AhnLayerSpec | None:
    """The :class:`AhnLayerSpec` of an attention module (``None``: not an AHN layer)."""
    return attn.__dict__.get("ahn_spec")


def set_layer_spec(attn, spec: AhnLayerSpec | None) -> None:
    """Install (or, with ``None``, remove) a layer's spec, and the pre-hook that feeds it."""
    if spec is None:
        attn.__dict__.pop("ahn_spec", None)
        return
    attn.ahn_spec = spec
    if "_ahn_hook" not in attn.__dict__:
        attn._ahn_hook = attn.register_forward_pre_hook(_ahn_pre_hook, with_kwargs=True)


def ahn_attention_forward(module, *args, **kwargs):
    """The registered ``"ahn"`` attention: dispatches to the implementation of the layer's own AHN code."""
    spec = get_layer_spec(module)
    if spec is None:
        raise RuntimeError(
            "The 'ahn' attention implementation is active on a layer without AHN; build the model with "
            "AhnForCausalLM.from_base(...) instead of setting attn_implementation='ahn' by hand."
        )
    return spec.attention(module, *args, **kwargs)


# ---------------------------------------------------------------------- the plan


MEMORY_ONLY = "memory"


class AttentionPath(enum.Enum):
    """How one call of the ``"ahn"`` attention computes its result (see :func:`choose_path`)."""

    FULL = "full"  # a layer without memory, or attention mode "full": the base's own causal attention
    STATIC_STEP = "static_step"  # one token over a static cache's fixed buffers (compiled / CUDA-graph decoding)
    STEADY_STEP = "steady_step"  # one token, window full, every sink stored, no padding: no mask at all
    BANDED_PREFILL = "banded_prefill"  # a steady cached chunk longer than W: query blocks as batch rows, band mask
    FRESH_PREFILL = "fresh_prefill"  # a chunk starting the sequence (no padding), CPU: causal head, strided band
    BLOCKED = "blocked"  # a whole sequence or a chunk longer than W: query blocks over the keys they can reach
    MASKED = "masked"  # anything else (short chunks, padded steps): one call under a dense sink + window mask


class ChunkFacts:
    """What the choice among the chunk paths depends on, for one layer's :class:`ChunkStep` (the host-syncing
    facts are computed on first use, so a path that needs none of them pays nothing)."""

    def __init__(self, spec, layer: SinkWindowLayer, step: ChunkStep, mask2d, q_len: int, whole_sequence: bool,
                 dropout_active: bool = False):
        self.spec, self.layer, self.step, self.mask2d = spec, layer, step, mask2d
        self.q_len, self.whole_sequence, self.dropout_active = q_len, whole_sequence, dropout_active
        self.window, self.sinks = layer.sliding_window, layer.num_sinks

    @cached_property
    def rpos_new(self) -> torch.Tensor:  # [B, q] real positions of the new tokens, -1 = pad
        return self.layer.real_positions(None if self.mask2d is None else self.mask2d[:, -self.q_len:], self.q_len)

    @cached_property
    def rpos_all(self) -> torch.Tensor:  # [B, num_old + q]: the window's and the new tokens'
        return torch.cat([self.layer.window_rpos, self.rpos_new], dim=-1)

    @cached_property
    def steady_chunk(self) -> bool:
        """Every query sees the sink store and exactly the ``W`` keys ending at itself: the window is full, every sink
        is in the store, and no pad or sink token is among window + new."""
        return (not self.whole_sequence and self.step.num_old >= self.window - 1
                and bool(self.layer.sink_filled.all()) and int(self.rpos_all.min()) >= self.sinks)

    @cached_property
    def fresh_chunk(self) -> bool:
        """The chunk starts every row's sequence without padding: its tokens sit at positions ``0 .. q - 1``."""
        return (self.step.num_old == 0 and int(self.rpos_new.min()) == 0
                and int(self.rpos_new[:, -1].min()) == self.q_len - 1)

    @cached_property
    def blocks(self):
        """The query blocks of the BLOCKED path, or ``None`` where blocking saves nothing (memoised across layers)."""
        return block_plans(self.rpos_all.to(self.step.keys.device), self.window, self.sinks, self.step.num_old,
                           self.q_len, None if self.whole_sequence else self.layer.sink_filled, self.step.keys.device)


def choose_path(spec, step, facts: ChunkFacts | None) -> AttentionPath:
    """The one decision of how a call runs. ``step``: the cache layer's step (``None`` for a layer without memory
    or in mode ``"full"``); ``facts``: for a :class:`ChunkStep`, what the chunk paths depend on."""
    if step is None:
        return AttentionPath.FULL
    if isinstance(step, StaticStep):
        return AttentionPath.STATIC_STEP
    if isinstance(step, SteadyStep):
        return AttentionPath.STEADY_STEP
    long = facts.whole_sequence or facts.q_len > facts.window
    if spec.inner != "sdpa" or not long:  # (eager attention returns weights: the one-call form)
        return AttentionPath.MASKED
    if facts.steady_chunk:
        return AttentionPath.BANDED_PREFILL
    if facts.q_len > facts.window + facts.sinks and facts.fresh_chunk and fresh_band_available(
            spec, facts.step.keys, facts.step.values, facts.dropout_active, facts.window, facts.sinks):
        return AttentionPath.FRESH_PREFILL
    return AttentionPath.BLOCKED if facts.blocks is not None else AttentionPath.MASKED


# ---------------------------------------------------------------------- the paths


def memory_keys(spec, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The keys ``[B, Hkv, n, D]`` (as cached) that enter the memory, at real positions ``positions`` ``[B, n]``
    (-1 = pad, never written): the cached keys themselves unless the memory writes from keys before RoPE (its
    ``use_k_proj`` / ``position_free`` options), which undoes RoPE with the base's own rotary embedding."""
    memory = spec.memory
    if not memory.needs_key_rotation:
        return keys
    if spec.rotary is None:
        raise ValueError("use_k_proj / position_free memories need the base's rotary embedding (the layer has none)")
    rotation = spec.rotary(keys.float(), positions.to(keys.device).clamp_min(0))
    return memory.write_keys(keys, rotation)


def _static_step(spec, module, layer, query, key, value, inputs, mask2d, scaling, dropout):
    """STATIC_STEP: one token per row over a :class:`StaticSinkWindowLayer`, the same result as the dynamic paths
    with fixed shapes and no host sync. ``key``/``value`` are ``[sink store (S), recall slots (G), ring (W)]``, the
    new token already in its slot, the token it evicted (``layer.step.evicted``) already admitted to the slots if it
    beat the weakest."""
    step: StaticStep = layer.step
    ev = step.evicted
    S, G = layer.num_sinks, layer.num_recall_slots
    B = query.shape[0]
    rpos_new = layer.real_positions(None if mask2d is None else mask2d[:, -1:], 1)  # [B, 1]
    ring_rpos = layer.ring_rpos.index_copy(1, step.slot, rpos_new)
    is_slot = torch.arange(layer.sliding_window, device=query.device) == step.slot
    # visible: filled sink slots, filled recall slots, real tokens of the ring (all within the window), the query
    slot_parts, no_sink = [], []
    scores_new = novelty = None
    if G:  # the slots, seen `recall_distance` before this query (the stored keys stay at their real positions)
        distance, slot_freq = spec.recall_geometry(query.shape[-1])
        moved = slot_keys_at(key[:, :, S: S + G], layer.slot_rpos, rpos_new, distance, slot_freq)
        key = torch.cat([key[:, :, :S], moved, key[:, :, S + G:]], dim=2)
        slot_parts, no_sink = [layer.slot_rpos >= 0], [torch.zeros_like(layer.slot_rpos, dtype=torch.bool)]
        scores_new, novelty = spec.recall_scores(layer, inputs, layer.ring_keys.index_select(2, step.slot),
                                                 layer.ring_values.index_select(2, step.slot), rpos_new)
    mask = torch.cat([layer.sink_filled, *slot_parts, (ring_rpos >= 0) | is_slot], dim=-1)[:, None, None, :]
    inv_freq = spec.clamp_inv_freq(query.shape[-1])
    if inv_freq is not None:
        key_is_sink = torch.cat([torch.ones_like(layer.sink_filled), *no_sink, (ring_rpos >= 0) & (ring_rpos < S)],
                                dim=-1)
        key = sinks_rotated_forward(key, sink_angles(spec, rpos_new, inv_freq, query.device), key_is_sink)
    attn_out, attn_weights = inner_attention(spec, module, query, key, value, mask, scaling, dropout)
    memory, hidden = spec.memory, inputs.hidden
    gates_new = memory.write_gates(hidden)  # [B, 1, G, H]
    layer.ensure_buffers(gates_new, B, query.shape[1], query.shape[-1], value.shape[-1])
    state = None
    if spec.mode == "ahn":  # the evicted token enters memory if it is real and no sink; then the query reads
        valid = ev.rpos[:, None] >= S
        ev_gates = ev.gates if ev.gates is not None else torch.zeros_like(gates_new)
        ev_keys = memory_keys(spec, ev.keys, ev.rpos[:, None])
        mem_out, state = memory(memory.read_query(query, inputs.rotation), ev_keys, ev.values, ev_gates, valid,
                                hidden, layer.recurrent_state)
        attn_out = attn_out + mem_out
    layer.end_step(rpos_new, gates_new, state, scores_new=scores_new, novelty_state=novelty)
    return attn_out, attn_weights


def _steady_step(spec, module, layer, query, key, value, inputs, scaling, dropout):
    """STEADY_STEP: one token per row, no padding, a full window and every sink in the store.

    ``key``/``value`` are ``[sink store (S), window[1:] (W - 1), new]``: every key is visible, so attention needs no
    mask; window[0] leaves the window and is written into the memory, which the query then reads. The same result
    as the chunk paths (tests compare them), with a fraction of their operations.
    """
    rot = sink_rotation(spec, layer.step.start, query.shape[-1], query.device)
    S, G = layer.num_sinks, layer.num_recall_slots
    if rot is not None:  # beyond the base's context: the sinks as seen from its last position (see sink_clamped)
        # `key` is this step's own concatenation (the store is unchanged)
        key[:, :, :S] = rotated_forward(layer.sink_keys, *rot).to(key.dtype)
    if G:  # the slots, seen `recall_distance` before this query
        distance, inv_freq = spec.recall_geometry(query.shape[-1])
        if distance:  # (0: the slot keys at their real positions, as cached)
            slots = layer.step.slots
            key[:, :, S: S + G] = steady_slot_keys(layer, slots[0], slots[3], layer.step.start, distance, inv_freq,
                                                   spec.slot_rotation)
    attn_out, attn_weights = inner_attention(spec, module, query, key, value, None, scaling, dropout)
    memory, hidden = spec.memory, inputs.hidden
    # (a steady row has no pad and no sink among its new tokens)
    scores_new = novelty = None
    if G:
        step = layer.step
        scores_new, novelty = spec.recall_scores(layer, inputs, step.new_keys, step.new_values, layer.num_real[:, None],
                                                 steady=True)
    state = gates_new = None  # the memory off ("swa"): no write gates either
    if spec.mode == "ahn":
        gates_new = memory.write_gates(hidden)  # [B, 1, G, H]
        ev_k, ev_v, ev_g = layer.evicted()
        if memory.needs_key_rotation:  # window[0] sits W positions before the new token (a steady row has no pads)
            pos = torch.full((ev_k.shape[0], 1), layer.step.start - layer.sliding_window, device=ev_k.device)
            ev_k = memory_keys(spec, ev_k[:, :, None], pos)[:, :, 0]
        mem_out, state = memory.step(memory.read_query(query, inputs.rotation), ev_k, ev_v, ev_g, hidden,
                                     layer.recurrent_state)
        attn_out = attn_out + mem_out
    layer.end_step(None, gates_new, state, scores_new=scores_new, novelty_state=novelty)
    return attn_out, attn_weights


def _banded_prefill(spec, module, facts, query, key, value, scaling, dropout):
    """BANDED_PREFILL: see ``window_attention.banded_window_attention``."""
    layer, step = facts.layer, facts.step
    return banded_window_attention(spec, module, query, step.keys, step.values, layer.sink_keys, layer.sink_values,
                                   facts.rpos_new.to(query.device), step.num_old, facts.window, scaling, dropout), None


def _fresh_prefill(spec, module, facts, query, key, value, scaling, dropout):
    """FRESH_PREFILL: see ``window_attention.fresh_window_attention`` (the window + new keys are the chunk's own)."""
    step = facts.step
    return fresh_window_attention(spec, module, query, step.keys, step.values, facts.rpos_new.to(query.device),
                                  facts.window, facts.sinks, scaling, dropout), None


def _blocked(spec, module, facts, query, key, value, scaling, dropout):
    """BLOCKED: see ``window_attention.blocked_window_attention``. A whole sequence has no sink store (its sinks are
    among its own keys), a cached chunk attends over ``[store, window, new]``."""
    step = facts.step
    k, v = (step.keys, step.values) if facts.whole_sequence else (key, value)
    return blocked_window_attention(spec, module, query, k, v, facts.rpos_all.to(query.device), facts.window,
                                    facts.sinks, scaling, dropout, n_old=step.num_old, plans=facts.blocks), None


def _masked(spec, module, facts, query, key, value, scaling, dropout):
    """MASKED: one call over ``[sink store (S), window + new]`` under a dense per-row mask."""
    layer, step, dev = facts.layer, facts.step, query.device
    B, _, q_len, _ = query.shape
    qidx = torch.arange(step.start, step.start + q_len, device=dev)
    kidx = torch.arange(step.start - step.num_old, step.start + q_len, device=dev)
    rp = facts.rpos_all.to(dev)
    vis = window_mask(qidx, kidx, rp, facts.window, facts.sinks)
    sink_vis = layer.sink_filled[:, None, :].to(dev).expand(B, q_len, facts.sinks)
    mask = torch.cat([sink_vis, vis], dim=-1)[:, None]
    key_is_sink = torch.cat([torch.ones_like(sink_vis[:, 0]), (rp >= 0) & (rp < facts.sinks)], dim=-1)
    return window_attention(spec, module, query, key, value, mask, scaling, dropout, facts.rpos_new.to(dev),
                            key_is_sink)


_CHUNK_PATHS = {AttentionPath.BANDED_PREFILL: _banded_prefill, AttentionPath.FRESH_PREFILL: _fresh_prefill,
                AttentionPath.BLOCKED: _blocked, AttentionPath.MASKED: _masked}


def _recall_slots(spec, facts, inputs):
    """The recall slots of a chunk step: ``(scores_new, novelty_state, plan)`` (``plan`` ``None``: nothing evicted,
    no slot yet). The span scores of the tokens the chunk evicts come from the raw scores of the evicted tail, the
    window and the new tokens (``recall_slots.py``)."""
    layer, step = facts.layer, facts.step
    W, S, G = facts.window, facts.sinks, layer.num_recall_slots
    q = facts.q_len
    scores_new, novelty = spec.recall_scores(layer, inputs, step.keys[:, :, -q:], step.values[:, :, -q:],
                                             facts.rpos_new)
    n_ev = max(0, step.num_old + q - W)
    if n_ev == 0 and not bool((layer.slot_rpos >= 0).any()):
        return scores_new, novelty, None
    before, after = layer.recall_span
    raw_all = torch.cat([layer.score_tail, layer.window_scores, scores_new], dim=1)
    ev_s = span_scores(raw_all, before, after, n_ev)
    ev_r = facts.rpos_all[:, :n_ev].to(ev_s.device)
    return scores_new, novelty, plan_slots(layer.slot_scores, layer.slot_rpos, ev_s, ev_r, ev_r >= S, G)


def _slotted(spec, module, facts, plan, path, query, key, value, scaling, dropout):
    """The slotted attention: sinks + recall slots + window in one softmax per query; the slots a query sees follow
    from the plan and the evictions before it. Chunks that the banded CPU kernel serves (BANDED_PREFILL,
    FRESH_PREFILL) keep it, the slots scored with the sinks and merged through their log-sum-exp
    (``strided_band_attention``'s ``extra``); the others run ``recall_slots.slotted_attention`` over the BLOCKED
    path's query blocks."""
    layer, step = facts.layer, facts.step
    idx, cand_k, cand_v, ok = gather_candidates(plan, step.keys, step.values, layer.slot_keys, layer.slot_values)
    e_query = step.num_old + torch.arange(facts.q_len, device=ok.device) - facts.window + 1
    e_query = e_query.clamp(0, plan.num_evicted)  # evictions each query has seen
    vis = slot_visibility(plan, idx, ok, e_query).to(query.device)
    distance, inv_freq = spec.recall_geometry(query.shape[-1])
    cand_rpos = plan.rpos.gather(1, idx).to(query.device)
    dev = query.device
    qpos = facts.rpos_new.to(dev)
    if path in (AttentionPath.BANDED_PREFILL, AttentionPath.FRESH_PREFILL) and strided_band_available(
            step.keys, step.values, facts.dropout_active):
        rotation = query_rotation(qpos, distance, inv_freq) if distance else None
        extra = BandExtra(slot_keys_free(cand_k, cand_rpos, distance, inv_freq), cand_v, vis, rotation, distance)
        if path is AttentionPath.BANDED_PREFILL:
            return strided_band_attention(spec, query, step.keys, step.values, layer.sink_keys, layer.sink_values,
                                          qpos, step.num_old, facts.window, scaling, extra), None
        return fresh_window_attention(spec, module, query, step.keys, step.values, qpos, facts.window, facts.sinks,
                                      scaling, dropout, extra), None
    k, v = (step.keys, step.values) if facts.whole_sequence else (key, value)
    store = None if facts.whole_sequence else layer.sink_filled
    long = facts.whole_sequence or facts.q_len > facts.window
    plans = facts.blocks if long else None
    return slotted_attention(spec, module, query, k, v, facts.rpos_all.to(dev), qpos, step.num_old, facts.window,
                             facts.sinks, cand_k, cand_v, cand_rpos, vis, distance, inv_freq, scaling, store=store,
                             plans=plans), None


def _memory_readout(spec, facts, query, inputs, gates_new):
    """The memory's output for a chunk's queries and the state after it (``(None, state)`` when nothing is in
    memory). The token leaving the window at query ``i`` is slot ``i - W`` of window + new; it enters memory if it
    is real and no sink."""
    layer, step = facts.layer, facts.step
    memory, W, S = spec.memory, facts.window, facts.sinks
    q_len = facts.q_len
    n_ev = max(0, step.num_old + q_len - W)
    state = layer.recurrent_state
    if not spec.memory_on or (n_ev == 0 and state is None):
        return None, None
    rpos_all, hidden = facts.rpos_all, inputs.hidden
    query = memory.read_query(query, inputs.rotation)
    gates_all = gates_new if layer.window_gates is None else torch.cat([layer.window_gates, gates_new], dim=1)
    all_k, all_v = memory_keys(spec, step.keys[:, :, :n_ev], rpos_all[:, :n_ev]), step.values
    lead = q_len - n_ev  # queries with nothing to write (the window is not full yet)
    if state is None and lead > 0:
        # An empty memory reads exactly zero, so the first `lead` queries need no recurrence at all.
        mem_out, state = memory(query[:, :, lead:], all_k[:, :, :n_ev], all_v[:, :, :n_ev], gates_all[:, :n_ev],
                                rpos_all[:, :n_ev] >= S, hidden[:, lead:], None)
        return F.pad(mem_out, (0, 0, 0, 0, lead, 0)), state
    k_w = F.pad(all_k[:, :, :n_ev], (0, 0, lead, 0))
    v_w = F.pad(all_v[:, :, :n_ev], (0, 0, lead, 0))
    g_w = F.pad(gates_all[:, :n_ev], (0, 0, 0, 0, lead, 0))
    valid = F.pad(rpos_all[:, :n_ev] >= S, (lead, 0), value=False)
    return memory(query, k_w, v_w, g_w, valid, hidden, state)


def _check_mask(attention_mask):
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "AHN attention takes a 2D padding mask [batch, tokens]; a custom 4D attention mask cannot be combined "
            "with the sink + window pattern."
        )
    return attention_mask


def _cache_layer(spec, module, cache, key, value):
    """The layer's cache layer with its step begun, and the keys/values to attend over: a temporary layer for a
    whole sequence (``cache`` not a ``Cache``), else the model's own (checked to be an AHN layer with the settings
    now in force)."""
    W, S, G = spec.config.sliding_window, spec.config.num_sinks, spec.num_recall_slots
    if not isinstance(cache, Cache):  # no cache: the whole sequence at once (training, use_cache=False)
        layer = SinkWindowLayer(S, W, num_recall_slots=G, recall_span=spec.config.recall_span)
        key, value = layer.update(key, value)
        return layer, key, value, True
    layer = cache.layers[module.layer_idx]
    if not isinstance(layer, SinkWindowLayer) or layer.step is None:
        raise RuntimeError(f"layer {module.layer_idx}: the cache layer is {type(layer).__name__}, not an AHN layer.")
    if (layer.sliding_window, layer.num_sinks) != (W, S) or (layer.num_recall_slots != G and spec.mode != MEMORY_ONLY):
        raise ValueError(
            f"This cache was built for sliding_window={layer.sliding_window}, num_sinks={layer.num_sinks}, "
            f"num_recall_slots={layer.num_recall_slots} but the model now uses {W}, {S}, {G}: start a new cache "
            "(model.new_cache()) after changing these settings."
        )
    return layer, key, value, False


def ahn_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention over ``[sinks, window, new]`` plus the AHN memory read-out, for one layer.

    ``query`` ``[B, H, q, D]``; ``key``/``value`` as returned by the cache (``[B, Hkv, kv, D]``).
    Returns ``(out [B, q, H, D], weights)`` like transformers' attention functions.
    """
    spec = get_layer_spec(module)
    inputs = spec.take_inputs()
    mask2d = _check_mask(attention_mask)
    cache = inputs.cache if inputs is not None else None
    layer = step = facts = None
    if spec.memory is not None and spec.mode != "full":  # an AHN step: begin it
        if inputs is None:
            raise RuntimeError("AHN pre-hook did not run: the layer input is missing.")
        layer, key, value, whole_sequence = _cache_layer(spec, module, cache, key, value)
        if spec.memory_on and not whole_sequence:
            layer.check_memory_on()
        if isinstance(layer.step, SteadyStep) and mask2d is not None:  # a padding mask after all: a chunk step
            key, value = layer.as_chunk_step()
        step = layer.step
        if isinstance(step, ChunkStep):
            facts = ChunkFacts(spec, layer, step, mask2d, query.shape[2], whole_sequence,
                               bool(dropout and module.training))
    elif isinstance(cache, Cache) and spec.memory is not None:
        raise ValueError("attention mode 'full' runs without an AHN cache: pass use_cache=False.")
    path = choose_path(spec, step, facts)
    if spec.mode == MEMORY_ONLY and not (facts is not None and facts.whole_sequence):
        raise ValueError(f"attention mode {MEMORY_ONLY!r} (the memory's read-out alone) runs on whole sequences only")
    if path is AttentionPath.FULL:
        return full_attention(spec, module, query, key, value, mask2d, scaling, dropout, kwargs.get("sliding_window"))
    if path is AttentionPath.STATIC_STEP:
        return _static_step(spec, module, layer, query, key, value, inputs, mask2d, scaling, dropout)
    if path is AttentionPath.STEADY_STEP:
        return _steady_step(spec, module, layer, query, key, value, inputs, scaling, dropout)
    scores_new = novelty = plan = slots = None
    if layer.num_recall_slots:
        scores_new, novelty, plan = _recall_slots(spec, facts, inputs)
    if spec.mode == MEMORY_ONLY:
        B, H, q_len, _ = query.shape
        attn_out, attn_weights = query.new_zeros(B, q_len, H, value.shape[-1]), None
    elif plan is not None and bool(plan.keep.any()):
        attn_out, attn_weights = _slotted(spec, module, facts, plan, path, query, key, value, scaling, dropout)
    else:
        attn_out, attn_weights = _CHUNK_PATHS[path](spec, module, facts, query, key, value, scaling, dropout)
    if plan is not None:
        step = facts.step
        slots = slots_after(plan, step.keys, step.values, layer.slot_keys, layer.slot_values, layer.num_recall_slots)
    gates_new = spec.memory.write_gates(inputs.hidden) if spec.memory_on else None
    mem_out, state = _memory_readout(spec, facts, query, inputs, gates_new)
    if mem_out is not None:
        attn_out = attn_out + mem_out
    layer.end_step(facts.rpos_new, gates_new, state, scores_new=scores_new, slots=slots, novelty_state=novelty)
    return attn_out, attn_weights


def _ahn_pre_hook(module, args, kwargs):
    """Hand the layer input and the cache to the layer's spec; turn an empty stock cache layer into an AHN one."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.24 / earlier 5.x
    spec = get_layer_spec(module)
    if spec is None:
        return
    if spec.memory is not None and isinstance(cache, Cache):
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
    spec.inputs = LayerInputs(hidden, cache, kwargs.get("position_embeddings"))


AttentionInterface.register(AHN_ATTENTION, ahn_attention_forward)
AttentionMaskInterface.register(AHN_ATTENTION, lambda *args, attention_mask=None, **kwargs: attention_mask)


def attach_ahn(decoder, config, memories, inner="sdpa"):
    """Install AHN on a base decoder (``Qwen2Model``/``LlamaModel``/...): ``memories`` maps layer index ->
    ``AhnModule``; layers without one stay at full attention. Registers each memory as
    ``decoder.layers[i].ahn`` so that its parameters are ``model.layers.{i}.ahn.fn.<param>``."""
    pool, rank, rotation = LayerPool(), 0, TensorMemo()
    for i, layer in enumerate(decoder.layers):
        mem = memories.get(i)
        if mem is not None:
            layer.ahn = mem
        elif "ahn" in layer._modules:
            del layer._modules["ahn"]
        spec = make_layer_spec(mem.fn if mem is not None else None, config, config.base_config,
                               getattr(decoder, "rotary_emb", None), inner)
        spec.recall = mem.recall_head if mem is not None else None
        if mem is not None:
            spec.layer_pool, spec.pool_rank, rank = pool, rank, rank + 1
            spec.slot_rotation = rotation
        set_layer_spec(layer.self_attn, spec)


__all__ = ["AHN_ATTENTION", "MEMORY_ONLY", "AhnLayerSpec", "AttentionPath", "ChunkFacts", "LayerInputs",
           "ahn_attention", "ahn_attention_forward", "attach_ahn", "choose_path", "get_layer_spec", "make_layer_spec",
           "memory_keys", "set_layer_spec"]
