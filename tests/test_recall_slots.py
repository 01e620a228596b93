"""Recall slots: G evicted tokens per layer kept exactly, chosen by a learned retention score (recall_slots.py)."""

from __future__ import annotations

import pytest
import torch

from modeling_ahn import AhnCache, StaticAhnCache, recall_slots
from modeling_ahn.attention_ahn import get_layer_spec

from .conftest import AHN_TYPES, ARCHS, compiled_decode, make_ahn, run_chunks
from .reference import LayerRecorder, naive_ahn_layer, naive_novelty, naive_slot_sets

W, S, G, SPAN, DIST = 6, 2, 3, (2, 1), 9


# Every base x memory x sinks x distance with the learned score; the novelty score (which reads the base's keys and
# values, whatever the memory) on every base and a few of the rest.
CASES = [(a, t, s, d, "learned") for a in ARCHS for t in AHN_TYPES for s in (0, 2) for d in (DIST, 0)]
CASES += [(a, "gdn", 2, DIST, "novelty") for a in ARCHS] + [("qwen2", "dn", 0, 0, "novelty"),
                                                            ("llama", "mamba2", 0, DIST, "novelty")]


def _ids(length, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 101, (batch, length), generator=g)


def slotted_model(arch="qwen2", ahn_type="gdn", sinks=S, slots=G, seed=0, score="learned", **kw):
    """A random AHN with ``slots`` recall slots chosen by ``score``: a random retention classifier (``"learned"``)
    or the training-free ``"novelty"`` score (no classifier)."""
    model = make_ahn(arch, ahn_type, W, sinks, seed=seed, **kw)
    hidden = model.config.base_config.hidden_size
    g = torch.Generator().manual_seed(seed + 7)
    if score == "learned":
        model.add_recall_head({i: (torch.randn(hidden, generator=g), torch.randn((), generator=g))
                               for i in model.ahn_modules()})
    model.config.recall_score = score
    model.config.recall_span = list(SPAN)
    model.config.recall_distance = DIST
    model.config.num_recall_slots = slots
    return model


def _reference_raw(score, spec, call, T):
    """The raw scores of a recorded whole-sequence call, computed outside the model: the classifier applied to the
    layer input, or the novelty score by its token-by-token definition (rounded as the model rounds)."""
    if score == "learned":
        return recall_slots.raw_scores(spec.recall, call["hidden"], torch.full((1, T), S), 0)[0].double()
    raw = naive_novelty(call["key"][0], call["value"][0], spec.inv_freq())
    return torch.round(raw * 2.0**recall_slots.SCORE_BITS) / 2.0**recall_slots.SCORE_BITS


def _pooled(raws, pool):
    """The scores each layer ranks by (``recall_pool``): its own raw scores, or the mean of the raw scores of the AHN
    layers up to it, in float32 and rounded like a raw score."""
    if pool == "layer":
        return raws
    total, out = 0, []
    for n, raw in enumerate(raws, 1):
        total = total + raw.float()
        out.append((torch.round(total / n * 2.0**recall_slots.SCORE_BITS) / 2.0**recall_slots.SCORE_BITS).double())
    return out


@pytest.mark.parametrize("arch,ahn_type,sinks,distance,score,pool",
                         [(*c, "mean") for c in CASES] + [("qwen2", "gdn", 2, DIST, "learned", "layer"),
                                                          ("llama", "dn", 0, 0, "learned", "layer"),
                                                          ("qwen3", "gdn", 2, DIST, "novelty", "layer")])
def test_each_layer_equals_the_token_by_token_reference_with_slots(arch, ahn_type, sinks, distance, score, pool,
                                                                   attention_path):
    """Every layer = softmax over sinks + slots + window (slots by their definition, naive_slot_sets, seen at the slot
    distance, or at their real positions for distance 0) + memory; raw scores from the classifier or, for the
    novelty score, from its token-by-token definition (naive_novelty), each layer ranking by its own or by the mean
    over the AHN layers up to it (recall_pool)."""
    model = slotted_model(arch, ahn_type, sinks, score=score)
    model.config.recall_distance = distance
    model.config.recall_pool = pool
    ids = _ids(40, seed=1)  # (seed 0: no slot changes hands in qwen3-gdn-2-9 under the mean, so the guard fails)
    with LayerRecorder() as rec, torch.no_grad():
        model(ids, use_cache=False)
    raws = _pooled([_reference_raw(score, get_layer_spec(call["module"]), call, 40) for call in rec.calls], pool)
    changed = turnover = 0
    for call, raw in zip(rec.calls, raws):
        spec = get_layer_spec(call["module"])
        sets = naive_slot_sets(raw, W, sinks, G, *SPAN)
        attn, mem = naive_ahn_layer(spec.memory, ahn_type, call["query"][0], call["key"][0], call["value"][0],
                                    call["hidden"][0], W, sinks, call["scaling"], slot_sets=sets,
                                    slot_distance=distance, inv_freq=spec.inv_freq())
        assert (call["out"][0].double() - (attn + mem)).abs().max() < 5e-5  # (40 tokens: float32 sums)
        plain, _ = naive_ahn_layer(spec.memory, ahn_type, call["query"][0], call["key"][0], call["value"][0],
                                   call["hidden"][0], W, sinks, call["scaling"])
        changed += int((attn - plain).abs().max() > 1e-3)
        turnover += len(set().union(*sets)) > G  # the slots change hands along the sequence
    assert changed == len(rec.calls)  # guards: the slots change every layer's output,
    assert turnover >= 1  # and are not just the first G evicted tokens forever


def _reference_logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("arch,ahn_type,sinks,distance,score", CASES)
def test_whole_forward_equals_chunked_prefill_and_decode_with_slots(arch, ahn_type, sinks, distance, score,
                                                                    attention_path):
    model = slotted_model(arch, ahn_type, sinks, score=score)
    model.config.recall_distance = distance
    ids = _ids(41)
    ref = _reference_logits(model, ids)
    with torch.no_grad(), model.runtime(num_recall_slots=0):
        without = model(ids, use_cache=False).logits
    assert (ref - without)[:, W + sinks + 1:].abs().max() > 1e-2  # the slots matter
    with torch.no_grad():
        for chunk in (1, 3, 7, W, 2 * W + 1, 64):
            model.config.prefill_chunk_size = chunk
            cache = AhnCache(model.config)
            out = model(ids, past_key_values=cache).logits
            assert (out - ref).abs().max() < 1e-4, chunk
        model.config.prefill_chunk_size = None
        for prefill in (1, 5, 9, 17, 30):
            cache = AhnCache(model.config)
            logits = [model(ids[:, :prefill], past_key_values=cache).logits]
            for t in range(prefill, ids.shape[1]):
                logits.append(model(ids[:, t: t + 1], past_key_values=cache).logits)
            assert (torch.cat(logits, 1) - ref).abs().max() < 1e-4, prefill


def test_decoding_takes_the_steady_path_once_the_slots_are_full(paths):
    from modeling_ahn.attention_ahn import AttentionPath

    model = slotted_model()
    ids = _ids(30)
    with torch.no_grad():
        cache = AhnCache(model.config)
        model(ids[:, :4], past_key_values=cache)
        for t in range(4, 30):
            model(ids[:, t: t + 1], past_key_values=cache)
    steady = [i for i, (p, _) in enumerate(paths) if p is AttentionPath.STEADY_STEP]
    L = model.config.base_config.num_hidden_layers
    # a one-token step is steady once S + W + G tokens were seen before it: steps 11 .. 29 (every layer)
    assert len(steady) == (30 - (S + W + G)) * L
    layer = cache.layers[0]
    assert layer.slot_keys.shape[2] == G and bool((layer.slot_rpos >= S).all())


def test_a_steady_step_with_slots_costs_few_ops_per_layer():
    """The slots' share of a steady decoding step, in ATen ops dispatched per AHN layer (a count any machine
    reproduces; eager decoding at batch 1 is bound by it): admitting nothing (most steps) re-uses the weakest slot and
    the slots' free keys, and one shared rotation per step moves them. 72 per layer before (2026-12-07), 39 after."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    def steady_ops(slots):
        model, ids, counts = slotted_model(slots=slots), _ids(50), []
        with torch.no_grad():
            cache = AhnCache(model.config)
            model(ids[:, :30], past_key_values=cache)
            for t in range(30, 50):
                with Count() as c:
                    model(ids[:, t: t + 1], past_key_values=cache)
                counts.append(c.n)
        return min(counts)  # (a step that admits a token costs more: it is rarer as the slots get better)

    per_layer = (steady_ops(G) - steady_ops(0)) / make_ahn("qwen2", "gdn", W, S).config.base_config.num_hidden_layers
    assert per_layer <= 45, per_layer


@pytest.mark.parametrize("slots,sinks", [(G, S), (0, S), (0, 0)])
def test_long_steady_decoding_moves_through_its_buffer(slots, sinks):
    """Steady steps write into a buffer that holds the window (no copy of it per step) and move it back to the
    buffer's front every ``steady_slack(W)`` + 1 steps: 300 one-token steps (many moves) give the whole forward's
    logits, with slots, with sinks only and with neither; a chunk in between (a new tensor) starts a new buffer."""
    from modeling_ahn.cache_ahn import steady_slack

    model, ids = slotted_model(slots=slots, sinks=sinks), _ids(330)
    assert 300 > 4 * (steady_slack(W) + 1)
    with torch.no_grad():
        ref = model(ids).logits
        cache = AhnCache(model.config)
        out = [model(ids[:, :20], past_key_values=cache).logits]
        out += [model(ids[:, t: t + 1], past_key_values=cache).logits for t in range(20, 320)]
        out.append(model(ids[:, 320:], past_key_values=cache).logits)
    assert (torch.cat(out, 1) - ref).abs().max() < 1e-4
    layer = cache.layers[0]
    assert layer.keys.shape[2] == W and layer.keys.is_contiguous()  # the chunk's own window, not a buffer view


def test_steady_decoding_with_slots_under_inference_mode():
    """``torch.inference_mode`` (whose tensors keep no version counter, which the steady step's memos read where
    there is one) decodes as ``torch.no_grad`` does. Found by ``ahn bench``: RuntimeError before the fix."""
    model, ids = slotted_model(), _ids(50)

    def decode(ctx):
        with ctx():
            cache = AhnCache(model.config)
            out = [model(ids[:, :30], past_key_values=cache).logits[:, -1]]
            out += [model(ids[:, t: t + 1], past_key_values=cache).logits[:, -1] for t in range(30, 50)]
        return torch.stack([o.clone() for o in out])

    assert torch.equal(decode(torch.inference_mode), decode(torch.no_grad))


@pytest.mark.parametrize("score", ["learned", "novelty"])
def test_left_padded_batch_with_slots_equals_each_row_alone(score):
    model = slotted_model(score=score)
    a, b = _ids(33, seed=1)[0], _ids(25, seed=2)[0]
    batch = torch.zeros(2, 33, dtype=torch.long)
    batch[0], batch[1, 8:] = a, b
    mask = torch.ones(2, 33, dtype=torch.long)
    mask[1, :8] = 0
    with torch.no_grad():
        for chunk in (None, 4):
            model.config.prefill_chunk_size = chunk
            out = model(batch, attention_mask=mask).logits
            ra = model(a[None]).logits
            rb = model(b[None]).logits
            assert (out[0] - ra[0]).abs().max() < 1e-4
            assert (out[1, 8:] - rb[0]).abs().max() < 1e-4
        out = model.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False)
        ga = model.generate(a[None], max_new_tokens=12, do_sample=False)
        gb = model.generate(b[None], max_new_tokens=12, do_sample=False)
    assert torch.equal(out[0, 33:], ga[0, 33:]) and torch.equal(out[1, 33:], gb[0, 25:])


@pytest.mark.parametrize("score", ["learned", "novelty"])
def test_beam_search_and_greedy_with_slots(score):
    model = slotted_model(score=score)
    ids = _ids(28)
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=10, do_sample=False)
        full = model(greedy, use_cache=False).logits
        assert torch.equal(greedy[0, 28:], full[0, 27:-1].argmax(-1))
        with_cache = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False)
        without = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)


def test_zero_slots_is_the_official_ahn_bit_for_bit():
    model = slotted_model(slots=0)
    plain = make_ahn("qwen2", "gdn", W, S)
    ids = _ids(40)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)
        assert torch.equal(model(ids, use_cache=False).logits, plain(ids, use_cache=False).logits)


@pytest.mark.parametrize("score", ["learned", "novelty"])
def test_cache_holds_sinks_window_and_slots_only(score):
    model = slotted_model(score=score)
    with torch.no_grad():
        sizes = []
        for n in (60, 200):
            cache = AhnCache(model.config)
            model(_ids(n), past_key_values=cache)
            sizes.append(cache.cache_bytes())
            layer = cache.layers[0]
            assert layer.slot_keys.shape[2] == G and layer.keys.shape[2] == W
            assert layer.window_scores.shape[1] == W and layer.score_tail.shape[1] == SPAN[1]
    assert sizes[0] == sizes[1]


def test_plan_tenures_match_a_running_top_g():
    """plan_slots against the replacement rule applied token by token, with ties and invalid tokens."""
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        n, Gs = 50, 4
        scores = torch.randint(0, 6, (2, n), generator=g).float()  # many ties
        rpos = torch.arange(10, 10 + n).expand(2, n).clone()
        valid = torch.rand(2, n, generator=g) > 0.2
        empty_s = torch.full((2, Gs), float("-inf"))
        empty_r = torch.full((2, Gs), -1, dtype=torch.long)
        old = recall_slots.plan_slots(empty_s, empty_r, scores[:, :20], rpos[:, :20], valid[:, :20], Gs)
        keys = torch.arange(n, dtype=torch.float)[None, None, :, None].expand(2, 1, n, 1)
        sk, _, ss, sr = recall_slots.slots_after(old, keys, keys, torch.zeros(2, 1, Gs, 1), torch.zeros(2, 1, Gs, 1),
                                                Gs)
        plan = recall_slots.plan_slots(ss, sr, scores[:, 20:], rpos[:, 20:], valid[:, 20:], Gs)
        for b in range(2):
            held = []  # (score, rpos) by the rule: a leaving token takes the weakest slot if it beats it
            for j in range(n):
                if j == 20:
                    assert sorted(held) == sorted((float(s), int(r)) for s, r in zip(ss[b], sr[b]) if r >= 0)
                if j >= 20:  # the slots at e = j - 20 evictions of the second step
                    e = j - 20
                    alive = {int(plan.rpos[b, c]) for c in range(plan.rpos.shape[1])
                             if plan.keep[b, c] and plan.enter[b, c] <= e < plan.leave[b, c]}
                    assert alive == {r for _, r in held}, (trial, b, j)
                if not valid[b, j]:
                    continue
                s, r = float(scores[b, j]), int(rpos[b, j])
                if len(held) < Gs:
                    held.append((s, r))
                else:
                    weakest = min(held, key=lambda x: (x[0], -x[1]))
                    if s > weakest[0]:
                        held[held.index(weakest)] = (s, r)


def test_bad_recall_settings_raise_clear_errors():
    model = make_ahn("qwen2", "gdn", 16, S)
    with pytest.raises(ValueError, match="num_recall_slots must be an integer >= 0"):
        with model.runtime(num_recall_slots=-1):
            pass
    with pytest.raises(ValueError, match="recall_score='learned' needs a trained retention classifier"):
        with model.runtime(num_recall_slots=4, recall_score="learned"):
            pass
    with pytest.raises(ValueError, match="recall_score='learned' needs a trained retention classifier"):
        type(model.config)(base_config=model.config.base_config, num_recall_slots=2, recall_score="learned")
    with pytest.raises(ValueError, match="recall_score must be one of"):
        with model.runtime(num_recall_slots=4, recall_score="surprise"):
            pass
    with model.runtime(num_recall_slots=4):  # no classifier: the training-free score
        assert model.config.recall_score is None and model(_ids(30)).logits.isfinite().all()
    slotted = slotted_model()
    with pytest.raises(ValueError, match="recall_span keeps 12 tokens before"):
        with slotted.runtime(sliding_window=6):
            slotted.config.recall_span = [12, 3]
            slotted.config.validate_ahn()
    slotted.config.recall_span = list(SPAN)
    static = StaticAhnCache(slotted.config)
    with torch.no_grad():
        slotted(_ids(20), past_key_values=static)
        with pytest.raises(ValueError, match="num_recall_slots=3 but the model now uses 6, 2, 4"), \
                slotted.runtime(num_recall_slots=4):  # fixed slot buffers of another size
            slotted(_ids(1), past_key_values=static)
    cache = AhnCache(slotted.config)
    with torch.no_grad():
        slotted(_ids(20), past_key_values=cache)
        with pytest.raises(ValueError, match="num_recall_slots=3 but the model now uses 6, 2, 5"), \
                slotted.runtime(num_recall_slots=5):
            slotted(_ids(1), past_key_values=cache)
        cache = AhnCache(slotted.config)
        slotted(_ids(20), past_key_values=cache)
        with pytest.raises(ValueError, match="scored with recall_score='learned', recall_pool='mean' and the model "
                                             "now uses 'novelty', 'mean'"), slotted.runtime(recall_score="novelty"):
            slotted(_ids(1), past_key_values=cache)
        cache = AhnCache(slotted.config)
        slotted(_ids(20), past_key_values=cache)
        with pytest.raises(ValueError, match="now uses 'learned', 'layer'"), slotted.runtime(recall_pool="layer"):
            slotted(_ids(1), past_key_values=cache)
    with pytest.raises(ValueError, match="recall_pool must be one of"), slotted.runtime(recall_pool="max"):
        pass
    pool, raw, rpos = recall_slots.LayerPool(), torch.zeros(1, 4), torch.arange(4)[None]
    with pytest.raises(RuntimeError, match="AHN layer 1 ran after 0 of them"):
        pool.mean(1, raw, rpos, 0)  # a layer run on its own, without the layers before it
    pool.mean(0, raw, rpos, 0)
    with pytest.raises(RuntimeError, match="AHN layer 2 ran after 1 of them"):
        pool.mean(2, raw, rpos, 0)


def test_novelty_score_blocks_equal_one_token_at_a_time():
    """The chunked (UT) delta rule of the novelty score = its token-by-token definition, across block edges, with
    pads not written; repeated text scores near 0 the second time, a token never seen before high."""
    g = torch.Generator().manual_seed(3)
    B, H, T, D = 2, 3, 2 * recall_slots.NOVELTY_BLOCK + 9, 8
    keys, values = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)
    ang = recall_slots.rope_angles(torch.arange(T).expand(B, T), 1.0 / 100 ** (torch.arange(0, D, 2) / D))
    rotation = (ang.cos(), ang.sin())
    rpos = torch.arange(T).expand(B, T).clone()
    rpos[1, :5] = -1  # row 1 starts with 5 pads
    whole, state = recall_slots.novelty_scores(keys, values, rotation, rpos, 2, None)
    assert whole.shape == (B, T) and torch.isinf(whole[:, :2]).all() and torch.isinf(whole[1, :5]).all()
    inv_freq = 1.0 / 100 ** (torch.arange(0, D, 2) / D)
    ref = naive_novelty(keys[0], values[0], inv_freq)
    assert (whole[0, 2:].double() - ref[2:]).abs().max() <= 2.0**-recall_slots.SCORE_BITS
    step_state, steps = None, []
    for t in range(T):
        sl = slice(t, t + 1)
        s, step_state = recall_slots.novelty_scores(keys[:, :, sl], values[:, :, sl], (rotation[0][:, sl],
                                                    rotation[1][:, sl]), rpos[:, sl], 2, step_state)
        steps.append(s)
    assert torch.equal(torch.cat(steps, 1), whole) and (step_state - state).abs().max() < 1e-12
    # the padded row computes what its real tokens compute alone (pads are not written)
    alone, _ = recall_slots.novelty_scores(keys[1:, :, 5:], values[1:, :, 5:], (rotation[0][1:, 5:],
                                           rotation[1][1:, 5:]), torch.arange(T - 5)[None], 2, None)
    assert torch.equal(alone[0, 2:], whole[1, 7:])
    # repetition: 4 tokens with orthogonal keys seen once (each new: its whole value missed), then again (learned)
    k4 = torch.linalg.qr(torch.randn(16, 4, generator=g)).Q.T.reshape(1, 1, 4, 16)
    v4 = torch.randn(1, 1, 4, 16, generator=g)
    one = (torch.ones(1, 8, 16), torch.zeros(1, 8, 16))
    rep, _ = recall_slots.novelty_scores(k4.repeat(1, 1, 2, 1), v4.repeat(1, 1, 2, 1), one, torch.arange(8)[None], 0,
                                         None)
    assert torch.equal(rep[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_reset_keeps_the_recall_slots():
    model = slotted_model()
    cache = AhnCache(model.config)
    with torch.no_grad():
        first = model(_ids(30), past_key_values=cache).logits
        cache.reset()
        assert cache.layers[0].num_recall_slots == G
        assert torch.equal(model(_ids(30), past_key_values=cache).logits, first)


@pytest.mark.parametrize("case", range(12))
def test_random_settings_agree_on_every_path(case):
    """Seeded random windows, sinks, slot counts, spans, distances, chunk sizes and prompt lengths around the
    boundaries (W, W + S, W + S + G, chunk multiples): whole forward = chunked prefill = prefill + decoding, and a
    left-padded batch = each row alone."""
    rng = torch.Generator().manual_seed(100 + case)

    def pick(*options):
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    W, S, G = pick(3, 4, 7), pick(0, 1, 3), pick(1, 2, 5)
    span = [pick(0, 1, min(2, W - 1)), pick(0, 1, 3)]
    model = make_ahn(pick("qwen2", "llama"), pick("gdn", "dn", "mamba2"), W, S, seed=case)
    hidden = model.config.base_config.hidden_size
    model.add_recall_head({i: (torch.randn(hidden, generator=rng), torch.zeros(())) for i in model.ahn_modules()})
    model.config.recall_span, model.config.num_recall_slots = span, G
    model.config.recall_distance = pick(None, 0, W + 2)
    L = pick(W, W + S, W + S + G, W + S + G + 1, 2 * (W + S + G) + 3, 37)
    chunk = pick(1, 2, W, W + 1, L - 1 if L > 1 else 1)
    ids = torch.randint(3, 100, (1, L), generator=rng)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        model.config.prefill_chunk_size = chunk
        assert (model(ids).logits - ref).abs().max() < 1e-4, (W, S, G, span, L, chunk)
        model.config.prefill_chunk_size = None
        prefill = pick(1, W, L // 2 or 1)
        cache = AhnCache(model.config)
        logits = [model(ids[:, :prefill], past_key_values=cache).logits]
        logits += [model(ids[:, t: t + 1], past_key_values=cache).logits for t in range(prefill, L)]
        assert (torch.cat(logits, 1) - ref).abs().max() < 1e-4, (W, S, G, span, L, prefill)
        other = torch.randint(3, 100, (1, max(1, L - 3)), generator=rng)
        batch = torch.zeros(2, L, dtype=torch.long)
        batch[0], batch[1, L - other.shape[1]:] = ids[0], other[0]
        mask = (torch.arange(L) >= torch.tensor([[0], [L - other.shape[1]]])).long()
        both = model(batch, attention_mask=mask).logits
        assert (both[0] - ref[0]).abs().max() < 1e-4
        assert (both[1, L - other.shape[1]:] - model(other).logits[0]).abs().max() < 1e-4


@pytest.mark.parametrize("arch,ahn_type,sinks,score", [
    ("qwen2", "gdn", 2, "learned"), ("llama", "mamba2", 0, "learned"), ("qwen3", "dn", 2, "novelty"),
    ("llama", "gdn", 0, "novelty")])
def test_static_cache_with_slots_equals_dynamic(arch, ahn_type, sinks, score):
    """StaticAhnCache with recall slots (fixed slot buffers beside the sink store and the ring): prompts shorter and
    longer than the window, one-token steps that fill and turn over the slots, a multi-token continuation, more
    steps; the same logits as the dynamic cache and the whole-sequence forward, and the same slots."""
    model = slotted_model(arch, ahn_type, sinks, score=score)
    for prompt in (3, 9, 20):
        ids = _ids(prompt + 30 + 4 + 5, seed=prompt)
        chunks = list(torch.split(ids, [prompt] + [1] * 30 + [4] + [1] * 5, dim=1))
        with torch.no_grad():
            dynamic, static = AhnCache(model.config), StaticAhnCache(model.config)
            ref = run_chunks(model, dynamic, chunks)
            got = run_chunks(model, static, chunks)
            whole = model(ids, use_cache=False).logits
        assert (got - ref).abs().max() < 1e-5 and (got - whole).abs().max() < 1e-4
        for d, s in zip(dynamic.layers, static.layers):
            assert sorted(d.slot_rpos[0].tolist()) == sorted(s.slot_rpos[0].tolist())
            assert bool((s.slot_rpos >= sinks).all())  # full, no sink among them
    with torch.no_grad(), model.runtime(num_recall_slots=0):
        without = model(ids, use_cache=False).logits
    assert (whole - without).abs().max() > 1e-2  # the slots matter


@pytest.mark.parametrize("score", ["learned", "novelty"])
def test_static_cache_with_slots_left_padding_generate_and_beams(score):
    model = slotted_model(score=score)
    ids = _ids(24, batch=3, seed=4)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :7] = 0
    chunks = list(torch.split(ids, [8] + [1] * 16, dim=1))
    with torch.no_grad():
        ref = run_chunks(model, AhnCache(model.config), chunks, mask)
        got = run_chunks(model, StaticAhnCache(model.config), chunks, mask)
        assert (got - ref)[mask.bool()].abs().max() < 1e-5
        one = _ids(20, seed=5)
        dyn = model.generate(one, max_new_tokens=15, do_sample=False)
        sta = model.generate(one, max_new_tokens=15, do_sample=False, cache_implementation="static")
        assert torch.equal(dyn, sta)
        beams = model.generate(one, max_new_tokens=6, num_beams=3, do_sample=False, cache_implementation="static")
        assert torch.equal(beams, model.generate(one, max_new_tokens=6, num_beams=3, do_sample=False))


@pytest.mark.parametrize("score", ["learned", "novelty"])
def test_static_decode_step_with_slots_compiles_without_graph_breaks(score):
    """``torch.compile(fullgraph=True)`` traces a whole decoding step with recall slots (admission to the weakest
    slot, the slot keys moved to their distance, the novelty score's state) on the static cache."""
    diff, graphs, runs, cache = compiled_decode(slotted_model(score=score), _ids(36, seed=7), 8)
    assert diff < 1e-5
    assert len(runs) == 28 and 1 <= len(graphs) <= 2, (len(graphs), len(runs))
    assert bool((cache.layers[0].slot_rpos >= S).all())


@pytest.mark.parametrize("score", ["learned", "novelty"])
def test_slots_on_a_bf16_base_with_a_float32_classifier(score):
    """A bf16 base with the AHN (memory and classifier) in float32, as `from_base(..., ahn_dtype=torch.float32)` and
    bf16 loading keep it: slots run on every path (whole, chunked + decode, static generate) and agree."""
    model = slotted_model(score=score).to(torch.bfloat16)
    for module in model.ahn_modules().values():
        module.float()
    ids = _ids(40)
    with torch.no_grad():
        whole = model(ids, use_cache=False).logits
        cache = AhnCache(model.config)
        steps = [model(ids[:, :9], past_key_values=cache).logits]
        steps += [model(ids[:, t: t + 1], past_key_values=cache).logits for t in range(9, 40)]
        static = model.generate(ids[:, :20], max_new_tokens=6, do_sample=False, cache_implementation="static")
        dynamic = model.generate(ids[:, :20], max_new_tokens=6, do_sample=False)
    assert whole.dtype == torch.bfloat16 and bool(whole.isfinite().all())
    assert (torch.cat(steps, 1).float() - whole.float()).abs().max() < 0.05
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize("ahn_type", ["gdn", "mamba2"])
def test_slots_with_sinks_clamped_beyond_the_base_context_agree_on_every_path(ahn_type, paths):
    """Queries past the base's context P score the sinks from P and the slots from the slot distance; a banded
    prefill chunk wholly beyond P scores both with one rotation of its queries (the sink keys moved instead) and
    gives the whole forward's logits, as the other chunkings and decoding do."""
    from modeling_ahn.attention_ahn import AttentionPath

    P = 16
    model = slotted_model("llama", ahn_type, S)
    model.config.base_config.max_position_embeddings = P
    ids = _ids(60)
    ref = _reference_logits(model, ids)
    with torch.no_grad():
        model.config.clamp_sink_positions = False
        unclamped = model(ids, use_cache=False).logits
        model.config.clamp_sink_positions = True
    assert (ref - unclamped)[:, P:].abs().max() > 1e-3  # the clamp matters beyond P
    with torch.no_grad():
        for chunk in (7, 13, 20):
            paths.clear()
            model.config.prefill_chunk_size = chunk
            out = model(ids, past_key_values=AhnCache(model.config)).logits
            assert (out - ref).abs().max() < 1e-4, chunk
            banded = [f for p, f in paths if p is AttentionPath.BANDED_PREFILL and f.rpos_new.min() >= P - 1]
            assert banded, chunk  # (a chunk served by the banded kernel wholly beyond P)
        model.config.prefill_chunk_size = None
        cache = AhnCache(model.config)
        logits = [model(ids[:, :30], past_key_values=cache).logits]
        logits += [model(ids[:, t: t + 1], past_key_values=cache).logits for t in range(30, 60)]
    assert (torch.cat(logits, 1) - ref).abs().max() < 1e-4
