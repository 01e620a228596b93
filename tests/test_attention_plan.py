"""The attention plan on its own: ``choose_path`` picks one ``AttentionPath`` per call from the cache layer's step
and the inputs (the end-to-end equalities of each path are in test_model.py, test_static_cache.py and
test_sink_positions.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from modeling_ahn import window_attention
from modeling_ahn.attention_ahn import AttentionPath, ChunkFacts, choose_path
from modeling_ahn.cache_ahn import ChunkStep, SinkWindowLayer, StaticSinkWindowLayer, StaticStep, SteadyStep

W, S, B, HKV, D = 8, 2, 2, 1, 4


def _kv(n):
    return torch.randn(B, HKV, n, D), torch.randn(B, HKV, n, D)


def _feed(layer, n, mask=None):
    """Run ``n`` tokens through the layer's step as the attention would (``mask`` ``[B, n]``, ``None``: no pad)."""
    layer.update(*_kv(n))
    rpos = layer.real_positions(mask, n)
    layer.end_step(rpos, torch.zeros(B, n, 1, 1), None)


def _plan(layer, q_len, inner="sdpa", mask=None, whole_sequence=False):
    """Begin a step of ``q_len`` tokens and return the path the plan chooses for it."""
    spec = SimpleNamespace(inner=inner, sink_position_limit=None)
    layer.update(*_kv(q_len))
    step = layer.step
    facts = ChunkFacts(spec, layer, step, mask, q_len, whole_sequence) if isinstance(step, ChunkStep) else None
    return choose_path(spec, step, facts)


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    monkeypatch.setattr(window_attention, "BLOCK_MIN", 2)  # query blocks of W // 2 = 4


def test_no_step_is_the_base_attention():
    assert choose_path(SimpleNamespace(inner="sdpa"), None, None) is AttentionPath.FULL


def test_one_token_steps():
    layer = SinkWindowLayer(S, W)
    _feed(layer, S + W - 1)
    assert _plan(layer, 1) is AttentionPath.MASKED  # the window is not full yet
    assert isinstance(layer.step, ChunkStep)
    layer.step = None
    layer = SinkWindowLayer(S, W)
    _feed(layer, S + W)
    assert _plan(layer, 1) is AttentionPath.STEADY_STEP and isinstance(layer.step, SteadyStep)
    static = StaticSinkWindowLayer(S, W)
    _feed(static, 3)
    assert _plan(static, 1) is AttentionPath.STATIC_STEP and isinstance(static.step, StaticStep)


def test_a_padded_row_ends_the_steady_step():
    layer = SinkWindowLayer(S, W)
    mask = torch.ones(B, S + W, dtype=torch.long)
    mask[1, 0] = 0
    _feed(layer, S + W, mask)
    assert layer.padded and _plan(layer, 1) is AttentionPath.MASKED


def test_chunks():
    layer = SinkWindowLayer(S, W)
    assert _plan(layer, 3 * W) is AttentionPath.BLOCKED  # window not yet full, with a gradient: the blocked path
    layer.step = None
    layer = SinkWindowLayer(S, W)
    with torch.no_grad():  # the sequence's first chunk, no pad, on CPU: causal head + strided band
        assert _plan(layer, 3 * W) is AttentionPath.FRESH_PREFILL
    layer.step = None
    layer = SinkWindowLayer(S, W)
    with torch.no_grad():  # not longer than window + sinks: nothing to band
        assert _plan(layer, W + S) is AttentionPath.MASKED
    layer.step = None
    layer = SinkWindowLayer(S, W)
    _feed(layer, S + W)
    assert _plan(layer, W) is AttentionPath.MASKED  # not longer than the window: one masked call
    layer.step = None
    assert _plan(layer, 3 * W) is AttentionPath.BANDED_PREFILL  # steady: window full, sinks stored, no pad
    layer.step = None
    assert _plan(layer, 3 * W, inner="eager") is AttentionPath.MASKED  # eager returns weights: one call


def test_a_pad_or_an_unstored_sink_is_not_banded():
    layer = SinkWindowLayer(S, W)
    mask = torch.ones(B, S + W + 3 * W, dtype=torch.long)
    mask[1, :S + W - 1] = 0  # row 1: its sinks are still in the window, not in the store
    _feed(layer, S + W, mask[:, :S + W])
    assert _plan(layer, 3 * W, mask=mask) is AttentionPath.BLOCKED
    layer = SinkWindowLayer(S, W)
    mask = torch.ones(B, S + W + 3 * W, dtype=torch.long)
    mask[1, S + W + 5] = 0  # every sink stored, the window full, but a pad among the new tokens
    _feed(layer, S + W)
    assert bool(layer.sink_filled.all())
    assert _plan(layer, 3 * W, mask=mask) is AttentionPath.BLOCKED


def test_whole_sequences_block_only_where_it_pays(monkeypatch):
    layer = SinkWindowLayer(S, W)
    assert _plan(layer, 6 * W, whole_sequence=True) is AttentionPath.BLOCKED
    monkeypatch.setattr(window_attention, "BLOCK_MIN", 10**9)  # one block as long as the sequence: no saving
    layer = SinkWindowLayer(S, W)
    assert _plan(layer, 6 * W, whole_sequence=True) is AttentionPath.MASKED
