"""Bad input raises a ValueError that says what is wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from modeling_ahn import AhnCache, AhnConfig, AhnForCausalLM

from .conftest import make_ahn, make_base, make_base_config


@pytest.mark.parametrize("window", [0, -3, 2.5, "8"])
def test_bad_sliding_window(window):
    with pytest.raises(ValueError, match="sliding_window must be an integer >= 1"):
        AhnForCausalLM.from_base(make_base("qwen2"), sliding_window=window, num_sinks=0)


@pytest.mark.parametrize("sinks", [-1, 1.5])
def test_bad_num_sinks(sinks):
    with pytest.raises(ValueError, match="num_sinks must be an integer >= 0"):
        AhnConfig(base_config=make_base_config("llama"), sliding_window=8, num_sinks=sinks)


def test_bad_prefill_chunk_size():
    with pytest.raises(ValueError, match="prefill_chunk_size must be None or an integer >= 1"):
        AhnConfig(base_config=make_base_config("llama"), sliding_window=8, num_sinks=0, prefill_chunk_size=0)


def test_unknown_ahn_type():
    with pytest.raises(ValueError, match="Unknown ahn_type 'rwkv'.*'gdn'"):
        AhnForCausalLM.from_base(make_base("qwen2"), ahn_type="rwkv", sliding_window=8, num_sinks=0)


def test_unsupported_base_architecture():
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="Unsupported base architecture 'gpt2'.*qwen2"):
        AhnForCausalLM.from_base(gpt2, sliding_window=8, num_sinks=0)
    with pytest.raises(ValueError, match="Unsupported base architecture 'gpt2'"):
        AhnConfig(base_config=gpt2.config, sliding_window=8)


def test_full_attention_layers_out_of_range():
    with pytest.raises(ValueError, match=r"full_attention_layers \[5\] are out of range: the base has 2 layers"):
        AhnForCausalLM.from_base(make_base("qwen2"), sliding_window=8, num_sinks=0, full_attention_layers=[5])


def test_weights_that_do_not_fit_the_base():
    small = make_ahn("qwen2", "gdn", 5, 2)
    other_cfg = make_base_config("qwen2")
    other_cfg.hidden_size, other_cfg.num_attention_heads = 96, 6
    big = AhnForCausalLM.from_base(AutoModelForCausalLM.from_config(other_cfg), sliding_window=5, num_sinks=2)
    with pytest.raises(ValueError, match="AHN weights do not fit this base.*hidden size 96, 6 heads"):
        big.load_ahn_state_dict(small.ahn_state_dict())


def test_weights_of_another_memory_type():
    gdn = make_ahn("qwen2", "gdn", 5, 2)
    dn = make_ahn("qwen2", "dn", 5, 2)
    with pytest.raises(ValueError, match="does not match this model \\(ahn_type='dn'.*unexpected"):
        dn.load_ahn_state_dict(gdn.ahn_state_dict())


def test_attention_mask_with_wrong_length():
    model = make_ahn("llama", "gdn", 5, 2)
    ids = torch.randint(3, 100, (1, 6))
    with pytest.raises(ValueError, match="attention_mask has 4 columns; expected 6"):
        model(ids, attention_mask=torch.ones(1, 4, dtype=torch.long))


def test_custom_4d_mask_is_refused():
    model = make_ahn("llama", "gdn", 5, 2)
    ids = torch.randint(3, 100, (1, 6))
    with pytest.raises(ValueError, match="custom 4D attention mask"):
        model(ids, attention_mask=torch.ones(1, 1, 6, 6, dtype=torch.bool), use_cache=False)


def test_cache_built_for_another_window():
    model = make_ahn("llama", "gdn", 5, 2)
    cache = AhnCache(model.config)
    model.config.sliding_window = 7
    with pytest.raises(ValueError, match="cache was built for sliding_window=5"):
        model(torch.randint(3, 100, (1, 6)), past_key_values=cache)


def test_config_without_base_refuses_to_build_a_model():
    with pytest.raises(ValueError, match="AhnConfig has no base_config"):
        AhnForCausalLM(AhnConfig(sliding_window=8, num_sinks=0))


def test_other_cache_implementations_are_refused():
    model = make_ahn("llama", "gdn", 5, 2)
    for impl in ("offloaded", "quantized"):  # "static" gives a StaticAhnCache (test_static_cache.py)
        with pytest.raises(ValueError, match=f"cache_implementation='{impl}' is not supported"):
            model.generate(torch.randint(3, 100, (1, 6)), max_new_tokens=2, cache_implementation=impl)


def test_crop_is_refused():
    model = make_ahn("llama", "gdn", 5, 2)
    cache = AhnCache(model.config)
    model(torch.randint(3, 100, (1, 9)), past_key_values=cache)
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(2)


def test_live_config_changes_are_validated():
    model = make_ahn("llama", "gdn", 5, 2)
    model.config.sliding_window = 0
    with pytest.raises(ValueError, match="sliding_window must be an integer >= 1"):
        model(torch.randint(3, 100, (1, 6)))


def test_inputs_the_base_would_fail_on_cryptically_are_refused_with_the_reason():
    model = make_ahn()
    ids = torch.randint(3, 100, (1, 12))
    with torch.no_grad():
        with pytest.raises(ValueError, match="the input has no tokens"):
            model(ids[:, :0])
        with pytest.raises(ValueError, match="the input has no tokens"):
            model.generate(ids[:, :0], max_new_tokens=2)
        with pytest.raises(ValueError, match="must hold integer token ids"):
            model(ids.float())
        with pytest.raises(ValueError, match=r"must be \[batch, tokens\]"):
            model(ids[0])
        with pytest.raises(ValueError, match="position_ids has 5 positions per row; expected 12"):
            model(ids, position_ids=torch.arange(5)[None])
        cache = model.new_cache()
        model(ids, past_key_values=cache)
        with pytest.raises(ValueError, match="this cache holds 1 rows .* but the input has 2"):
            model(torch.randint(3, 100, (2, 1)), past_key_values=cache)
        model(ids[:, :1], past_key_values=cache)  # the cache is unharmed by the refusals


@pytest.mark.parametrize("ahn_type", ["gdn", "dn", "mamba2"])
def test_a_memory_state_that_is_not_finite_is_named_with_its_layer(ahn_type):
    """NaN reaching one layer's memory (through a write gate, or in the state itself) is refused with the layer
    named: the whole-sequence and the chunked prefill, a decoding step, and AhnModel; a finite model passes."""
    from modeling_ahn import AhnModel

    model = make_ahn(ahn_type=ahn_type)
    ids = torch.randint(3, 100, (1, 12))
    with torch.no_grad():
        cache = model.new_cache()
        model(ids, past_key_values=cache)
        model(ids[:, :1], past_key_values=cache)  # finite: no error
        cache.layers[1].recurrent_state[0, 0, 0, 0] = float("nan")
        with pytest.raises(FloatingPointError, match=r"memory state of layer\(s\) \[1\] holds NaN or Inf"):
            model(ids[:, :1], past_key_values=cache)  # a decoding step
        memory = model.ahn_modules()[1].fn
        (memory.dt_proj if ahn_type == "mamba2" else memory.b_proj).weight[0, 0] = float("nan")
        for chunk in (None, 4):
            model.config.prefill_chunk_size = chunk
            with pytest.raises(FloatingPointError, match="first: layer 1"):
                model(ids, past_key_values=model.new_cache())
        decoder = AhnModel(model.config)
        decoder.load_state_dict(model.state_dict(), strict=False)
        with pytest.raises(FloatingPointError, match=r"layer\(s\) \[1\]"):
            decoder(ids, past_key_values=decoder.new_cache())


def test_a_cache_filled_by_another_model_is_refused():
    """Another base, KV layout or memory type: named, where the shapes gave a concatenation error (or nothing at all,
    for a Qwen3 with the Qwen2's shapes). The same model, or a cache emptied by reset(), goes on."""
    model = make_ahn("qwen2", "gdn")
    ids = torch.randint(3, 100, (1, 12))
    with torch.no_grad():
        for other, names in ((make_ahn("llama", "gdn"), "1 KV heads"), (make_ahn("qwen2", "mamba2"), "memory mamba2"),
                             (make_ahn("qwen3", "gdn"), "qwen3 base")):
            cache = model.new_cache()
            model(ids, past_key_values=cache)
            with pytest.raises(ValueError, match=f"filled by another model .*not by this one .*{names}"):
                other(ids[:, :1], past_key_values=cache)
            model(ids[:, :1], past_key_values=cache)  # its own model goes on
            cache.reset()
            other(ids[:, :1], past_key_values=cache)  # emptied: the other model may take it
