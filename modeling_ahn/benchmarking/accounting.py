# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Model FLOPs and cache bytes of a prefill of ``length`` tokens: full attention, sinks+SWA, or AHN.

The conventions are the AHN paper's (Table 9), which this reproduces:

* a matmul of ``m x k`` by ``k x n`` costs ``2mkn`` FLOPs; biases, norms, softmax and activations are ignored;
* causal attention: query ``i`` attends ``i`` keys, so QK^T and AV cost ``2 L^2 D`` per head in total;
  with sinks+window it attends ``min(i, S + W)`` keys: ``4 D (K L - K^2 / 2)`` per head with ``K = S + W``;
* "mixing" FLOPs are the attention projections (q, k, v, o) plus the attention core (and the AHN module);
  "model" FLOPs add the MLP and the vocabulary projections of both the input embedding and the LM head;
* cache bytes count keys and values of every attention layer (and AHN's recurrent state); the paper quotes
  fp32-equivalent bytes (4 per element); ``dtype_bytes`` gives the real size (2 for bf16).

The AHN module is counted per token that enters its memory (``L - S - W`` of them) as its linear layers
(``2 x parameters``) plus the state update (``2 H D^2``): the size of the paper's AHN increments (+0.1 to
+0.2 % of full attention's mixing FLOPs in its Table 2). Not part of the payload.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

METHODS = ("full", "swa", "ahn")


@dataclass
class Cost:
    method: str
    length: int
    mixing_flops: float
    model_flops: float
    cache_bytes: int  # at dtype_bytes per element (AHN state at state_bytes)
    cache_bytes_fp32: int  # everything at 4 bytes per element: the paper's convention

    def as_dict(self):
        return asdict(self)


def _base_config(config):
    return getattr(config, "base_config", None) or getattr(config, "text_config", None) or config


def ahn_layer_parameters(ahn_type: str, hidden: int, heads: int, head_dim: int) -> int:
    import torch

    from ..memory_ahn import build_memory

    with torch.device("meta"):
        fn = build_memory(ahn_type, hidden, heads, head_dim)
    return sum(p.numel() for p in fn.parameters())


def cost(config, length: int, method: str = "full", sliding_window: int | None = None, num_sinks: int | None = None,
         ahn_type: str | None = None, dtype_bytes: int = 2, state_bytes: int = 4,
         num_layers: int | None = None) -> Cost:
    """FLOPs and cache bytes of a ``length``-token prefill of ``config`` (a base config or an ``AhnConfig``,
    whose window, sinks, memory type and full-attention layers are used unless given here).

    ``num_layers`` overrides the layer count used for FLOPs only (see the note on Qwen2.5-7B in the tests)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    bc = _base_config(config)
    is_ahn = getattr(config, "model_type", None) == "ahn"
    W = sliding_window if sliding_window is not None else (config.sliding_window if is_ahn else None)
    S = num_sinks if num_sinks is not None else (config.num_sinks if is_ahn else 0)
    if method != "full" and W is None:
        raise ValueError(f"method {method!r} needs sliding_window (and num_sinks) for a base config")
    atype = ahn_type or (config.ahn_type if is_ahn else "gdn")
    full_layers = set(getattr(config, "full_attention_layers", None) or ()) if is_ahn else set()

    hidden, layers = bc.hidden_size, bc.num_hidden_layers
    H = bc.num_attention_heads
    kv = getattr(bc, "num_key_value_heads", None) or H
    D = getattr(bc, "head_dim", None) or hidden // H
    inter, vocab = bc.intermediate_size, bc.vocab_size
    L = float(length)
    flop_layers = num_layers if num_layers is not None else layers

    proj = 2 * L * (hidden * H * D + 2 * hidden * kv * D + H * D * hidden)
    core_full = 2 * L * L * H * D
    K = min(float(S + W), L) if method != "full" else L
    core_win = 4 * H * D * (K * L - K * K / 2)
    mlp = 2 * L * 3 * hidden * inter
    vocab_flops = 2 * (2 * L * hidden * vocab)

    mixing = 0.0
    cache_elems = 0
    state_elems = 0
    for i in range(flop_layers):
        windowed = method != "full" and i not in full_layers
        mixing += proj + (core_win if windowed else core_full)
        if method == "ahn" and windowed:
            mixing += max(0.0, L - K) * (2 * ahn_layer_parameters(atype, hidden, H, D) + 2 * H * D * D)
    for i in range(layers):
        windowed = method != "full" and i not in full_layers
        cache_elems += 2 * kv * D * (int(K) if windowed else length)
        if method == "ahn" and windowed:
            state_elems += H * D * D
    model = mixing + flop_layers * mlp + vocab_flops
    return Cost(method, length, mixing, model, cache_elems * dtype_bytes + state_elems * state_bytes,
                (cache_elems + state_elems) * 4)


def compare(config, length: int, **kw) -> dict[str, dict]:
    """``cost`` for every method, with each one's share of full attention."""
    rows = {m: cost(config, length, m, **kw).as_dict() for m in METHODS}
    for m in METHODS:
        for k in ("mixing_flops", "model_flops", "cache_bytes", "cache_bytes_fp32"):
            rows[m][k + "_vs_full"] = rows[m][k] / rows["full"][k]
    return rows
