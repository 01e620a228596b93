"""AHN models on tiny Qwen2 / Qwen3 / Llama bases: exactness against the base, the spec, and itself."""

from __future__ import annotations

import pytest
import torch

from modeling_ahn import AhnCache, AhnForCausalLM, SinkWindowLayer, attention_ahn, window_attention
from modeling_ahn.attention_ahn import AttentionPath, get_layer_spec

from .conftest import AHN_TYPES, ARCHS, count_paths, make_ahn, make_base
from .reference import LayerRecorder, naive_ahn_layer

W, S = 5, 2


def _ids(length, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 101, (batch, length), generator=g)


def window_sink_mask(length, window, sinks):
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    return ((j <= i) & ((i - j < window) | (j < sinks)))[None, None]


@pytest.mark.parametrize("arch", ARCHS + ["mistral"])
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_sequence_within_window_equals_base(arch, ahn_type):
    ids = _ids(12)
    with torch.no_grad():
        ref = make_base(arch)(ids).logits
        model = make_ahn(arch, ahn_type, sliding_window=16, num_sinks=2)
        full = model(ids, use_cache=False).logits
        cached = model(ids).logits
    assert (full - ref).abs().max() < 1e-5
    assert (cached - ref).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sinks", [0, 2])
def test_fresh_adapter_equals_base_with_window_sink_mask(arch, sinks, attention_path):
    ids = _ids(23)
    mask = window_sink_mask(23, W, sinks)
    with torch.no_grad():
        additive = torch.where(mask, 0.0, -torch.inf)
        ref = make_base(arch, attn_implementation="eager")(ids, attention_mask=additive).logits
        model = make_ahn(arch, "gdn", W, sinks, random_ahn=False)
        assert all(torch.all(m.fn.o_proj.weight == 0) for m in model.ahn_modules().values())
        out = model(ids, use_cache=False).logits
        cached = model(ids).logits
    assert (out - ref).abs().max() < 1e-5
    assert (cached - ref).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
@pytest.mark.parametrize("sinks", [0, 2])
def test_each_layer_equals_the_naive_spec_reference(arch, ahn_type, sinks, attention_path):
    """Record q/k/v/x entering every AHN layer, recompute the layer token by token from the spec."""
    model = make_ahn(arch, ahn_type, W, sinks)
    ids = _ids(19)
    with LayerRecorder() as rec, torch.no_grad():
        model(ids, use_cache=False)
    assert len(rec.calls) == model.config.base_config.num_hidden_layers
    for call in rec.calls:
        fn = get_layer_spec(call["module"]).memory
        attn, mem = naive_ahn_layer(fn, ahn_type, call["query"][0], call["key"][0], call["value"][0],
                                    call["hidden"][0], W, sinks, call["scaling"])
        assert (call["out"][0].double() - (attn + mem)).abs().max() < 2e-5
        assert torch.all(mem[: W + sinks] == 0)  # empty memory contributes exactly nothing
        assert mem[W + sinks :].abs().amax(dim=(1, 2)).min() > 1e-3  # every later query reads a non-empty memory


def _assert_memory_matters(model, ids):
    """Guard against vacuous equalities: the random AHN must change the logits beyond the window."""
    with torch.no_grad():
        with_ahn = model(ids, use_cache=False).logits
        saved = {k: v.clone() for k, v in model.ahn_state_dict().items()}
        for k, v in model.ahn_state_dict().items():
            if k.endswith("o_proj.weight"):
                v.zero_()
        without = model(ids, use_cache=False).logits
        model.load_ahn_state_dict(saved)
    assert (with_ahn - without)[:, W + S :].abs().max() > 1e-2
    return with_ahn


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
@pytest.mark.parametrize("sinks", [0, 2])
def test_full_forward_equals_chunked_prefill_and_decode(arch, ahn_type, sinks, attention_path):
    model = make_ahn(arch, ahn_type, W, sinks)
    ids = _ids(23)
    ref = _assert_memory_matters(model, ids)
    with torch.no_grad():
        for chunk in (1, 3, 7, W, 2 * W + 1):
            model.config.prefill_chunk_size = chunk
            cache = AhnCache(model.config)
            out = model(ids, past_key_values=cache, use_cache=True).logits
            assert (out - ref).abs().max() < 1e-4, chunk
            assert cache.get_seq_length() == 23
        model.config.prefill_chunk_size = None
        for prefill in (1, 4, 9, 17):
            cache = AhnCache(model.config)
            logits = [model(ids[:, :prefill], past_key_values=cache).logits]
            for t in range(prefill, 23):
                logits.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
            assert (torch.cat(logits, 1) - ref).abs().max() < 1e-4, prefill


def _decode_logits(model, ids, prefill, mask_fn=None):
    cache = AhnCache(model.config)
    logits = [model(ids[:, :prefill], past_key_values=cache).logits]
    for t in range(prefill, ids.shape[1]):
        kw = {} if mask_fn is None else {"attention_mask": mask_fn(t + 1)}
        logits.append(model(ids[:, t: t + 1], past_key_values=cache, **kw).logits)
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
@pytest.mark.parametrize("inner", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["ahn", "swa"])
def test_decoding_takes_the_steady_path_and_equals_the_general_one(arch, ahn_type, inner, mode, monkeypatch, paths):
    """Unpadded one-token steps with a full window (every step from token S + W on) take the short steady path
    (no mask, the memory's one-token step); the general path gives the same logits."""
    from modeling_ahn.cache_ahn import SinkWindowLayer as Layer

    model = make_ahn(arch, ahn_type, W, S)
    for layer in model.model.layers:
        get_layer_spec(layer.self_attn).inner = inner
    ids = _ids(30, batch=2)
    with torch.no_grad(), model.attention_mode(mode):
        fast, cache = _decode_logits(model, ids, 4)
        assert count_paths(paths, AttentionPath.STEADY_STEP) == model.config.base_config.num_hidden_layers * (
            30 - (S + W))
        monkeypatch.setattr(Layer, "steady", lambda self: False)
        general, _ = _decode_logits(model, ids, 4)
        whole = model(ids, use_cache=False).logits
    assert (fast - general).abs().max() < 1e-5
    assert (fast - whole).abs().max() < 1e-4
    assert cache.layers[0].keys.shape[-2] == W and cache.get_seq_length() == 30


def test_a_padding_mask_in_a_steady_step_takes_the_general_path(monkeypatch, paths):
    """A cache that could decode on the steady path, given a mask that pads the new token of one row: the general
    path runs that step (the steady keys are rebuilt into the general ones), and every later step stays there."""
    from modeling_ahn.cache_ahn import SinkWindowLayer as Layer

    model = make_ahn("qwen2", "gdn", W, S)
    ids = _ids(20, batch=2)
    layers = model.config.base_config.num_hidden_layers

    def mask(n):  # row 1 pads token 12
        m = torch.ones(2, n, dtype=torch.long)
        if n > 12:
            m[1, 12] = 0
        return m

    with torch.no_grad():
        fast, cache = _decode_logits(model, ids, 4, mask)
        assert cache.layers[0].padded
        # steps S + W .. 11; the pad at 12 ends the steady path
        assert count_paths(paths, AttentionPath.STEADY_STEP) == layers * (12 - (S + W))
        monkeypatch.setattr(Layer, "steady", lambda self: False)
        general, _ = _decode_logits(model, ids, 4, mask)
    assert (fast - general).abs().max() < 1e-5


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_cache_is_bounded(ahn_type):
    model = make_ahn("llama", ahn_type, W, S)
    cache = AhnCache(model.config)
    sizes = []
    with torch.no_grad():
        model(_ids(8), past_key_values=cache)
        for t in range(60):
            model(_ids(1, seed=t), past_key_values=cache)
            sizes.append(cache.cache_bytes())
    layer = cache.layers[0]
    assert isinstance(layer, SinkWindowLayer)
    assert layer.keys.shape[-2] == W and layer.sink_keys.shape[-2] == S and bool(layer.sink_filled.all())
    assert cache.get_seq_length() == 68
    assert len(set(sizes)) == 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_greedy_generate_equals_teacher_forced_argmax(arch, ahn_type):
    model = make_ahn(arch, ahn_type, W, S)
    prompt = _ids(9)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=14, do_sample=False, eos_token_id=None, pad_token_id=0)
        logits = model(out, use_cache=False).logits
    assert out.shape[1] == 9 + 14
    assert torch.equal(logits[0, 8:-1].argmax(-1), out[0, 9:])


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_beam_search_with_cache_equals_without(ahn_type):
    model = make_ahn("qwen2", ahn_type, W, S)
    prompt = _ids(8, batch=2)
    kw = dict(max_new_tokens=10, num_beams=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kw)
        uncached = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_sampling_and_multiple_return_sequences_run():
    model = make_ahn("qwen3", "gdn", W, S)
    with torch.no_grad():
        out = model.generate(_ids(6), max_new_tokens=8, do_sample=True, num_return_sequences=3, top_k=20,
                             eos_token_id=None, pad_token_id=0)
    assert out.shape == (3, 14)


def _left_pad(rows, pad_id=0):
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, n - len(r) :] = r
        mask[b, n - len(r) :] = 1
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_left_padded_batch_equals_each_row_alone(arch, ahn_type, attention_path):
    model = make_ahn(arch, ahn_type, W, S, full_attention_layers=[1] if arch == "qwen3" else None)
    rows = [_ids(n, seed=n)[0] for n in (21, 14, 8)]
    ids, mask = _left_pad(rows)
    with torch.no_grad():
        model.config.prefill_chunk_size = 4
        batched = model(ids, attention_mask=mask).logits
        unchunked = model(ids, attention_mask=mask, use_cache=False).logits
        gen = model.generate(ids, attention_mask=mask, max_new_tokens=9, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
        for b, r in enumerate(rows):
            alone = model(r[None], use_cache=False).logits[0]
            n = len(r)
            assert (batched[b, -n:] - alone).abs().max() < 1e-4
            assert (unchunked[b, -n:] - alone).abs().max() < 1e-4
            gen_alone = model.generate(r[None], max_new_tokens=9, do_sample=False, eos_token_id=None, pad_token_id=0)
            assert torch.equal(gen[b, -9:], gen_alone[0, -9:])


def test_full_attention_layers_keep_the_base_attention():
    model = make_ahn("qwen2", "gdn", W, S, full_attention_layers=[0])
    assert sorted(model.ahn_modules()) == [1]
    assert all(k.startswith("model.layers.1.ahn.fn.") for k in model.ahn_state_dict())
    cache = model.new_cache()
    assert not isinstance(cache.layers[0], SinkWindowLayer) and isinstance(cache.layers[1], SinkWindowLayer)
    ids = _ids(20)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        model.config.prefill_chunk_size = 3
        out = model(ids).logits
    assert (out - ref).abs().max() < 1e-4


def test_official_fa_layer_ids_string_is_accepted():
    model = make_ahn("llama", "dn", W, S, full_attention_layers="1")
    assert model.config.full_attention_layers == [1] and sorted(model.ahn_modules()) == [0]


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_ahn_state_dict_roundtrip_uses_official_keys(ahn_type):
    model = make_ahn("qwen2", ahn_type, W, S)
    sd = model.ahn_state_dict()
    assert sd and all(k.startswith("model.layers.") and ".ahn.fn." in k for k in sd)
    assert set(model.state_dict()) >= set(sd)
    other = make_ahn("qwen2", ahn_type, W, S, random_ahn=False)
    other.load_ahn_state_dict({k: v.clone() for k, v in sd.items()})
    ids = _ids(20)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, other(ids).logits)


def test_gradients_reach_only_ahn_and_checkpointing_matches():
    model = make_ahn("qwen2", "gdn", W, S)
    ids = _ids(22, batch=2)
    model.train()

    def grads():
        model.zero_grad(set_to_none=True)
        out = model(ids, labels=ids)
        out.loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    ahn_names = {n for n, p in model.named_parameters() if ".ahn." in n}
    assert set(plain) == {n for n in ahn_names if not n.endswith(".D")}  # D is stored but unused (spec 2.1)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".ahn." not in n)
    assert all(plain[n].abs().sum() > 0 for n in plain)
    model.activation_checkpointing_enable()
    checkpointed = grads()
    assert set(checkpointed) == set(plain)
    for n in plain:
        assert torch.allclose(plain[n], checkpointed[n], atol=1e-6, rtol=1e-5), n


def test_bf16_model_runs_and_stays_close():
    model = make_ahn("llama", "gdn", W, S)
    ids = _ids(20)
    with torch.no_grad():
        ref = model(ids).logits
        model.to(torch.bfloat16)
        out = model(ids).logits
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_from_base_path_and_dtype(tmp_path):
    base = make_base("qwen2")
    base.save_pretrained(tmp_path / "base")
    model = AhnForCausalLM.from_base(str(tmp_path / "base"), ahn_type="mamba2", sliding_window=7, num_sinks=1,
                                     dtype=torch.bfloat16)
    assert model.config.base_model_name_or_path == str(tmp_path / "base")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.sliding_window == 7 and model.config.num_sinks == 1 and model.config.ahn_type == "mamba2"


def test_config_roundtrip(tmp_path):
    model = make_ahn("qwen3", "mamba2", W, S, full_attention_layers=[0])
    model.config.save_pretrained(tmp_path)
    loaded = type(model.config).from_pretrained(tmp_path)
    assert loaded.base_config.model_type == "qwen3" and loaded.base_config.head_dim == 16
    for key in ("ahn_type", "sliding_window", "num_sinks", "full_attention_layers", "prefill_chunk_size",
                "max_position_embeddings"):
        assert getattr(loaded, key) == getattr(model.config, key), key
    assert loaded.get_text_config() is loaded.base_config
    assert not hasattr(loaded, "text_config")  # tools reading text_config first see our context length


def test_sink_store_holds_each_rows_first_real_tokens():
    model = make_ahn("llama", "gdn", W, 3)
    rows = [_ids(n, seed=n)[0] for n in (16, 11)]
    ids, mask = _left_pad(rows)
    cache = model.new_cache()
    with torch.no_grad():
        model(ids, attention_mask=mask, past_key_values=cache)
    layer = cache.layers[0]
    assert bool(layer.sink_filled.all())
    for b, r in enumerate(rows):
        alone = model.new_cache()
        with torch.no_grad():
            model(r[None], past_key_values=alone)
        assert torch.allclose(layer.sink_keys[b], alone.layers[0].sink_keys[0], atol=1e-5)
        assert torch.allclose(layer.recurrent_state[b], alone.layers[0].recurrent_state[0], atol=1e-5)


def test_attention_modes():
    model = make_ahn("qwen2", "gdn", W, S)
    ids = _ids(20)
    mask = window_sink_mask(20, W, S)
    with torch.no_grad():
        base = make_base("qwen2")(ids).logits
        additive = torch.where(mask, 0.0, -torch.inf)
        swa_ref = make_base("qwen2", attn_implementation="eager")(ids, attention_mask=additive)
        with model.attention_mode("full"):
            full = model(ids, use_cache=False).logits
            with pytest.raises(ValueError, match="without an AHN cache"):
                model(ids)
        with model.attention_mode("swa"):
            swa = model(ids).logits
        ahn = model(ids).logits
    assert (full - base).abs().max() < 1e-5
    assert (swa - swa_ref.logits).abs().max() < 1e-5
    assert (ahn - swa).abs().max() > 1e-2  # back to "ahn" after the context


def test_blocked_attention_equals_full_mask_with_padding_and_sinks(monkeypatch, paths):
    model = make_ahn("llama", "gdn", 4, 3)
    rows = [_ids(n, seed=n)[0] for n in (40, 37, 33)]
    ids, mask = _left_pad(rows)
    with torch.no_grad():
        monkeypatch.setattr(window_attention, "BLOCK_MIN", 10**9)
        ref = model(ids, attention_mask=mask, use_cache=False).logits
        # blocking would save nothing: the full mask was used
        assert [p for p, _ in paths] == [AttentionPath.MASKED] * 2
        paths.clear()
        monkeypatch.setattr(window_attention, "BLOCK_MIN", 6)
        blocked = model(ids, attention_mask=mask, use_cache=False).logits
    assert [p for p, _ in paths] == [AttentionPath.BLOCKED] * 2  # both layers took the blocked path
    assert (blocked - ref).abs().max() < 1e-5


@pytest.mark.parametrize("strided", [True, False])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("W,block_min,P", [(5, 8, 10**6), (12, 1, 10**6), (12, 1, 40), (7, 2, 30)])
def test_steady_cached_prefill_folds_blocks_into_the_batch_and_is_exact(arch, W, block_min, P, strided, monkeypatch,
                                                                          paths):
    """Once the window is full and every sink is in the store, a long cached chunk attends through
    ``banded_window_attention``: on CPU its strided form (``strided_band_attention``: keys read in place, grouped
    heads folded into the rows, sinks merged by log-sum-exp; blocks of ``BAND_BLOCK`` and a shorter last one), else
    (``strided=False``: CUDA, or torch without the CPU flash op) query blocks as batch rows under one band mask,
    blocks shorter and longer than W, a last block filled up with padding; sinks within the base's context (P
    large) and clamped beyond it (P small: the merged-sink path) — equal to the whole-sequence forward, which takes
    neither path."""
    def banded():  # the queries of each chunk that took the banded path
        return [facts.q_len for p, facts in paths if p is AttentionPath.BANDED_PREFILL]

    calls = []
    if strided:
        monkeypatch.setattr(window_attention, "BAND_BLOCK", 16)  # blocks of 16 and a shorter last one
        original = window_attention.strided_band_attention
        monkeypatch.setattr(window_attention, "strided_band_attention", lambda *a: calls.append(1) or original(*a))
    else:
        monkeypatch.setattr(window_attention, "_CPU_FLASH", None)
    monkeypatch.setattr(window_attention, "BLOCK_MIN", block_min)
    model = make_ahn(arch, "gdn", sliding_window=W, num_sinks=3, prefill_chunk_size=None)
    model.config.base_config.max_position_embeddings = P
    ids = _ids(120, batch=2)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        assert not banded()
        cache = model.new_cache()
        cuts = (0, 9, W + 6, 71, 120)  # the first two chunks fill sinks (3) and window; the two long ones are steady
        outs = [model(ids[:, a:b], past_key_values=cache).logits for a, b in zip(cuts, cuts[1:])]
    assert banded() == [65 - W] * len(model.model.layers) + [49] * len(model.model.layers), banded()
    # (the strided kernel also serves the fresh first chunk's band: FRESH_PREFILL)
    assert len(calls) == (len(banded()) + count_paths(paths, AttentionPath.FRESH_PREFILL) if strided else 0)
    assert (torch.cat(outs, 1) - ref).abs().max() < 1e-4
    # left padding: steady once the pads have left the window and the sinks are real tokens (pad 4), not while
    # a row's sink store is still filling (pad 58: 2 real tokens, 3 sinks); each row equals itself alone
    for pad, steady in ((4, True), (58, False)):
        paths.clear()
        batch, mask = _left_pad([ids[0], ids[0, :-pad]])
        with torch.no_grad():
            cache = model.new_cache()
            out = torch.cat([model(batch[:, :60], attention_mask=mask[:, :60], past_key_values=cache).logits,
                             model(batch[:, 60:], attention_mask=mask, past_key_values=cache).logits], 1)
            alone = model(ids[:, :-pad], use_cache=False).logits
        assert bool(banded()) == steady, (pad, paths)
        assert (out[0] - ref[0]).abs().max() < 1e-4
        assert (out[1, pad:] - alone[0]).abs().max() < 1e-4
    # the first long chunk (window not yet full) takes the fresh path on CPU (a causal head, then the band; with
    # the sinks clamped inside the head, P = 30 < W + S - 1, the general blocked path), else the blocked path
    paths.clear()
    with torch.no_grad():
        model(ids, past_key_values=model.new_cache())
    fresh = strided and W + 3 - 1 <= P
    assert not banded() and count_paths(paths, AttentionPath.FRESH_PREFILL if fresh else AttentionPath.BLOCKED) == \
        len(model.model.layers)


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_long_cached_prefill_runs_blocked_and_exact(ahn_type, monkeypatch, paths):
    """A cached prefill chunk much longer than the window attends block by block (O(q (S + W)), not O(q^2)), also
    after earlier chunks and with left padding, and equals the whole-sequence forward."""
    # the general blocked path, not the banded one
    monkeypatch.setattr(attention_ahn.ChunkFacts, "steady_chunk", property(lambda self: False))
    monkeypatch.setattr(window_attention, "BLOCK_MIN", 8)
    model = make_ahn("qwen2", ahn_type, sliding_window=5, num_sinks=2, prefill_chunk_size=None)
    ids = _ids(150)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        cache = model.new_cache()
        first = model(ids[:, :9], past_key_values=cache).logits  # a short chunk fills sinks and window
        rest = model(ids[:, 9:], past_key_values=cache).logits  # then a long one after them
        assert any(p is AttentionPath.BLOCKED and f.step.num_old > 0 for p, f in paths), paths
        assert (torch.cat([first, rest], 1) - ref).abs().max() < 1e-4
        # left padding: row 1 is shorter; each row equals itself alone
        pad = 13
        batch, mask = _left_pad([ids[0], ids[0, :-pad]])
        out = model(batch, attention_mask=mask, past_key_values=model.new_cache()).logits
        alone = model(ids[:, :-pad], use_cache=False).logits
    assert (out[0] - ref[0]).abs().max() < 1e-4
    assert (out[1, pad:] - alone[0]).abs().max() < 1e-4


def test_block_masks_are_built_once_per_forward_and_never_reused_stale(monkeypatch):
    """The blocked attention's masks are the same in every layer of a forward and are built once; a batch of the
    same shape with other padding gets its own (the memo compares the padding, not just shapes)."""
    monkeypatch.setattr(window_attention, "BLOCK_MIN", 6)
    built = []
    original = window_attention.window_mask
    monkeypatch.setattr(window_attention, "window_mask", lambda *a: built.append(1) or original(*a))
    model = make_ahn("llama", "gdn", 4, 3)
    rows_a = [_ids(n, seed=n)[0] for n in (40, 33)]
    rows_b = [_ids(n, seed=n)[0] for n in (35, 40)]  # same padded shape, other padding
    ids_a, mask_a = _left_pad(rows_a)
    ids_b, mask_b = _left_pad(rows_b)
    assert ids_a.shape == ids_b.shape and not torch.equal(mask_a, mask_b)
    with torch.no_grad():
        out_a = model(ids_a, attention_mask=mask_a, use_cache=False).logits
        n_blocks = len(built)
        assert n_blocks == 7  # 40 tokens in blocks of 6, built once for both layers
        out_b = model(ids_b, attention_mask=mask_b, use_cache=False).logits
        assert len(built) == 2 * n_blocks  # rebuilt for the new padding
        for rows, out in ((rows_a, out_a), (rows_b, out_b)):
            for i, r in enumerate(rows):
                alone = model(r[None], use_cache=False).logits[0]
                assert (out[i, -len(r):] - alone).abs().max() < 1e-4
