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
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer


class SinkWindowLayer(CacheLayerMixin):
    """Cache layer of one AHN-enabled attention layer."""

    is_sliding = True
    is_compileable = False
    is_croppable = False

    def __init__(self, num_sinks: int, sliding_window: int, **kwargs):
        super().__init__()
        self.num_sinks = int(num_sinks)
        self.sliding_window = int(sliding_window)
        self.cumulative_length = 0
        self.sink_keys = self.sink_values = self.sink_filled = None
        self.window_rpos = self.window_gates = None
        self.num_real = None
        self.recurrent_state = None
        self.pending = None

    def __repr__(self):
        return f"SinkWindowLayer(num_sinks={self.num_sinks}, sliding_window={self.sliding_window})"

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
        self.is_initialized = True

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0] if self.is_initialized else -1

    # -- the two-phase step: `update` (called by the attention module) then `commit` (by the AHN) --

    def update(self, key_states, value_states, *args, **kwargs):
        """Append the new keys/values and return ``[sinks, window, new]`` for attention.

        Eviction into the sink store and the memory happens in :meth:`commit`, once the AHN
        attention function knows the rows' padding and the new tokens' write gates.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.pending is not None:
            raise RuntimeError("SinkWindowLayer.update called twice without commit (is the AHN attention active?)")
        all_k = torch.cat([self.keys, key_states], dim=-2)
        all_v = torch.cat([self.values, value_states], dim=-2)
        self.pending = dict(start=self.cumulative_length, num_old=self.keys.shape[-2], keys=all_k, values=all_v)
        self.cumulative_length += key_states.shape[-2]
        return torch.cat([self.sink_keys, all_k], dim=-2), torch.cat([self.sink_values, all_v], dim=-2)

    def real_positions(self, new_mask: torch.Tensor | None, q_len: int) -> torch.Tensor:
        """Real (padding-free) positions of the new tokens, ``-1`` for pads; ``new_mask`` is ``[B, q]``."""
        B = self.num_real.shape[0]
        if new_mask is None:
            return self.num_real[:, None] + torch.arange(q_len, device=self.device)[None].expand(B, -1)
        m = new_mask.to(device=self.device, dtype=torch.long)
        return torch.where(m.bool(), self.num_real[:, None] + m.cumsum(-1) - 1, -1)

    def commit(self, rpos_new: torch.Tensor, gates_new: torch.Tensor | None, recurrent_state=None):
        """Trim to the last ``W`` slots, move evicted sinks to the sink store, store the new state."""
        p, self.pending = self.pending, None
        W, S = self.sliding_window, self.num_sinks
        all_k, all_v = p["keys"], p["values"]
        rpos_all = torch.cat([self.window_rpos, rpos_new], dim=-1)
        n_ev = max(0, all_k.shape[-2] - W)
        if S and n_ev:
            # evicted token with real position s < S -> sink slot s (one-hot, no host sync)
            hit = rpos_all[:, :n_ev, None] == torch.arange(S, device=rpos_all.device)  # [B, n_ev, S]
            filled = hit.any(1)
            self.sink_keys = _gather_sinks(self.sink_keys, hit, filled, all_k[:, :, :n_ev])
            self.sink_values = _gather_sinks(self.sink_values, hit, filled, all_v[:, :, :n_ev])
            self.sink_filled = self.sink_filled | filled
        self.keys, self.values = all_k[:, :, n_ev:], all_v[:, :, n_ev:]
        self.window_rpos = rpos_all[:, n_ev:]
        if gates_new is not None:
            gates_all = gates_new if self.window_gates is None else torch.cat([self.window_gates, gates_new], dim=1)
            self.window_gates = gates_all[:, n_ev:]
        self.num_real = self.num_real + (rpos_new >= 0).sum(-1)
        if recurrent_state is not None:
            self.recurrent_state = recurrent_state

    # -- CacheLayerMixin API --

    def get_seq_length(self) -> int:
        """Tokens seen (not stored): positions for RoPE are derived from it."""
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.num_sinks + self.sliding_window

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.keys.shape[-2] if self.is_initialized else 0
        return self.num_sinks + stored + query_length, 0

    def _tensors(self):
        return ("keys", "values", "sink_keys", "sink_values", "sink_filled", "window_rpos", "window_gates",
                "num_real", "recurrent_state")

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
        self.__init__(self.num_sinks, self.sliding_window)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError(
                "An AHN cache cannot be cropped: evicted tokens are already folded into the memory. "
                "Assisted/speculative decoding is not supported with AHN."
            )

    def state_bytes(self) -> int:
        """Bytes held by this layer (all tensors)."""
        return sum(getattr(self, n).nbytes for n in self._tensors() if getattr(self, n) is not None)


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
                 full_attention_layers=None):
        if config is not None:
            num_layers = config.get_text_config().num_hidden_layers if num_layers is None else num_layers
            sliding_window = config.sliding_window if sliding_window is None else sliding_window
            num_sinks = config.num_sinks if num_sinks is None else num_sinks
            if full_attention_layers is None:
                full_attention_layers = config.full_attention_layers
        if num_layers is None or sliding_window is None or num_sinks is None:
            raise ValueError("AhnCache needs a config, or num_layers, sliding_window and num_sinks.")
        full = set(full_attention_layers or ())
        layers = [DynamicLayer() if i in full else SinkWindowLayer(num_sinks, sliding_window)
                  for i in range(num_layers)]
        super().__init__(layers=layers)

    def cache_bytes(self) -> int:
        """Bytes held by the cache over all layers (sinks, window, gates, states; full layers' KV)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, SinkWindowLayer):
                total += layer.state_bytes()
            elif layer.is_initialized:
                total += layer.keys.nbytes + layer.values.nbytes
        return total


__all__ = ["AhnCache", "SinkWindowLayer"]
