"""Sink distances beyond the base's trained context (``clamp_sink_positions``).

A query past the base's ``max_position_embeddings`` P scores the attention sinks as if it sat at P, so no
query-sink distance exceeds what the base was trained on; the window and the memory are untouched.
"""

from __future__ import annotations

import pytest
import torch

from modeling_ahn import AhnCache
from modeling_ahn.attention_ahn import get_layer_spec

from .conftest import make_ahn

P, W, S = 24, 4, 2


def _model(ahn_type="gdn", clamp=True):
    model = make_ahn("llama", ahn_type, W, S)
    model.config.base_config.max_position_embeddings = P
    model.config.clamp_sink_positions = clamp
    return model


def _tokens(n, seed):
    return torch.randint(3, 256, (n,), generator=torch.Generator().manual_seed(seed))


def _two_sequences():
    """Same sinks, same tail, different-length middles: both tails lie wholly beyond P."""
    sinks, tail = _tokens(S, 1), _tokens(10, 2)
    a = torch.cat([sinks, _tokens(30, 3), tail])[None]
    b = torch.cat([sinks, _tokens(47, 4), tail])[None]
    return a, b


def _last_logits(model, ids, how):
    with torch.no_grad():
        if how == "whole":
            return model(ids, use_cache=False).logits[0, -1]
        cache = AhnCache(model.config)
        model.config.prefill_chunk_size = 7
        out = model(ids[:, :-1], past_key_values=cache)
        out = model(ids[:, -1:], past_key_values=cache)  # a decode step
        model.config.prefill_chunk_size = None
        return out.logits[0, -1]


@pytest.mark.parametrize("how", ["whole", "cached"])
def test_sinks_plus_window_output_beyond_p_does_not_depend_on_the_absolute_position(how, attention_path):
    """In sinks+SWA mode the last token sees only the sinks and the tail; with clamping its distance to the
    sinks is P - j whatever its absolute position, so both sequences give the same logits. Without
    clamping they differ (the guard that the test can fail)."""
    a, b = _two_sequences()
    for clamp in (True, False):
        model = _model(clamp=clamp)
        with model.attention_mode("swa"):
            la, lb = _last_logits(model, a, how), _last_logits(model, b, how)
        if clamp:
            assert (la - lb).abs().max() < 1e-5
        else:
            assert (la - lb).abs().max() > 1e-3


@pytest.mark.parametrize("ahn_type", ["gdn", "mamba2"])
def test_clamped_forward_equals_chunked_prefill_and_decode(ahn_type, attention_path):
    model = _model(ahn_type)
    ids = torch.cat([_tokens(41, 5)])[None]
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        unclamped = _model(ahn_type, clamp=False)(ids, use_cache=False).logits
        assert (ref[:, :P] - unclamped[:, :P]).abs().max() < 1e-6  # nothing changes within P
        assert (ref[:, P:] - unclamped[:, P:]).abs().max() > 2e-4  # (chunk tolerance below: 1e-4)
        for chunk in (1, 3, 7, 2 * W + 1):
            model.config.prefill_chunk_size = chunk
            out = model(ids, past_key_values=AhnCache(model.config)).logits
            assert (out - ref).abs().max() < 1e-4, chunk
        model.config.prefill_chunk_size = None
        cache = AhnCache(model.config)
        logits = [model(ids[:, :20], past_key_values=cache).logits]
        for t in range(20, ids.shape[1]):
            logits.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
    assert (torch.cat(logits, 1) - ref).abs().max() < 1e-4


def test_left_padded_rows_are_clamped_by_their_own_positions():
    model = _model()
    rows = [_tokens(40, 6), _tokens(31, 7)]
    n = max(map(len, rows))
    ids = torch.zeros(2, n, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r):], mask[i, n - len(r):] = r, 1
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, use_cache=False).logits
        for i, r in enumerate(rows):
            alone = model(r[None], use_cache=False).logits
            assert (batch[i, n - len(r):] - alone[0]).abs().max() < 1e-4


def test_no_sinks_or_flag_off_leaves_the_spec_untouched():
    model = _model()
    spec = get_layer_spec(model.model.layers[0].self_attn)
    assert spec.sink_position_limit == P
    model.config.clamp_sink_positions = False
    assert spec.sink_position_limit is None
    model.config.clamp_sink_positions, model.config.num_sinks = True, 0
    assert spec.sink_position_limit is None


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.03)])
def test_merged_sink_attention_equals_the_doubled_head_reference(dtype, tol, attention_path, monkeypatch):
    """Prefill beyond P with SDPA merges the clamped sinks into one summary key (``_sink_merged_attention``);
    eager attention rotates the queries with a doubled head. Same logits (bf16: within bf16 rounding of the
    fp32 result, and as close as the doubled head gets)."""
    from modeling_ahn import window_attention

    calls = []
    real = window_attention.sink_merged_attention
    monkeypatch.setattr(window_attention, "sink_merged_attention", lambda *a: calls.append(1) or real(*a))
    # the merged path serves SDPA beyond CPU's strided band kernel (CUDA; tested with clamping in test_model.py)
    monkeypatch.setattr(window_attention, "_CPU_FLASH", None)
    ids = _tokens(41, 8)[None]
    out = {}
    for inner in ("sdpa", "eager"):
        model = _model().to(dtype)
        for layer in model.model.layers:
            get_layer_spec(layer.self_attn).inner = inner
        with torch.no_grad():
            out[inner] = model(ids, use_cache=False).logits.float()
    assert calls, "the merged path did not run"
    ref = _model()
    with torch.no_grad():
        fp32 = ref(ids, use_cache=False).logits
    assert (out["sdpa"] - out["eager"]).abs().max() < tol
    if dtype == torch.bfloat16:
        assert (out["sdpa"] - fp32).abs().max() <= 1.5 * (out["eager"] - fp32).abs().max() + 1e-3
