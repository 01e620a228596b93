# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``AhnCache``: a transformers ``Cache`` whose AHN layers keep sinks + window + a fixed-size state.

Per AHN layer (AHN_SPEC section 3) the cache holds, for a batch of ``B`` rows:

* ``sink_keys/sink_values`` ``[B, Hkv, S, D]``: slot ``s`` holds the row's real token ``s`` once that
  token has left the window (``sink_filled[b, s]`` says it is there). While a sink is still inside the
  window it is attended through the window, so no token is ever counted twice.
* ``keys/values`` ``[B, Hkv, <=W, D]``: the last ``W`` token *slots* (the same for every row),
  ``window_rpos`` their per-row real positions (``-1`` for padding) and ``window_gates`` their AHN
  write gates, so an evicted token needs nothing else to be written into memory.
* ``recurrent_state`` ``[B, H, K, V]`` float32: the compressed memory.

Nothing grows with the number of tokens seen. Slot ``i`` of a left-padded row with ``p`` pad tokens is
its real token ``i - p``: sinks are the row's first *real* tokens and pads never enter attention or
memory, so a row of a padded batch computes exactly what it computes alone.

One forward of one layer is a *step*: ``update`` (called by the base's attention module, as for every
transformers cache) begins it and returns the keys/values to attend over; the ``"ahn"`` attention function then
ends it with ``end_step`` (the new tokens' real positions, write gates and the memory state), which evicts from
the window into the sink store. What passes between the two is one of the typed steps below, ``layer.step``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

# Places after the window in a steady decoding buffer (SinkWindowLayer._steady_attend), per token of the window: the
# window moves back to the buffer's front once every W / STEADY_SLACK_DIVISOR + 1 steps (one copy of the window),
# instead of a copy of it every step; the buffer holds W / 8 more places than the window (64 for W = 512).
STEADY_SLACK_DIVISOR = 8


def steady_slack(window: int) -> int:
    """Places after the window in a steady decoding buffer (at least 4)."""
    return max(4, window // STEADY_SLACK_DIVISOR)


def version_of(t: torch.Tensor):
    """``t``'s in-place version counter, ``None`` for an inference tensor (made under ``torch.inference_mode``),
    which keeps none (``TensorMemo`` then relies on identity alone: the dynamic cache never changes a slot tensor in
    place)."""
    return None if t.is_inference() else t._version


class TensorMemo:
    """A value made from tensors and other facts, kept while the tensors are the same objects, unmodified (their
    version counters, ``version_of``), and the facts are equal: the steady decoding step's memos (the weakest slot,
    the slots' free keys, the step's slot rotation), which most steps find valid."""

    def __init__(self):
        self._tensors, self._key, self._value = (), None, None

    def get(self, tensors: tuple, facts: tuple, make):
        """The value for ``tensors`` and ``facts``, ``make()`` when the kept one is not theirs."""
        key = (tuple(version_of(t) for t in tensors), facts)
        if (key != self._key or len(tensors) != len(self._tensors)
                or any(a is not b for a, b in zip(tensors, self._tensors))):
            self._tensors, self._key, self._value = tuple(tensors), key, make()
        return self._value


@dataclass
class ChunkStep:
    """New tokens attended over ``[sink store, window, new]`` (several tokens, or one with padding)."""

    start: int  # tokens seen before this step
    num_old: int  # window slots before the new tokens
    keys: torch.Tensor  # [B, Hkv, num_old + q, D]: the window, then the new tokens
    values: torch.Tensor


@dataclass
class SteadyStep:
    """One token, no row ever padded, the window full and every sink in the store: it attends over exactly
    ``[sinks, window[1:], itself]``, which (without the sinks) is also the next window; ``window[0]`` leaves for the
    memory."""

    start: int
    new_keys: torch.Tensor  # [B, Hkv, 1, D]
    new_values: torch.Tensor
    keys: torch.Tensor  # [B, Hkv, S (+ G) + W, D]: sinks, (recall slots,) window[1:], new
    values: torch.Tensor
    slots: tuple | None = None  # recall slots with window[0] admitted: (keys, values, scores, rpos)
    evicted: tuple | None = None  # window[0]'s key and value [B, Hkv, D], saved before its place was reused


@dataclass
class EvictedToken:
    """The token a static step overwrites in the ring (it leaves the window)."""

    keys: torch.Tensor  # [B, Hkv, 1, D]
    values: torch.Tensor
    rpos: torch.Tensor  # [B]: its real position (-1: empty slot or padding)
    gates: torch.Tensor | None  # [B, 1, G, H] (None before the first AHN step)


@dataclass
class StaticStep:
    """One token over a :class:`StaticSinkWindowLayer`'s fixed buffers (no host sync, no new shapes)."""

    slot: torch.Tensor  # [1]: the ring slot the new token was written into
    evicted: EvictedToken


class SinkWindowLayer(CacheLayerMixin):
    """Cache layer of one AHN-enabled attention layer."""

    is_sliding = True
    is_compileable = False
    is_croppable = False

    def __init__(self, num_sinks: int, sliding_window: int, num_recall_slots: int = 0, recall_span=(0, 0), **kwargs):
        super().__init__()
        self.num_sinks = int(num_sinks)
        self.sliding_window = int(sliding_window)
        # recall slots (recall_slots.py): G evicted tokens kept exactly; their span scores need the raw scores of the
        # window's tokens and of the last `after` evicted ones
        self.num_recall_slots = int(num_recall_slots)
        self.recall_span = tuple(int(x) for x in recall_span)  # (before, after)
        self.slot_keys = self.slot_values = self.slot_scores = self.slot_rpos = None
        self.window_scores = self.score_tail = None
        self.novelty_state = None  # [B, Hkv, D, D] float64: the novelty score's delta-rule memory of every token read
        self.scored_by = None  # (recall score, recall pool) this layer's slots were chosen by
        # the steady step's memos of the slots (_steady_weakest, recall_slots.steady_slot_keys)
        self._weakest_memo, self.free_slot_keys_memo = TensorMemo(), TensorMemo()
        # the steady decoding buffer (_steady_attend): (keys, values, p, window views); None until a steady step
        self._steady = None
        self.cumulative_length = 0
        self.sink_keys = self.sink_values = self.sink_filled = None
        self.window_rpos = self.window_gates = None
        self.num_real = None
        self.recurrent_state = None
        self.step: ChunkStep | SteadyStep | StaticStep | None = None  # the step under way (update -> end_step)
        self.padded = False  # whether any row has had a pad token (then every step takes the general path)
        # whether a step ran with the memory off (attention mode "swa"): its tokens got no write gates, so this cache
        # can no longer feed a memory (an "ahn" step refuses it)
        self.memory_off = False

    def __repr__(self):
        slots = f", num_recall_slots={self.num_recall_slots}" if self.num_recall_slots else ""
        return f"SinkWindowLayer(num_sinks={self.num_sinks}, sliding_window={self.sliding_window}{slots})"

    def lazy_initialization(self, key_states, value_states):
        B, Hkv, _, D = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        kw = dict(dtype=key_states.dtype, device=key_states.device)
        self.keys = key_states.new_zeros(B, Hkv, 0, D)
        self.values = value_states.new_zeros(B, Hkv, 0, value_states.shape[-1])
        self.sink_keys = key_states.new_zeros(B, Hkv, self.num_sinks, D, **kw)
        self.sink_values = value_states.new_zeros(B, Hkv, self.num_sinks, value_states.shape[-1], **kw)
        self.sink_filled = torch.zeros(B, self.num_sinks, dtype=torch.bool, device=self.device)
        self.window_rpos = torch.zeros(B, 0, dtype=torch.long, device=self.device)
        self.num_real = torch.zeros(B, dtype=torch.long, device=self.device)
        G = self.num_recall_slots
        if G:
            self.slot_keys = key_states.new_zeros(B, Hkv, G, D)
            self.slot_values = value_states.new_zeros(B, Hkv, G, value_states.shape[-1])
            self.slot_scores = torch.full((B, G), float("-inf"), device=self.device)
            self.slot_rpos = torch.full((B, G), -1, dtype=torch.long, device=self.device)
            self.window_scores = torch.zeros(B, 0, device=self.device)
            self.score_tail = torch.full((B, self.recall_span[1]), float("-inf"), device=self.device)
        self.is_initialized = True

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0] if self.is_initialized else -1

    # -- one step: `update` (called by the attention module) begins it, `end_step` (by the AHN attention) ends it --

    def _begin(self, key_states, value_states):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.step is not None:
            raise RuntimeError("SinkWindowLayer.update called twice without end_step (is the AHN attention active?)")

    def update(self, key_states, value_states, *args, **kwargs):
        """Begin a step: append the new keys/values and return ``[sinks, window, new]`` for attention.

        Eviction into the sink store and the memory happens in :meth:`end_step`, once the AHN
        attention function knows the rows' padding and the new tokens' write gates.
        """
        self._begin(key_states, value_states)
        start = self.cumulative_length
        steady = key_states.shape[-2] == 1 and self.steady()
        self.cumulative_length += key_states.shape[-2]
        if steady:
            slots = self._admit_evicted() if self.num_recall_slots else None
            k, v, evicted = self._steady_attend(key_states, value_states, slots)
            self.step = SteadyStep(start, key_states, value_states, k, v, slots, evicted)
            return k, v
        return self._begin_chunk(start, key_states, value_states)

    def _steady_attend(self, key_states, value_states, slots):
        """``[sinks, (slots,) window[1:], new]`` of a steady step as one view of the steady buffer, with no copy of
        the window: the buffer holds the window at ``[p, p + W)``; the step writes the sinks and slots into the
        ``S + G`` places ending at ``p`` (window[0]'s, saved first: it leaves) and the new token at ``p + W``, and
        the window moves to ``[p + 1, p + W + 1)`` (``_end_steady``). Copies per step: ``S + G + 1`` tokens instead
        of ``S + G + W``; every ``steady_slack(W) + 1`` steps the window moves back to the front. Returns
        ``(keys, values, (window[0]'s key, value))``."""
        P, W = self.num_sinks + self.num_recall_slots, self.sliding_window
        kb, vb, p = self._steady_buffer()
        if p + W + 1 > kb.shape[2]:  # the buffer's end: the window back to the front (a copy: the ranges overlap)
            front = max(P - 1, 0)
            for buf in (kb, vb):
                buf[:, :, front: front + W].copy_(buf[:, :, p: p + W].clone())
            p = front
        evicted = (kb[:, :, p].clone(), vb[:, :, p].clone())
        parts = [(self.sink_keys, self.sink_values)] if self.num_sinks else []
        if slots is not None:
            parts.append((slots[0], slots[1]))
        at = p + 1 - P
        for k_part, v_part in parts:
            n = k_part.shape[2]
            kb[:, :, at: at + n].copy_(k_part)
            vb[:, :, at: at + n].copy_(v_part)
            at += n
        kb[:, :, p + W: p + W + 1].copy_(key_states)
        vb[:, :, p + W: p + W + 1].copy_(value_states)
        self._steady = (kb, vb, p, self._steady[3])
        return kb[:, :, p + 1 - P: p + W + 1], vb[:, :, p + 1 - P: p + W + 1], evicted

    def _steady_buffer(self):
        """``(keys, values, p)``: the steady buffer ``[B, Hkv, S + G + W + steady_slack(W), D]`` with the window at
        ``[p, p + W)``; made (the window copied in) when the layer's window is not its view (the first steady step,
        or after a chunk step, a beam reorder or a batch selection, which make new tensors)."""
        st = self._steady
        if st is not None and st[3][0] is self.keys and st[3][1] is self.values:
            return st[0], st[1], st[2]
        P, W = self.num_sinks + self.num_recall_slots, self.sliding_window
        B, Hkv, _, D = self.keys.shape
        kb = self.keys.new_empty(B, Hkv, P + W + steady_slack(W), D)
        vb = self.values.new_empty(B, Hkv, P + W + steady_slack(W), self.values.shape[-1])
        p = max(P - 1, 0)  # (the sinks and slots of the first step end at window[0]'s place)
        kb[:, :, p: p + W].copy_(self.keys)
        vb[:, :, p: p + W].copy_(self.values)
        self._steady = (kb, vb, p, (None, None))
        return kb, vb, p

    def _begin_chunk(self, start, key_states, value_states):
        all_k = torch.cat([self.keys, key_states], dim=-2)
        all_v = torch.cat([self.values, value_states], dim=-2)
        self.step = ChunkStep(start, self.keys.shape[-2], all_k, all_v)
        return torch.cat([self.sink_keys, all_k], dim=-2), torch.cat([self.sink_values, all_v], dim=-2)

    def steady(self) -> bool:
        """Whether a one-token step can take the steady path: no row padded, the window full (``W`` tokens),
        every sink evicted into the store (``S + W`` tokens seen) and every recall slot filled (``G`` more)."""
        return (not self.padded
                and self.cumulative_length >= self.num_sinks + self.sliding_window + self.num_recall_slots
                and self.keys.shape[-2] == self.sliding_window)

    def as_chunk_step(self):
        """Turn a steady step into a chunk step (the step brings a padding mask after all): returns the keys/values
        ``[sinks, window, new]`` that the chunk paths attend over."""
        step = self.step
        if not isinstance(step, SteadyStep):
            raise TypeError(f"as_chunk_step needs a SteadyStep, the layer is in {type(step).__name__}")
        self.step = None
        if step.evicted is not None:  # window[0]'s place in the steady buffer was reused: put it back
            self.keys[:, :, 0].copy_(step.evicted[0])
            self.values[:, :, 0].copy_(step.evicted[1])
        return self._begin_chunk(step.start, step.new_keys, step.new_values)

    def evicted(self):
        """Keys, values ``[B, Hkv, D]`` and gates ``[B, G, H]`` of the token a steady step evicts (window[0])."""
        saved = self.step.evicted if isinstance(self.step, SteadyStep) else None
        if saved is not None:
            return saved[0], saved[1], self.window_gates[:, 0]
        return self.keys[:, :, 0], self.values[:, :, 0], self.window_gates[:, 0]

    def end_step(self, rpos_new: torch.Tensor, gates_new: torch.Tensor | None, recurrent_state=None,
                 scores_new=None, slots=None, novelty_state=None):
        """End the step under way: ``rpos_new`` ``[B, q]`` the new tokens' real positions (-1 = pad), ``gates_new``
        ``[B, q, G, H]`` their write gates, ``recurrent_state`` the memory after the step (``None``: unchanged);
        with recall slots, ``scores_new`` ``[B, q]`` the new tokens' raw scores and ``slots`` the slots after the
        step (``(keys, values, scores, rpos)``; ``None``: a steady step, which updates them here) and
        ``novelty_state`` the novelty score's delta-rule state after the step (``None``: the learned score)."""
        step, self.step = self.step, None
        if step is None:
            raise RuntimeError("SinkWindowLayer.end_step without a step under way (update was not called)")
        if self.num_recall_slots:
            self._end_scores(step, scores_new, slots)
            self._store_novelty(novelty_state)
        if isinstance(step, SteadyStep):
            self._end_steady(step, gates_new)
        elif isinstance(step, StaticStep):
            self._end_static(step, rpos_new, gates_new)
        else:
            self._end_chunk(step, rpos_new, gates_new)
        if recurrent_state is not None:
            self._store_state(recurrent_state)

    def _store_state(self, recurrent_state):
        self.recurrent_state = recurrent_state

    def _store_novelty(self, novelty_state):
        self.novelty_state = novelty_state

    def steady_evicted_score(self) -> torch.Tensor:
        """``[B]``: the span score of the token a steady step evicts (window[0])."""
        before, after = self.recall_span
        return torch.cat([self.score_tail, self.window_scores[:, : before + 1]], dim=1).amax(1)

    def _admit_evicted(self):
        """The slots once window[0], which a steady step evicts, has taken the weakest slot if it beats it (its query
        already sees them): ``(keys, values, scores, rpos)``, new tensors (the layer's own are kept until the step
        ends, so that a step turned into a chunk step plans from them)."""
        return self._slots_with(self.keys[:, :, 0:1], self.values[:, :, 0:1], self.steady_evicted_score(),
                                self.window_rpos[:, 0], weakest=self._steady_weakest(), unchanged_if_no_win=True)

    def _weakest(self):
        """The weakest slot: ``(w [B, 1], its score, its position [B])``."""
        from .recall_slots import weakest_slot  # (sibling; imported here to keep the cache light)

        w = weakest_slot(self.slot_scores, self.slot_rpos)[:, None]
        return w, self.slot_scores.gather(1, w)[:, 0], self.slot_rpos.gather(1, w)[:, 0]

    def _steady_weakest(self):
        """``_weakest``, recomputed only when the slots changed (most steady steps admit nothing, and then the slot
        tensors are the same objects, unmodified)."""
        return self._weakest_memo.get((self.slot_scores, self.slot_rpos), (), self._weakest)

    def _slots_with(self, ev_keys, ev_values, ev_s, ev_r, eligible=None, weakest=None, unchanged_if_no_win=False):
        """``(keys, values, scores, rpos)`` of the slots once one leaving token per row (``ev_keys``/``ev_values``
        ``[B, Hkv, 1, D]``, span score ``ev_s`` and position ``ev_r`` ``[B]``; ``eligible`` ``[B]``: real and no
        sink, ``None``: all) has taken the weakest slot (``weakest``: ``_steady_weakest``'s, or computed here) if it
        beats it; new tensors, no host sync. ``unchanged_if_no_win`` (the dynamic steady step): on a CPU, where a
        host check costs nothing, the layer's own tensors when no row admits (most steps), instead of copies.
        The leaving token is window[0], later than every slot's token, so it beats the weakest slot iff its score is
        higher (``beats``: ties go to the earlier token, the slot's): one comparison."""
        w, w_s, _ = self._weakest() if weakest is None else weakest
        win = ev_s > w_s
        if eligible is not None:
            win = win & eligible
        if unchanged_if_no_win and win.device.type == "cpu" and not bool(win if win.numel() == 1 else win.any()):
            return self.slot_keys, self.slot_values, self.slot_scores, self.slot_rpos
        hit = (torch.arange(self.num_recall_slots, device=w.device) == w) & win[:, None]  # [B, G]
        return (torch.where(hit[:, None, :, None], ev_keys, self.slot_keys),
                torch.where(hit[:, None, :, None], ev_values, self.slot_values),
                torch.where(hit, ev_s[:, None], self.slot_scores), torch.where(hit, ev_r[:, None], self.slot_rpos))

    def _end_scores(self, step, scores_new, slots):
        """The window's raw scores, the tail of evicted ones and the slots after a step."""
        if scores_new is None:
            raise RuntimeError("a step with recall slots ended without the new tokens' scores")
        n_ev = max(0, self.window_scores.shape[1] + scores_new.shape[1] - self.sliding_window)
        if isinstance(step, SteadyStep):
            self.slot_keys, self.slot_values, self.slot_scores, self.slot_rpos = step.slots
        elif slots is not None:
            self.slot_keys, self.slot_values, self.slot_scores, self.slot_rpos = slots
        all_s = torch.cat([self.score_tail, self.window_scores, scores_new], dim=1)
        after = self.recall_span[1]
        self.score_tail = all_s[:, n_ev: n_ev + after]
        self.window_scores = all_s[:, after + n_ev:]

    def _end_steady(self, step: SteadyStep, gates_new):
        """The attended keys minus the sinks (and the slots) are the new window."""
        if step.evicted is not None:  # the window moves one place on in the steady buffer
            kb, vb, p, _ = self._steady
            W = self.sliding_window
            self.keys, self.values = kb[:, :, p + 1: p + 1 + W], vb[:, :, p + 1: p + 1 + W]
            self._steady = (kb, vb, p + 1, (self.keys, self.values))
        else:
            S = self.num_sinks + self.num_recall_slots
            self.keys, self.values = step.keys[:, :, S:], step.values[:, :, S:]
        self.window_rpos = torch.cat([self.window_rpos[:, 1:], self.num_real[:, None]], dim=-1)
        self._keep_gates(None if gates_new is None else torch.cat([self.window_gates[:, 1:], gates_new], dim=1))
        self.num_real = self.num_real + 1

    def _keep_gates(self, window_gates):
        """The window's write gates after a step; ``None``: the step ran with the memory off (none computed)."""
        self.window_gates = window_gates
        self.memory_off = self.memory_off or window_gates is None

    def check_memory_on(self):
        """Refuse a step with the memory on after steps without it (the window's tokens have no write gates)."""
        if self.memory_off:
            raise ValueError(
                "this cache was filled with the memory off (attention mode 'swa'): its tokens have no write gates, so "
                "the memory cannot take them. Start a new cache (model.new_cache()) for attention mode 'ahn'.")

    def _end_static(self, step, rpos_new, gates_new):
        raise TypeError("a StaticStep belongs to a StaticSinkWindowLayer")

    def real_positions(self, new_mask: torch.Tensor | None, q_len: int) -> torch.Tensor:
        """Real (padding-free) positions of the new tokens, ``-1`` for pads; ``new_mask`` is ``[B, q]``."""
        B = self.num_real.shape[0]
        if new_mask is None:
            return self.num_real[:, None] + torch.arange(q_len, device=self.device)[None].expand(B, -1)
        m = new_mask.to(device=self.device, dtype=torch.long)
        return torch.where(m.bool(), self.num_real[:, None] + m.cumsum(-1) - 1, -1)

    def _end_chunk(self, step: ChunkStep, rpos_new, gates_new):
        """Trim to the last ``W`` slots, move evicted sinks to the sink store."""
        W, S = self.sliding_window, self.num_sinks
        all_k, all_v = step.keys, step.values
        rpos_all = torch.cat([self.window_rpos, rpos_new], dim=-1)
        n_ev = max(0, all_k.shape[-2] - W)
        if S and n_ev:
            # evicted token with real position s < S -> sink slot s (one-hot, no host sync)
            hit = rpos_all[:, :n_ev, None] == torch.arange(S, device=rpos_all.device)  # [B, n_ev, S]
            filled = hit.any(1)
            self.sink_keys = _gather_sinks(self.sink_keys, hit, filled, all_k[:, :, :n_ev])
            self.sink_values = _gather_sinks(self.sink_values, hit, filled, all_v[:, :, :n_ev])
            self.sink_filled = self.sink_filled | filled
        # the window is copied out of the step's tensors once tokens left it: a slice would keep the whole chunk's
        # storage alive (~8x the window after a 4k-token chunk with a 512-token window)
        def own(x, dim):  # the tokens after the n_ev evicted ones along the token dimension
            return x.narrow(dim, n_ev, x.shape[dim] - n_ev).clone() if n_ev else x

        self.keys, self.values = own(all_k, 2), own(all_v, 2)
        self.window_rpos = own(rpos_all, 1)
        if gates_new is not None and not self.memory_off:
            gates_all = gates_new if self.window_gates is None else torch.cat([self.window_gates, gates_new], dim=1)
            self._keep_gates(own(gates_all, 1))
        else:
            self._keep_gates(None)
        self.num_real = self.num_real + (rpos_new >= 0).sum(-1)
        self.padded = self.padded or bool((rpos_new < 0).any())

    # -- CacheLayerMixin API --

    def get_seq_length(self) -> int:
        """Tokens seen (not stored): positions for RoPE are derived from it."""
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.num_sinks + self.num_recall_slots + self.sliding_window

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.keys.shape[-2] if self.is_initialized else 0
        return self.num_sinks + stored + query_length, 0

    def _tensors(self):
        return ("keys", "values", "sink_keys", "sink_values", "sink_filled", "window_rpos", "window_gates",
                "num_real", "recurrent_state", "slot_keys", "slot_values", "slot_scores", "slot_rpos", "window_scores",
                "score_tail", "novelty_state")

    def _apply_batch(self, fn):
        for name in self._tensors():
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self._apply_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._apply_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._apply_batch(lambda t: t[indices])

    def reset(self) -> None:
        self.__init__(self.num_sinks, self.sliding_window, self.num_recall_slots, self.recall_span)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError(
                "An AHN cache cannot be cropped: evicted tokens are already folded into the memory. "
                "Assisted/speculative decoding is not supported with AHN."
            )

    def state_bytes(self) -> int:
        """Bytes of this layer's contents: sink store, window, recall slots, gates, scores and states. While steady
        steps run, the window lives in their buffer (``_steady_attend``), which holds ``S + G + steady_slack(W)``
        key/value places more than the window (a copy of the sinks and slots beside it, and room to move on; the
        concatenating step it replaced held ``S + G`` more): not counted here."""
        return sum(getattr(self, n).nbytes for n in self._tensors() if getattr(self, n) is not None)


class StaticSinkWindowLayer(SinkWindowLayer):
    """An AHN cache layer with fixed-size buffers, for ``torch.compile`` / CUDA-graph decoding.

    The window is a ring of ``W`` slots (``ring_keys/ring_values [B, Hkv, W, D]``, ``ring_rpos [B, W]``, ``-1``
    = empty or padding, ``ring_gates [B, W, G, H]``): the token of slot counter ``n`` lives in ring slot ``n % W``,
    so a decoding step overwrites one slot in place, after reading the token it evicts. The sink store, the
    per-row counts and the fp32 memory state are preallocated too, and ``slot_counter`` is a tensor: a
    one-token step has no host sync, no shape change and no new allocation. Inputs of several tokens (the
    prompt, a chat continuation) run through :class:`SinkWindowLayer`'s path on an ordered view of the ring and
    are written back, so both paths compute the same thing (``tests/test_static_cache.py``).
    """

    is_compileable = True

    def __init__(self, num_sinks: int, sliding_window: int, num_recall_slots: int = 0, recall_span=(0, 0), **kwargs):
        super().__init__(num_sinks, sliding_window, num_recall_slots, recall_span)
        self.kv_keys = self.kv_values = self.ring_keys = self.ring_values = None
        self.ring_rpos = self.ring_gates = self.slot_counter = None
        self.ring_scores = None  # recall slots: the ring's raw scores [B, W]

    def __repr__(self):
        slots = f", num_recall_slots={self.num_recall_slots}" if self.num_recall_slots else ""
        return f"StaticSinkWindowLayer(num_sinks={self.num_sinks}, sliding_window={self.sliding_window}{slots})"

    def lazy_initialization(self, key_states, value_states):
        super().lazy_initialization(key_states, value_states)
        B, Hkv, _, D = key_states.shape
        W, S, G = self.sliding_window, self.num_sinks, self.num_recall_slots
        # one buffer per K and V: the sink store in slots [0, S), the recall slots in [S, S + G), the ring in
        # [S + G, S + G + W) -- attention reads it whole, with no concatenation per step
        self.kv_keys = key_states.new_zeros(B, Hkv, S + G + W, D)
        self.kv_values = value_states.new_zeros(B, Hkv, S + G + W, value_states.shape[-1])
        self._views()
        self.ring_rpos = torch.full((B, W), -1, dtype=torch.long, device=self.device)
        self.slot_counter = torch.zeros((), dtype=torch.long, device=self.device)
        fixed = [self.kv_keys, self.kv_values, self.ring_rpos, self.slot_counter, self.sink_filled, self.num_real]
        if G:
            self.ring_scores = torch.full((B, W), float("-inf"), device=self.device)
            fixed += [self.slot_scores, self.slot_rpos, self.score_tail, self.ring_scores]
            self._slot_buffers = {"slot_keys": self.slot_keys, "slot_values": self.slot_values,
                                  "slot_scores": self.slot_scores, "slot_rpos": self.slot_rpos,
                                  "score_tail": self.score_tail}
        for t in fixed:
            _mark_static(t)

    def _views(self):
        """The sink store, recall slots and ring as views into the K/V buffers."""
        S, G = self.num_sinks, self.num_recall_slots
        self.sink_keys, self.ring_keys = self.kv_keys[:, :, :S], self.kv_keys[:, :, S + G:]
        self.sink_values, self.ring_values = self.kv_values[:, :, :S], self.kv_values[:, :, S + G:]
        if G:
            self.slot_keys, self.slot_values = self.kv_keys[:, :, S: S + G], self.kv_values[:, :, S: S + G]

    def ensure_buffers(self, gates: torch.Tensor, batch: int, heads: int, key_dim: int, value_dim: int):
        """Allocate the gate ring and the fp32 state once their shapes are known (the first AHN step)."""
        self._ensure_gate_ring(gates)
        if self.recurrent_state is None:
            self.recurrent_state = torch.zeros(batch, heads, key_dim, value_dim, dtype=torch.float32,
                                               device=self.device)
            _mark_static(self.recurrent_state)

    def _ensure_gate_ring(self, gates: torch.Tensor) -> None:
        """The ring of write gates ``[B, W, G, H]``, allocated from the first gates seen ``[B, T, G, H]``."""
        if self.ring_gates is None:
            self.ring_gates = gates.new_zeros(gates.shape[0], self.sliding_window, *gates.shape[2:])
            _mark_static(self.ring_gates)

    def _ordered_slots(self, seen: int) -> torch.Tensor:
        n = min(seen, self.sliding_window)
        return torch.arange(seen - n, seen, device=self.device) % self.sliding_window

    def update(self, key_states, value_states, *args, **kwargs):
        if key_states.shape[-2] != 1:  # several tokens: the dynamic path over the ordered window
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            idx = self._ordered_slots(self.cumulative_length)
            self.keys, self.values = self.ring_keys[:, :, idx], self.ring_values[:, :, idx]
            self.window_rpos = self.ring_rpos[:, idx]
            self.window_gates = None if self.ring_gates is None else self.ring_gates[:, idx]
            if self.num_recall_slots:
                self.window_scores = self.ring_scores[:, idx]
            return super().update(key_states, value_states, *args, **kwargs)
        self._begin(key_states, value_states)
        slot = (self.slot_counter % self.sliding_window).reshape(1)
        evicted = EvictedToken(self.ring_keys.index_select(2, slot), self.ring_values.index_select(2, slot),
                               self.ring_rpos.index_select(1, slot)[:, 0],
                               None if self.ring_gates is None else self.ring_gates.index_select(1, slot))
        if self.num_recall_slots:
            self._admit_static(evicted)
        self.ring_keys.index_copy_(2, slot, key_states)
        self.ring_values.index_copy_(2, slot, value_states)
        S = self.num_sinks
        if S:  # the evicted token is sink s -> store slot s (no host sync)
            hit = evicted.rpos[:, None] == torch.arange(S, device=self.device)  # [B, S]
            self.sink_keys.copy_(torch.where(hit[:, None, :, None], evicted.keys, self.sink_keys))
            self.sink_values.copy_(torch.where(hit[:, None, :, None], evicted.values, self.sink_values))
            self.sink_filled.logical_or_(hit)
        self.step = StaticStep(slot, evicted)
        self.cumulative_length += 1
        return self.kv_keys, self.kv_values  # [sink store (S), ring (W)]

    def _admit_static(self, ev: EvictedToken):
        """The token leaving the ring takes the weakest recall slot if it beats it (real, no sink; its span score
        from the tail of evicted raw scores and the ring's next ``before`` ones), in place, before the step
        attends."""
        before = self.recall_span[0]
        order = (self.slot_counter + torch.arange(before + 1, device=self.device)) % self.sliding_window
        ev_s = torch.cat([self.score_tail, self.ring_scores.index_select(1, order)], dim=1).amax(1)
        slots = self._slots_with(ev.keys, ev.values, ev_s, ev.rpos, eligible=ev.rpos >= self.num_sinks)
        for buf, new in zip((self.slot_keys, self.slot_values, self.slot_scores, self.slot_rpos), slots):
            buf.copy_(new)

    def _end_scores(self, step, scores_new, slots):
        if not isinstance(step, StaticStep):
            return super()._end_scores(step, scores_new, slots)
        if scores_new is None:
            raise RuntimeError("a step with recall slots ended without the new tokens' scores")
        after = self.recall_span[1]
        if after:  # the evicted token's raw score joins the tail (it is still in the ring at this slot)
            tail = torch.cat([self.score_tail[:, 1:], self.ring_scores.index_select(1, step.slot)], dim=1)
            self.score_tail.copy_(tail)
        self.ring_scores.index_copy_(1, step.slot, scores_new)

    def _store_novelty(self, novelty_state):
        if novelty_state is None or novelty_state is self.novelty_state:
            return
        if self.novelty_state is None or self.novelty_state.shape != novelty_state.shape:
            self.novelty_state = novelty_state.clone()
            _mark_static(self.novelty_state)
        else:
            self.novelty_state.copy_(novelty_state)

    def _end_static(self, step: StaticStep, rpos_new, gates_new):
        """The new token's position and gates into its ring slot, the counts."""
        self.ring_rpos.index_copy_(1, step.slot, rpos_new)
        self.ring_gates.index_copy_(1, step.slot, gates_new)
        self.num_real.add_((rpos_new[:, 0] >= 0).long())
        self.slot_counter.add_(1)

    def _store_state(self, recurrent_state):  # into the fixed buffer (its address is captured by CUDA graphs)
        if self.recurrent_state is None:
            self.recurrent_state = recurrent_state
            _mark_static(self.recurrent_state)
        elif recurrent_state is not self.recurrent_state:
            self.recurrent_state.copy_(recurrent_state)

    def _end_chunk(self, step, rpos_new, gates_new):
        buffers = {n: getattr(self, n) for n in ("sink_keys", "sink_values", "sink_filled", "num_real")}
        if self.num_recall_slots:  # end_step has set the slots and the tail (new tensors): back into the buffers
            for name, buf in self._slot_buffers.items():
                buf.copy_(getattr(self, name))
                setattr(self, name, buf)
        super()._end_chunk(step, rpos_new, gates_new)
        for name, buf in buffers.items():  # the dynamic path made new tensors: back into the fixed buffers
            buf.copy_(getattr(self, name))
            setattr(self, name, buf)
        idx = self._ordered_slots(self.cumulative_length)
        self.ring_keys[:, :, idx] = self.keys
        self.ring_values[:, :, idx] = self.values
        self.ring_rpos[:, idx] = self.window_rpos
        if self.window_gates is not None:
            self._ensure_gate_ring(self.window_gates)
            self.ring_gates[:, idx] = self.window_gates
        if self.num_recall_slots:
            self.ring_scores[:, idx] = self.window_scores
        self.slot_counter.fill_(self.cumulative_length)
        # the ordered views are rebuilt from the ring by the next multi-token update
        self.keys, self.values = self.ring_keys[:, :, :0], self.ring_values[:, :, :0]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.num_sinks + self.num_recall_slots + self.sliding_window + query_length, 0

    def _tensors(self):
        names = ("kv_keys", "kv_values", "ring_rpos", "ring_gates", "slot_counter", "sink_filled", "num_real",
                 "recurrent_state")
        if self.num_recall_slots:  # (the slots' keys and values are views into kv_keys / kv_values)
            names += ("slot_scores", "slot_rpos", "score_tail", "ring_scores")
        return names + (("novelty_state",) if self.novelty_state is not None else ())

    def _apply_batch(self, fn):  # beam search & co.: new buffers (the slot counter is per batch, not per row),
        counter, self.slot_counter = self.slot_counter, None  # then the views into them again
        super()._apply_batch(fn)
        self.slot_counter = counter
        self._views()
        if self.num_recall_slots:
            self._slot_buffers = {n: getattr(self, n) for n in self._slot_buffers}

    def reset(self) -> None:
        self.__init__(self.num_sinks, self.sliding_window, self.num_recall_slots, self.recall_span)


def _mark_static(t: torch.Tensor) -> None:
    """Tag a buffer as a fixed address for CUDA graphs (as transformers' static layers do)."""
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(t)


def _gather_sinks(store, hit, filled, evicted):
    """``store[b, :, s] = evicted[b, :, e]`` where ``hit[b, e, s]`` (each slot is hit at most once)."""
    picked = torch.einsum("bes,bhed->bhsd", hit.to(evicted.dtype), evicted)
    return torch.where(filled[:, None, :, None], picked, store)


class AhnCache(Cache):
    """Cache of an AHN model: :class:`SinkWindowLayer` for AHN layers, ``DynamicLayer`` for full layers.

    ``AhnCache(config)`` takes an ``AhnConfig``; or pass ``num_layers``, ``sliding_window``,
    ``num_sinks`` and ``full_attention_layers`` directly.
    """

    def __init__(self, config=None, *, num_layers=None, sliding_window=None, num_sinks=None,
                 full_attention_layers=None, num_recall_slots=None, recall_span=None):
        if config is not None:
            if num_recall_slots is None:
                num_recall_slots = getattr(config, "num_recall_slots", 0)
            if recall_span is None:
                recall_span = getattr(config, "recall_span", None)
            num_layers = config.get_text_config().num_hidden_layers if num_layers is None else num_layers
            sliding_window = config.sliding_window if sliding_window is None else sliding_window
            num_sinks = config.num_sinks if num_sinks is None else num_sinks
            if full_attention_layers is None:
                full_attention_layers = config.full_attention_layers
        if num_layers is None or sliding_window is None or num_sinks is None:
            raise ValueError("AhnCache needs a config, or num_layers, sliding_window and num_sinks.")
        full = set(full_attention_layers or ())
        layer_class = self._ahn_layer_class
        if full and layer_class is not SinkWindowLayer:
            raise ValueError(
                f"{type(self).__name__} needs AHN in every layer; this model keeps layers {sorted(full)} at full "
                "attention (their KV grows with the input): use AhnCache."
            )
        num_recall_slots, recall_span = num_recall_slots or 0, tuple(recall_span or (0, 0))
        slots = dict(num_recall_slots=num_recall_slots, recall_span=recall_span) if num_recall_slots else {}
        layers = [DynamicLayer() if i in full else layer_class(num_sinks, sliding_window, **slots)
                  for i in range(num_layers)]
        super().__init__(layers=layers)

    _ahn_layer_class = SinkWindowLayer

    def cache_bytes(self) -> int:
        """Bytes held by the cache over all layers (sinks, window, gates, states; full layers' KV)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, SinkWindowLayer):
                total += layer.state_bytes()
            elif layer.is_initialized:
                total += layer.keys.nbytes + layer.values.nbytes
        return total


class StaticAhnCache(AhnCache):
    """:class:`AhnCache` of :class:`StaticSinkWindowLayer` s: fixed-size buffers, ``is_compileable``, so that
    ``generate(..., cache_implementation="static")`` decodes under ``torch.compile`` (auto-compiled on CUDA).

    transformers recognises a static cache by ``cache.is_compileable`` (true here: every layer is a
    :class:`StaticSinkWindowLayer`), which is what its auto-compile and its mask preparation check. It is deliberately
    not a ``transformers.StaticCache``: that class is a KV buffer of ``max_cache_len`` positions per layer, while this
    one holds sinks + a ring of ``W`` slots + a recurrent state, and the one place transformers tests
    ``isinstance(cache, StaticCache)`` (keeping the padding mask for flash attention) does not apply to AHN."""

    _ahn_layer_class = StaticSinkWindowLayer


__all__ = ["STEADY_SLACK_DIVISOR", "AhnCache", "ChunkStep", "EvictedToken", "SinkWindowLayer", "StaticAhnCache",
           "StaticSinkWindowLayer", "StaticStep", "SteadyStep", "TensorMemo", "steady_slack", "version_of"]
