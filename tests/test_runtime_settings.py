"""``model.runtime(...)``: the one owner of the per-call window, sinks and attention mode."""

from __future__ import annotations

import pytest
import torch

from modeling_ahn.attention_ahn import get_layer_spec

from .conftest import make_ahn

W, S = 5, 2


def _settings(model):
    modes = {get_layer_spec(layer.self_attn).mode for layer in model.model.layers}
    return model.config.sliding_window, model.config.num_sinks, modes


def _ids(n, seed=0):
    return torch.randint(3, 100, (1, n), generator=torch.Generator().manual_seed(seed))


def test_runtime_sets_the_settings_for_the_block_and_restores_them():
    model = make_ahn("qwen2", "gdn", W, S)
    other = make_ahn("qwen2", "gdn", 8, 1)  # same seed: the same base and AHN weights, built at W=8, S=1
    ids = _ids(20)
    with torch.no_grad():
        with other.attention_mode("swa"):
            want = other(ids).logits
        before = model(ids).logits
        with model.runtime(sliding_window=8, num_sinks=1, mode="swa") as m:
            assert m is model and _settings(model) == (8, 1, {"swa"})
            got = model(ids).logits
        after = model(ids).logits
    assert torch.equal(got, want)
    assert _settings(model) == (W, S, {"ahn"})
    assert torch.equal(after, before)


def test_runtime_restores_the_settings_after_an_exception():
    model = make_ahn("qwen2", "gdn", W, S)
    with pytest.raises(RuntimeError, match="inside"):
        with model.runtime(sliding_window=9, num_sinks=0, mode="full"):
            raise RuntimeError("inside")
    assert _settings(model) == (W, S, {"ahn"})


def test_nested_blocks_each_restore_what_they_found():
    model = make_ahn("qwen2", "gdn", W, S)
    with model.runtime(sliding_window=8, num_sinks=1, mode="swa"):
        with model.runtime(num_sinks=0):  # unnamed settings are kept
            assert _settings(model) == (8, 0, {"swa"})
            with pytest.raises(KeyError):
                with model.runtime(sliding_window=3, mode="full"):
                    assert _settings(model) == (3, 0, {"full"})
                    raise KeyError("inner")
            assert _settings(model) == (8, 0, {"swa"})
        assert _settings(model) == (8, 1, {"swa"})
        with model.attention_mode("ahn"):  # the old name: the mode only
            assert _settings(model) == (8, 1, {"ahn"})
        assert _settings(model) == (8, 1, {"swa"})
    assert _settings(model) == (W, S, {"ahn"})


@pytest.mark.parametrize("kwargs, match", [
    (dict(sliding_window=0), "sliding_window must be an integer >= 1"),
    (dict(sliding_window=4.5), "sliding_window must be an integer >= 1"),
    (dict(num_sinks=-1), "num_sinks must be an integer >= 0"),
    (dict(sliding_window=8, mode="window"), "attention mode must be 'ahn', 'swa' or 'full'"),
])
def test_bad_settings_are_refused_before_anything_changes(kwargs, match):
    model = make_ahn("qwen2", "gdn", W, S)
    with pytest.raises(ValueError, match=match):
        with model.runtime(**kwargs):
            pytest.fail("the block ran")
    assert _settings(model) == (W, S, {"ahn"})
    with pytest.raises(ValueError, match="attention mode must be"):
        model.attention_mode(None)


def test_a_cache_built_for_other_settings_is_refused_inside_the_block():
    model = make_ahn("qwen2", "gdn", W, S)
    ids = _ids(12)
    with torch.no_grad():
        stale, kept = (model(ids[:, :10], use_cache=True).past_key_values for _ in range(2))
        with model.runtime(sliding_window=8):
            with pytest.raises(ValueError, match="This cache was built for sliding_window=5, num_sinks=2"):
                model(ids[:, 10:], past_key_values=stale)
            fresh = model(ids, use_cache=True).logits  # a new cache inside the block is fine
        with model.runtime(sliding_window=W, num_sinks=S, mode="ahn"):  # the settings the cache was built for
            step = model(ids[:, 10:], past_key_values=kept).logits
    assert fresh.shape[1] == 12 and step.shape[1] == 2


def test_memory_off_computes_no_write_gates_and_its_cache_refuses_the_memory_later(monkeypatch):
    """Attention mode "swa" (the memory off) skips the memory's write gates in chunks and decoding steps (the work
    transformers' sliding window does not do either); a cache filled that way cannot feed the memory afterwards (its
    window has no gates), so an "ahn" step on it is refused with the reason, while a new cache works."""
    from modeling_ahn.memory_ahn import GatedDeltaNet

    model = make_ahn("qwen2", "gdn", W, S)
    calls = []
    original = GatedDeltaNet.write_gates
    monkeypatch.setattr(GatedDeltaNet, "write_gates", lambda self, x: calls.append(x.shape[1]) or original(self, x))
    ids = _ids(20)
    with torch.no_grad():
        cache = model.new_cache()
        with model.attention_mode("swa"):
            model(ids[:, :12], past_key_values=cache)  # a chunk past the window
            for t in range(12, 16):  # steady decoding steps
                model(ids[:, t:t + 1], past_key_values=cache)
        assert calls == []
        with pytest.raises(ValueError, match="memory off .*new cache"):
            model(ids[:, 16:17], past_key_values=cache)
        fresh = model.new_cache()
        model(ids[:, :12], past_key_values=fresh)
        model(ids[:, 12:13], past_key_values=fresh)
    assert calls == [12] * len(model.model.layers) + [1] * len(model.model.layers)
