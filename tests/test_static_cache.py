"""StaticAhnCache: fixed-size ring buffers that compute exactly what AhnCache computes, and compile."""

from __future__ import annotations

import pytest
import torch

from modeling_ahn import AhnCache, StaticAhnCache, StaticSinkWindowLayer

from .conftest import AHN_TYPES, compiled_decode, make_ahn, run_chunks

W, S = 5, 2


def _ids(length, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 101, (batch, length), generator=g)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
@pytest.mark.parametrize("sinks", [0, S])
def test_static_equals_dynamic_over_prefill_decode_and_continuation(arch, ahn_type, sinks):
    """Prompt (shorter and longer than the window), 25 one-token steps (the ring wraps 5 times, sinks are
    evicted into the store), a multi-token continuation, then more steps."""
    model = make_ahn(arch, ahn_type, sliding_window=W, num_sinks=sinks)
    for prompt in (3, 9):
        ids = _ids(prompt + 25 + 4 + 6, seed=prompt)
        cut = [prompt] + [1] * 25 + [4] + [1] * 6
        chunks = list(torch.split(ids, cut, dim=1))
        with torch.no_grad():
            ref = run_chunks(model, AhnCache(model.config), chunks)
            static = StaticAhnCache(model.config)
            got = run_chunks(model, static, chunks)
            whole = model(ids, use_cache=False).logits
        assert (got - ref).abs().max() < 1e-5
        assert (got - whole).abs().max() < 1e-4  # and both equal the uncached whole-sequence forward
        layer = static.layers[0]
        assert isinstance(layer, StaticSinkWindowLayer)
        assert layer.get_seq_length() == ids.shape[1] and int(layer.slot_counter) == ids.shape[1]


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_static_equals_dynamic_with_left_padding(ahn_type):
    model = make_ahn("qwen2", ahn_type, sliding_window=W, num_sinks=S)
    ids = _ids(20, batch=3, seed=4)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # rows with 3 and 7 pad tokens in front
    mask[2, :7] = 0
    chunks = list(torch.split(ids, [8] + [1] * 12, dim=1))
    with torch.no_grad():
        ref = run_chunks(model, AhnCache(model.config), chunks, mask)
        got = run_chunks(model, StaticAhnCache(model.config), chunks, mask)
    real = mask.bool()
    assert (got - ref)[real].abs().max() < 1e-5


def test_generate_with_cache_implementation_static():
    model = make_ahn("qwen2", "gdn", sliding_window=W, num_sinks=S)
    ids = _ids(7, batch=2, seed=2)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    kw = dict(attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0, output_scores=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        got = model.generate(ids, cache_implementation="static", **kw)
    assert torch.equal(ref.sequences, got.sequences)
    assert max(float((a - b).abs().max()) for a, b in zip(ref.scores, got.scores)) < 1e-5
    assert isinstance(got.past_key_values, StaticAhnCache)


def test_beam_search_with_the_static_cache():
    model = make_ahn("qwen2", "gdn", sliding_window=W, num_sinks=S)
    ids = _ids(9, seed=3)
    kw = dict(max_new_tokens=12, do_sample=False, num_beams=3, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, **kw), model.generate(ids, cache_implementation="static", **kw))


def test_sink_clamping_beyond_the_base_context_matches_dynamic():
    """The base's trained context is 512 positions: decode to 540 with sinks, static = dynamic."""
    model = make_ahn("llama", "gdn", sliding_window=W, num_sinks=S)
    assert model.config.base_config.max_position_embeddings == 512
    ids = _ids(540, seed=5)
    chunks = list(torch.split(ids, [500] + [1] * 40, dim=1))
    with torch.no_grad():
        ref = run_chunks(model, AhnCache(model.config), chunks)
        got = run_chunks(model, StaticAhnCache(model.config), chunks)
        model.config.clamp_sink_positions = False
        unclamped = run_chunks(model, StaticAhnCache(model.config), chunks)
    assert (got - ref).abs().max() < 1e-5
    assert (unclamped[:, 512:] - got[:, 512:]).abs().max() > 1e-3  # the clamping is active past 512


def test_decode_steps_keep_buffers_in_place_and_bounded():
    model = make_ahn("qwen2", "gdn", sliding_window=W, num_sinks=S)
    cache = StaticAhnCache(model.config)
    ids = _ids(40, seed=6)
    with torch.no_grad():
        model(ids[:, :9], past_key_values=cache, use_cache=True)
        layer = cache.layers[1]
        names = layer._tensors()
        ptrs = {n: getattr(layer, n).data_ptr() for n in names}
        size = cache.cache_bytes()
        for t in range(9, 40):
            model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            if t == 20:  # a multi-token continuation in between writes back into the same buffers
                model(ids[:, 0:3], past_key_values=cache, use_cache=True)
    assert {n: getattr(layer, n).data_ptr() for n in names} == ptrs
    assert cache.cache_bytes() == size
    assert cache.is_compileable and not AhnCache(model.config).is_compileable


def test_static_cache_refuses_full_attention_layers():
    model = make_ahn("qwen2", "gdn", sliding_window=W, num_sinks=S, full_attention_layers=[0])
    with pytest.raises(ValueError, match="needs AHN in every layer"):
        StaticAhnCache(model.config)


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_decode_step_compiles_without_graph_breaks(ahn_type):
    """``torch.compile(fullgraph=True)`` traces a whole decoding step of the base with the static cache (the
    ``eager`` backend: no C++ toolchain needed); the compiled steps equal the uncompiled ones."""
    model = make_ahn("qwen2", ahn_type, sliding_window=W, num_sinks=S)
    diff, graphs, runs, _ = compiled_decode(model, _ids(30, seed=7), 8)
    assert diff < 1e-5
    # every step ran a captured graph; the step counter may cost one recompile (it becomes dynamic), not one per step
    assert len(runs) == 22 and 1 <= len(graphs) <= 2, (len(graphs), len(runs))


def test_bf16_decode_step_compiles_without_graph_breaks():
    """A bf16 model's decoding step traces with ``fullgraph=True`` too: the memory's choice of product dtype asks
    whether the CPU multiplies bf16 natively, a check made once at import (traced, the check itself broke the graph:
    found by ``ahn bench`` compiling a bf16 step)."""
    model = make_ahn("qwen2", "gdn", sliding_window=W, num_sinks=S).to(torch.bfloat16)
    diff, graphs, runs, _ = compiled_decode(model, _ids(30, seed=7), 8)
    assert diff < 1e-2 and 1 <= len(graphs) <= 2 and len(runs) == 22, (diff, len(graphs), len(runs))
