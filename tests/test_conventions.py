"""transformers' conventions (issue 24): attention implementation, output options, loading, saving, the composite
config, class flags, gradient checkpointing and generation modes behave as transformers users expect, and every
combination AHN cannot support raises with its reason."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling_ahn import AhnCache, AhnConfig, AhnForCausalLM, AhnModel, StaticAhnCache
from modeling_ahn.attention_ahn import get_layer_spec

from .conftest import make_ahn, make_base, make_base_config, randomize_ahn, save_base

W, S = 5, 2


def _ids(n=23, batch=2, seed=0):
    return torch.randint(3, 300, (batch, n), generator=torch.Generator().manual_seed(seed))


def _config_only_model(cls=AhnForCausalLM, **kw):
    torch.manual_seed(0)
    model = cls(AhnConfig(base_config=make_base_config("qwen2"), sliding_window=W, num_sinks=S, **kw))
    return randomize_ahn(model).eval()


# ---------------------------------------------------------------- the attention implementation


def test_set_attn_implementation_switches_the_inner_attention_and_keeps_ahn():
    model = make_ahn("qwen2", "gdn", W, S)
    ids = _ids()
    with torch.no_grad():
        sdpa_full, sdpa_cached = model(ids, use_cache=False).logits, model(ids).logits
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"  # what runs inside AHN
        assert model.config.base_config._attn_implementation == "ahn"  # the base still dispatches to AHN
        assert {get_layer_spec(layer.self_attn).inner for layer in model.model.layers} == {"eager"}
        eager_full, eager_cached = model(ids, use_cache=False).logits, model(ids).logits
        with model.runtime(mode="swa"):  # AHN is really on: without the memory the logits differ
            swa = model(ids, use_cache=False).logits
    assert (eager_full - sdpa_full).abs().max() < 1e-5
    assert (eager_cached - sdpa_cached).abs().max() < 1e-5
    assert (swa - eager_full).abs().max() > 1e-3
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("impl", ["flash_attention_2", "flex_attention"])
def test_set_attn_implementation_refuses_what_cannot_run_under_ahn(impl):
    model = make_ahn("qwen2", "gdn", W, S)
    with pytest.raises(ValueError, match=f"attn_implementation='{impl}' cannot run under AHN"):
        model.set_attn_implementation(impl)
    assert model.config._attn_implementation == "sdpa"


def test_eager_and_sdpa_bases_give_equal_logits_under_ahn():
    ids = _ids()
    out = {}
    for impl in ("eager", "sdpa"):
        model = AhnForCausalLM.from_base(make_base("qwen2", attn_implementation=impl), sliding_window=W, num_sinks=S)
        randomize_ahn(model)
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            out[impl] = model(ids).logits
    assert (out["eager"] - out["sdpa"]).abs().max() < 1e-5


def test_from_pretrained_attn_implementation_is_reported(tmp_path):
    model = make_ahn("qwen2", "gdn", W, S)
    model.save_pretrained(tmp_path / "repo")
    ids = _ids()
    loaded = AhnForCausalLM.from_pretrained(tmp_path / "repo", attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager"
    with torch.no_grad():
        assert (loaded(ids).logits - model(ids).logits).abs().max() < 1e-5


# ---------------------------------------------------------------- output options


def test_output_attentions_needs_eager():
    model = make_ahn("qwen2", "gdn", W, S)
    with pytest.raises(ValueError, match="output_attentions=True needs the eager attention"):
        model(_ids(), output_attentions=True)


def test_output_attentions_with_eager_cover_sinks_and_window():
    model = make_ahn("qwen2", "gdn", W, S)
    model.set_attn_implementation("eager")
    ids = _ids(12)
    with torch.no_grad():
        out = model(ids, output_attentions=True, use_cache=False)
    assert len(out.attentions) == model.config.num_hidden_layers
    for a in out.attentions:
        assert a.shape == (2, model.config.num_attention_heads, 12, S + 12)  # [sink store, sequence]
        assert torch.allclose(a.sum(-1), torch.ones(()))
        visible = (a[0, 0] > 0).sum(-1)
        assert int(visible.max()) <= S + W  # each query sees at most its sinks and its window


def test_output_attentions_refused_with_chunked_prefill():
    model = make_ahn("qwen2", "gdn", W, S, prefill_chunk_size=7)
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="not available with chunked prefill"):
        model(_ids(20), output_attentions=True)


def test_packed_sequences_are_refused():
    model = make_ahn("qwen2", "gdn", W, S)
    ids = _ids(12, batch=1)
    packed = torch.cat([torch.arange(7), torch.arange(5)])[None]
    with pytest.raises(ValueError, match="packed .*sequences are not supported"):
        model(ids, position_ids=packed)
    with pytest.raises(ValueError, match="packed .*sequences are not supported"):
        model(ids, position_ids=packed, attention_mask=torch.ones(1, 12, dtype=torch.long), use_cache=False)
    with torch.no_grad():  # ordinary positions are fine
        assert torch.equal(model(ids, position_ids=torch.arange(12)[None]).logits, model(ids).logits)


@pytest.mark.parametrize("cls", [AhnForCausalLM, AhnModel])
def test_chunked_prefill_outputs(cls):
    """A prompt longer than prefill_chunk_size: hidden states of the whole prompt, and return_dict=False."""
    model = _config_only_model(cls)
    ids = _ids(20)
    with torch.no_grad():
        model.config.prefill_chunk_size = None
        whole = model(ids, output_hidden_states=True)
        model.config.prefill_chunk_size = 7
        chunked = model(ids, output_hidden_states=True)
        as_tuple = model(ids, return_dict=False)
    assert chunked.hidden_states is not None
    assert len(chunked.hidden_states) == len(whole.hidden_states) == model.config.num_hidden_layers + 1
    for a, b in zip(chunked.hidden_states, whole.hidden_states):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-4
    assert isinstance(as_tuple, tuple)
    first = chunked.logits if cls is AhnForCausalLM else chunked.last_hidden_state
    assert (as_tuple[0] - first).abs().max() < 1e-4


@pytest.mark.parametrize("cls", [AhnForCausalLM, AhnModel])
def test_chunked_prefill_captures_selected_hidden_states(cls):
    """output_hidden_states=[indices] (transformers' selective capture) on the chunked path: the selected states
    equal the whole-prompt ones, the others are None."""
    model = _config_only_model(cls)
    ids = _ids(20)
    with torch.no_grad():
        model.config.prefill_chunk_size = None
        whole = model(ids, output_hidden_states=True).hidden_states
        model.config.prefill_chunk_size = 7
        picked = model(ids, output_hidden_states=[0, 2]).hidden_states
    assert len(picked) == len(whole)
    for i, (a, b) in enumerate(zip(picked, whole)):
        if i in (0, 2):
            assert a is not None and (a - b).abs().max() < 1e-4
        else:
            assert a is None


def test_chunked_prefill_keeps_the_last_hidden_states_of_skipped_chunks():
    """With logits_to_keep=1 the first chunks compute no logits, yet their hidden states are returned."""
    model = make_ahn("qwen2", "gdn", W, S, prefill_chunk_size=7)
    ids = _ids(20)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, logits_to_keep=1)
        model.config.prefill_chunk_size = None
        whole = model(ids, output_hidden_states=True)
    assert out.logits.shape[1] == 1
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(out.hidden_states, whole.hidden_states))


# ---------------------------------------------------------------- loading


@pytest.fixture
def repo(tmp_path):
    model = make_ahn("qwen2", "gdn", W, S)
    model.save_pretrained(tmp_path / "repo")
    return tmp_path / "repo", model


def test_output_loading_info(repo):
    path, model = repo
    loaded, info = AhnForCausalLM.from_pretrained(path, output_loading_info=True)
    assert isinstance(loaded, AhnForCausalLM)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    loaded, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert isinstance(loaded, AhnForCausalLM) and not info["missing_keys"]


def test_mismatched_state_dict_is_reported_in_loading_info(repo):
    path, model = repo
    state = dict(model.ahn_state_dict())
    state.pop("model.layers.1.ahn.fn.a_proj.weight")
    state["model.layers.1.ahn.fn.bogus"] = torch.zeros(3)
    loaded, info = AhnForCausalLM.from_pretrained(path, state_dict=state, output_loading_info=True)
    assert info["missing_keys"] == {"model.layers.1.ahn.fn.a_proj.weight"}
    assert info["unexpected_keys"] == {"model.layers.1.ahn.fn.bogus"}
    assert torch.equal(loaded.model.layers[0].ahn.fn.o_proj.weight, model.model.layers[0].ahn.fn.o_proj.weight)
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.ahn.fn.a_proj.weight'\]"):  # without: raises
        AhnForCausalLM.from_pretrained(path, state_dict=state)


def test_from_pretrained_none_with_config_and_state_dict():
    model = _config_only_model()
    ids = _ids()
    loaded, info = AhnForCausalLM.from_pretrained(None, config=model.config, state_dict=model.state_dict(),
                                                  output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # transformers' convention for a model built from a config: what the state dict lacks is initialised, and
    # reported (ModelTesterMixin.test_can_init_all_missing_weights)
    partial = {k: v for k, v in model.state_dict().items() if ".ahn." not in k or ".layers.0." in k}
    loaded = AhnForCausalLM.from_pretrained(None, config=model.config, state_dict=partial)
    fresh = AhnForCausalLM(model.config)
    assert set(loaded.state_dict()) == set(fresh.state_dict())
    assert torch.equal(loaded.model.layers[0].ahn.fn.a_proj.weight, model.model.layers[0].ahn.fn.a_proj.weight)
    _, info = AhnForCausalLM.from_pretrained(None, config=model.config, state_dict=partial, output_loading_info=True)
    assert info["missing_keys"] == {k for k in model.state_dict() if ".ahn." in k and ".layers.1." in k}
    with pytest.raises(ValueError, match="needs config=AhnConfig"):
        AhnForCausalLM.from_pretrained(None, state_dict=model.state_dict())
    with pytest.raises(ValueError, match="needs state_dict="):
        AhnForCausalLM.from_pretrained(None, config=model.config)


def test_plain_base_checkpoint_is_named(tmp_path):
    base = save_base(tmp_path / "base")
    with pytest.raises(ValueError, match="is not an AHN repo: its config.json has model_type='qwen2'.*from_base"):
        AhnForCausalLM.from_pretrained(base)


def test_base_loading_errors_are_transformers_own(repo):
    path, _ = repo
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta device context manager"):
        AhnForCausalLM.from_pretrained(path)


# ---------------------------------------------------------------- save / load round trips


@pytest.mark.parametrize("cls", [AhnForCausalLM, AhnModel])
def test_model_built_from_a_config_round_trips(tmp_path, cls):
    model = _config_only_model(cls)
    model.save_pretrained(tmp_path / "repo")
    assert (tmp_path / "repo" / "base" / "model.safetensors").exists()  # no base repo to refer to: saved too
    loaded = cls.from_pretrained(tmp_path / "repo")
    ids = _ids()
    with torch.no_grad():
        a, b = model(ids), loaded(ids)
    key = "logits" if cls is AhnForCausalLM else "last_hidden_state"
    assert torch.equal(a[key], b[key])
    assert torch.equal(model.model.embed_tokens.weight, loaded.model.embed_tokens.weight)


def test_base_made_in_memory_round_trips(tmp_path):
    model = make_ahn("qwen2", "gdn", W, S)  # over a base without a name
    model.save_pretrained(tmp_path / "repo")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "repo")
    with torch.no_grad():
        assert torch.equal(loaded(_ids()).logits, model(_ids()).logits)


def test_base_with_a_name_is_not_copied(tmp_path):
    base = save_base(tmp_path / "base")
    model = AhnForCausalLM.from_base(base, sliding_window=W, num_sinks=S)
    model.save_pretrained(tmp_path / "repo")
    assert not (tmp_path / "repo" / "base").exists()
    loaded = AhnForCausalLM.from_pretrained(tmp_path / "repo")
    with torch.no_grad():
        assert torch.equal(loaded(_ids()).logits, model(_ids()).logits)


# ---------------------------------------------------------------- the composite config


def test_config_reads_and_writes_the_base_attributes():
    model = make_ahn("qwen2", "gdn", W, S)
    config = model.config
    base = config.base_config
    assert config.get_text_config() is base and config.get_text_config(decoder=True) is base
    for name in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers"):
        assert getattr(config, name) == getattr(base, name)
    assert config.max_position_embeddings != base.max_position_embeddings  # the AHN model's own
    assert config.sliding_window == W
    config.vocab_size = 321  # written through: one value
    assert base.vocab_size == 321 and "vocab_size" not in config.to_dict()
    with pytest.raises(AttributeError):
        config.no_such_attribute  # noqa: B018
    assert AhnConfig.from_dict(config.to_dict()).vocab_size == 321


# ---------------------------------------------------------------- flags, caches, training, generation


def test_class_flags():
    for cls in (AhnForCausalLM, AhnModel):
        assert cls._is_stateful and not cls._can_compile_fullgraph
        assert cls._supports_sdpa and not cls._supports_flash_attn and not cls._supports_flex_attn
        assert not cls._supports_attention_backend


def test_static_cache_is_recognised_as_compileable():
    model = make_ahn("qwen2", "gdn", W, S)
    assert StaticAhnCache(model.config).is_compileable  # what transformers' auto-compile and mask creation check
    assert not AhnCache(model.config).is_compileable
    assert not AhnCache(model.config).is_croppable


def test_unused_release_parameter_is_not_trained():
    model = make_ahn("qwen2", "gdn", W, S)
    d = model.model.layers[0].ahn.fn.D
    assert not d.requires_grad
    assert "model.layers.0.ahn.fn.D" in model.ahn_state_dict()  # still stored, official name


def test_gradient_checkpointing_gives_every_trainable_parameter_a_gradient():
    model = make_ahn("qwen2", "gdn", W, S)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = _ids(16)
    model(ids, labels=ids, use_cache=False).loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".ahn." in n for n, _ in trainable)
    assert [n for n, p in trainable if p.grad is None] == []


def test_assisted_decoding_is_refused_with_its_reason():
    model = make_ahn("qwen2", "gdn", W, S)
    assistant = make_ahn("qwen2", "gdn", W, S, seed=1)
    ids = _ids(6, batch=1)
    with pytest.raises(ValueError, match="cannot be cropped"):
        model.generate(ids, assistant_model=assistant, max_new_tokens=3, do_sample=False)
    with pytest.raises(ValueError, match="cannot be cropped"):
        model.generate(ids, prompt_lookup_num_tokens=2, max_new_tokens=3, do_sample=False)
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache = AhnCache(model.config)
        model(ids, past_key_values=cache)
        cache.crop(3)
