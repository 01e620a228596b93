"""AHN as a registered PEFT method: training, round trips, exported repos, disable_adapter."""

from __future__ import annotations

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from modeling_ahn import AhnForCausalLM, AhnPeftConfig, peft_adapter_path

from .conftest import make_base, randomize_ahn, save_base

W, S = 5, 2
IDS = torch.randint(3, 300, (2, 21), generator=torch.Generator().manual_seed(0))


def _peft(arch="qwen2", ahn_type="gdn", **kw):
    return get_peft_model(make_base(arch), AhnPeftConfig(ahn_type=ahn_type, sliding_window=W, num_sinks=S,
                                                         task_type="CAUSAL_LM", **kw))


def _copy_ahn(peft_model, ahn_model):
    """Put the AHN weights of an AhnForCausalLM into the PEFT model (official key -> PEFT layer)."""
    sd = ahn_model.ahn_state_dict()
    with torch.no_grad():
        for i, layer in enumerate(peft_model.base_model.model.model.layers):
            if hasattr(layer.self_attn, "ahn"):
                for name, p in layer.self_attn.ahn["default"].named_parameters():
                    p.copy_(sd[f"model.layers.{i}.ahn.{name}"])


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
@pytest.mark.parametrize("ahn_type", ["gdn", "dn", "mamba2"])
def test_peft_model_equals_ahn_model(arch, ahn_type):
    ahn = randomize_ahn(AhnForCausalLM.from_base(make_base(arch), ahn_type=ahn_type, sliding_window=W, num_sinks=S))
    pm = _peft(arch, ahn_type)
    _copy_ahn(pm, ahn)
    pm.eval()
    with torch.no_grad():
        ref = ahn(IDS, use_cache=False).logits
        assert (pm(IDS).logits - ref).abs().max() < 1e-5
        gen = pm.generate(input_ids=IDS[:, :8], max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert torch.equal(gen, ahn.generate(IDS[:, :8], max_new_tokens=8, do_sample=False, eos_token_id=None,
                                             pad_token_id=0))


def test_only_ahn_trains():
    pm = _peft()
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(".self_attn.ahn.default.fn." in n for n in trainable)
    n_ahn = sum(p.numel() for n, p in pm.named_parameters() if p.requires_grad)
    fresh = AhnForCausalLM.from_base(make_base("qwen2"), sliding_window=W, num_sinks=S)
    assert n_ahn == fresh.num_ahn_parameters()
    randomize_ahn_peft(pm)
    pm.train()
    pm(IDS, labels=IDS).loss.backward()
    with_grad = {n for n, p in pm.named_parameters() if p.grad is not None}
    assert with_grad and with_grad <= trainable


def randomize_ahn_peft(pm):
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if n.endswith("o_proj.weight") and ".ahn." in n:
                p.normal_(0, 0.3)


def test_save_and_reload_bit_identical(tmp_path):
    pm = _peft()
    randomize_ahn_peft(pm)
    pm.eval()
    with torch.no_grad():
        ref = pm(IDS).logits
    pm.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert weights and all(".self_attn.ahn.fn." in k and ".default." not in k for k in weights)
    reloaded = PeftModel.from_pretrained(make_base("qwen2"), tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, ref)


def test_disable_adapter_gives_the_base():
    pm = _peft()
    randomize_ahn_peft(pm)
    pm.eval()
    with torch.no_grad():
        base = make_base("qwen2")(IDS).logits
        with_ahn = pm(IDS).logits
        with pm.disable_adapter():
            disabled = pm(IDS).logits
            gen = pm.generate(input_ids=IDS[:, :6], max_new_tokens=6, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        base_gen = make_base("qwen2").generate(IDS[:, :6], max_new_tokens=6, do_sample=False, eos_token_id=None,
                                               pad_token_id=0)
    assert (disabled - base).abs().max() < 1e-5
    assert (with_ahn - base).abs().max() > 1e-2
    assert torch.equal(gen, base_gen)


def test_full_attention_layers():
    pm = _peft(full_attention_layers=[0])
    layers = pm.base_model.model.model.layers
    assert not hasattr(layers[0].self_attn, "ahn") and hasattr(layers[1].self_attn, "ahn")
    ahn = AhnForCausalLM.from_base(make_base("qwen2"), sliding_window=W, num_sinks=S, full_attention_layers=[0])
    randomize_ahn(ahn)
    _copy_ahn(pm, ahn)
    pm.eval()
    with torch.no_grad():
        assert (pm(IDS).logits - ahn(IDS, use_cache=False).logits).abs().max() < 1e-5


def test_exported_repo_loads_as_peft_adapter(tmp_path):
    base_dir = save_base(tmp_path / "base")
    ahn = randomize_ahn(AhnForCausalLM.from_base(base_dir, ahn_type="mamba2", sliding_window=W, num_sinks=S))
    ahn.save_pretrained(tmp_path / "repo")
    with torch.no_grad():
        ref = ahn(IDS, use_cache=False).logits
        pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "repo",
                                       subfolder="peft")
        assert (pm(IDS).logits - ref).abs().max() < 1e-5
        auto = AutoPeftModelForCausalLM.from_pretrained(peft_adapter_path(str(tmp_path / "repo")))
        assert torch.equal(auto(IDS).logits, pm(IDS).logits)
    assert pm.peft_config["default"].sliding_window == W and pm.peft_config["default"].ahn_type == "mamba2"


def test_unload_restores_the_base():
    pm = _peft()
    randomize_ahn_peft(pm)
    base = pm.unload()
    with torch.no_grad():
        assert (base(IDS).logits - make_base("qwen2")(IDS).logits).abs().max() < 1e-5
    with pytest.raises(ValueError, match="cannot be merged"):
        _peft().merge_and_unload()


def test_bad_peft_settings():
    with pytest.raises(ValueError, match="sliding_window must be an integer >= 1"):
        AhnPeftConfig(sliding_window=0)
    with pytest.raises(ValueError, match="Unknown ahn_type"):
        AhnPeftConfig(ahn_type="lstm")
    with pytest.raises(ValueError, match="out of range"):
        _peft(full_attention_layers=[7])


@pytest.mark.parametrize("ahn_type", ["gdn", "mamba2"])
def test_peft_model_clamps_sinks_beyond_the_base_context_like_the_ahn_model(ahn_type):
    """Queries past the base's trained context P see the sinks as if at P, on the PEFT path as on the model's own
    (both build their layers with the same factory): equal logits for a whole sequence and for decoding."""
    P, n = 12, 40
    ahn = randomize_ahn(AhnForCausalLM.from_base(make_base("llama"), ahn_type=ahn_type, sliding_window=W, num_sinks=S))
    ahn.config.base_config.max_position_embeddings = P
    pm = _peft("llama", ahn_type)
    pm.base_model.model.config.max_position_embeddings = P
    _copy_ahn(pm, ahn)
    pm.eval()
    ids = torch.randint(3, 300, (2, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ahn(ids, use_cache=False).logits
        unclamped = AhnForCausalLM.from_base(make_base("llama"), ahn_type=ahn_type, sliding_window=W, num_sinks=S)
        unclamped.load_ahn_state_dict(ahn.ahn_state_dict())  # P = 512: nothing clamped at 40 tokens
        assert (unclamped(ids, use_cache=False).logits - ref).abs().max() > 1e-3  # clamping changes the logits here
        assert (pm(ids).logits - ref).abs().max() < 1e-5
        gen = pm.generate(input_ids=ids[:, :20], max_new_tokens=24, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
        assert torch.equal(gen, ahn.generate(ids[:, :20], max_new_tokens=24, do_sample=False, eos_token_id=None,
                                             pad_token_id=0))
