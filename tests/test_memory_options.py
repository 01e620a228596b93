"""Memory options beyond the official format: ``use_k_proj`` (a learned per-head projection of the key the memory
writes, before RoPE), ``position_free`` (the memory writes and reads keys and queries before RoPE) and
``value_centring`` (the memory writes each value minus a learned per-head mean). Off by
default; off is the official maths (every other test), on they must agree with an independent reference and give
the same result on every execution path."""

from __future__ import annotations

import pytest
import torch

from modeling_ahn import AhnConfig, AhnForCausalLM
from modeling_ahn.attention_ahn import get_layer_spec, memory_keys
from modeling_ahn.memory_ahn import memory_options, unofficial_options

from .conftest import AHN_TYPES, make_ahn, make_base, random_ids, random_projections
from .reference import LayerRecorder, naive_ahn_layer, naive_memory

W, S = 5, 2
OPTIONS = [dict(use_q_proj=True), dict(use_k_proj=True), dict(position_free=True),
           dict(use_q_proj=True, use_k_proj=True, position_free=True), dict(value_centring=True),
           dict(use_k_proj=True, value_centring=True)]




def test_options_are_recorded_off_by_default_and_named_as_unofficial():
    cfg = AhnConfig()
    assert memory_options(cfg) == {"use_q_proj": False, "use_k_proj": False, "position_free": False,
                                   "value_centring": False}
    assert unofficial_options(AhnConfig(use_q_proj=True, use_k_proj=True, position_free=True,
                                        value_centring=True)) == ["use_k_proj", "position_free", "value_centring"]


@pytest.mark.parametrize("option,key", [("use_k_proj", "k_proj.weight"), ("value_centring", "v_mean")])
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_a_fresh_option_writes_exactly_as_none(ahn_type, option, key):
    """A fresh ``k_proj`` (the identity) and a fresh ``v_mean`` (zero) give the official maths: the model with the
    option, its other weights the reference's, equals the reference."""
    ref = make_ahn("qwen2", ahn_type, W, S)
    model = make_ahn("qwen2", ahn_type, W, S, random_ahn=False, **{option: True})
    assert set(model.ahn_state_dict()) - set(ref.ahn_state_dict()) == {
        f"model.layers.{i}.ahn.fn.{key}" for i in range(2)}
    model.load_ahn_state_dict({**model.ahn_state_dict(), **ref.ahn_state_dict()})
    ids = random_ids(30)
    with torch.no_grad():
        assert (model(ids, use_cache=False).logits - ref(ids, use_cache=False).logits).abs().max() < 1e-5


def _layer_calls(model):
    """``(call, x, memory, memory's share of the layer output [T, H, D])`` of every AHN layer on 24 random tokens
    (the share: the layer's output minus the token-by-token reference of its sinks + window attention)."""
    with torch.no_grad(), LayerRecorder() as rec:
        model(random_ids(24, batch=1), use_cache=False)
    out = []
    for call in rec.calls:
        x, fn = call["hidden"][0], get_layer_spec(call["module"]).memory
        attn_ref, _ = naive_ahn_layer(fn, fn.ahn_type, call["query"][0], call["key"][0], call["value"][0], x, W, S,
                                      call["scaling"])
        out.append((call, x, fn, call["out"][0].double() - attn_ref))
    return out


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_centred_memory_equals_the_reference_over_centred_values(ahn_type):
    """The memory's share of the layer output, recomputed token by token from ``v_proj(x) - v_mean``."""
    for call, x, fn, got in _layer_calls(make_ahn("qwen2", ahn_type, W, S, value_centring=True)):
        assert fn.v_mean.abs().max() > 0.05  # (random: a zero mean would hide a missing subtraction)
        T, H = x.shape[0], fn.num_heads
        q, k, v = (call[n][0].transpose(0, 1) for n in ("query", "key", "value"))  # [T, h, D]
        rep = H // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1) - fn.v_mean
        e = torch.arange(T) - W
        idx = e.clamp(min=0)
        mem = naive_memory(fn, ahn_type, q, k[idx], v[idx], (x[idx], x), e >= S)
        plain = naive_memory(fn, ahn_type, q, k[idx], (v + fn.v_mean)[idx], (x[idx], x), e >= S)
        assert (mem - plain).abs().max() > 1e-3 and (got - mem).abs().max() < 1e-4, ahn_type


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_position_free_memory_equals_the_reference_over_unrotated_projections(arch, ahn_type):
    """The memory's read-out, recomputed token by token (tests/reference.py) from q_proj(W_q x) and k_proj(W_k x):
    the base's own projections of the layer input, before RoPE, through the memory's learned projections."""
    model = random_projections(make_ahn(arch, ahn_type, W, S, use_q_proj=True, use_k_proj=True,
                                              position_free=True))
    for call, x, fn, got in _layer_calls(model):
        attn = call["module"]
        T, H, D = x.shape[0], fn.num_heads, fn.head_dim
        rep = H // (attn.k_proj.out_features // D)
        q = torch.einsum("thd,hde->the", attn.q_proj(x).view(T, H, D), fn.q_proj.weight)
        k_raw = attn.k_proj(x).view(T, -1, D).repeat_interleave(rep, 1)
        k = torch.einsum("thd,hde->the", k_raw, fn.k_proj.weight)
        v = attn.v_proj(x).view(T, -1, D).repeat_interleave(rep, 1)
        e = torch.arange(T) - W
        idx = e.clamp(min=0)
        mem = naive_memory(fn, ahn_type, q, k[idx], v[idx], (x[idx], x), e >= S)
        assert mem.abs().max() > 1e-2 and (got - mem).abs().max() < 1e-4, (arch, ahn_type)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_every_path_gives_the_whole_sequence_result(ahn_type, options):
    """Chunked prefill, steady decoding and the static cache locate each evicted key's position the same way."""
    model = random_projections(make_ahn("llama", ahn_type, W, S, prefill_chunk_size=7, **options))
    ids = random_ids(40)
    with torch.no_grad():
        whole = model(ids, use_cache=False).logits
        out = model(ids[:, :30], use_cache=True)
        steps, cache = [out.logits], out.past_key_values
        for t in range(30, 40):
            o = model(ids[:, t: t + 1], past_key_values=cache, use_cache=True)
            steps.append(o.logits)
    assert (torch.cat(steps, 1) - whole).abs().max() < 1e-4
    static = model.generate(ids[:, :20], max_new_tokens=10, do_sample=False, cache_implementation="static",
                            eos_token_id=None, pad_token_id=0)
    dynamic = model.generate(ids[:, :20], max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(static, dynamic)


def test_left_padding_uses_each_rows_real_positions():
    """A left-padded row gives the logits of the same row unpadded (its keys' RoPE positions are real positions)."""
    model = random_projections(make_ahn("qwen2", "gdn", W, S, use_k_proj=True, position_free=True))
    ids = random_ids(25, batch=1)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        alone = model(ids, use_cache=False).logits
        both = model(padded, attention_mask=mask, use_cache=False).logits[:, 4:]
    assert (alone - both).abs().max() < 1e-4


def test_memory_keys_undo_rope_at_the_given_positions():
    model = make_ahn("qwen2", "gdn", W, S, position_free=True)
    spec = get_layer_spec(model.model.layers[0].self_attn)
    raw = torch.randn(2, 2, 6, spec.memory.head_dim)
    pos = torch.tensor([[3, 4, 5, 6, 7, 8], [10, 11, 12, 13, 14, 15]])
    cos, sin = model.model.rotary_emb(raw, pos)
    from modeling_ahn.memory_ahn import rotate

    rotated = rotate(raw, cos[:, None], sin[:, None])
    assert torch.allclose(memory_keys(spec, rotated, pos), raw, atol=1e-5)
    assert not torch.allclose(memory_keys(spec, rotated, pos + 1), raw, atol=1e-3)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(o))
def test_options_round_trip_through_save_and_load(tmp_path, options):
    model = random_projections(make_ahn("qwen2", "gdn", W, S, **options))
    model.config.base_model_name_or_path = None
    model.save_pretrained(tmp_path)
    loaded = AhnForCausalLM.from_pretrained(tmp_path, base_model=make_base("qwen2"))
    assert all(getattr(loaded.config, name) for name in options)
    ids = random_ids(30)
    with torch.no_grad():
        assert torch.equal(loaded(ids, use_cache=False).logits, model(ids, use_cache=False).logits)


def test_the_card_says_when_an_adapter_goes_beyond_the_official_format():
    from modeling_ahn.hub.card import render_model_card

    official = make_ahn("qwen2", "gdn", W, S, use_q_proj=True).config
    beyond = make_ahn("qwen2", "gdn", W, S, use_k_proj=True, position_free=True).config
    assert "Beyond the official format" not in render_model_card(official, 1)
    card = render_model_card(beyond, 1)
    assert "Beyond the official format" in card and "`use_k_proj`, `position_free`" in card


def test_value_means_start_at_the_mean_value_each_layer_writes():
    """``training/centring.init_value_means``: each layer's ``v_mean`` becomes the mean over the tokens that left
    the window (positions ``S .. T - W - 1`` of every sequence) of that layer's cached values, per KV head, repeated
    to the query heads; a model without the option is refused."""
    from modeling_ahn.training.centring import init_value_means

    model = make_ahn("qwen2", "gdn", W, S, value_centring=True)
    seqs = [random_ids(30, batch=1, seed=s) for s in range(3)]
    with torch.no_grad(), LayerRecorder() as rec:
        for ids in seqs:
            model(ids, use_cache=False)
    init_value_means(model, seqs)
    for i, (m, layer) in enumerate(zip(model.ahn_modules().values(), range(2))):
        values = torch.cat([c["value"][0, :, S: 30 - W] for c in rec.calls[layer::2]], dim=1)  # [Hkv, n, D]
        expected = values.double().mean(1).repeat_interleave(m.fn.num_heads // values.shape[0], 0)
        assert torch.allclose(m.fn.v_mean.double(), expected, atol=1e-6), i
    with pytest.raises(ValueError, match="value_centring=True"):
        init_value_means(make_ahn("qwen2", "gdn", W, S), seqs)
    with pytest.raises(ValueError, match="no token left the window"):
        init_value_means(model, [random_ids(W + S, batch=1)])
