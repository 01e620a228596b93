"""Official ByteDance-format checkpoints (built here from random weights) convert into our repos."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

from modeling_ahn import AhnConfig, AhnForCausalLM
from modeling_ahn.cli import main as ahn
from modeling_ahn.memory_ahn import AHN_TYPES
from modeling_ahn.modeling_ahn import expected_ahn_shapes

from .conftest import save_base

W, S = 5, 2
IDS = torch.randint(3, 300, (1, 21), generator=torch.Generator().manual_seed(0))
STALE = dict(dy_sliding_window=[32, 64, 128], dy_num_attn_sinks=[0, 32, 64], save_ahn_only=True, loss_type="kl")


def official_config(base_dir, ahn_type, **extra):
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg.update(_layer_implementation=f"{cfg['model_type'].capitalize()}MemDecoderLayer",
               _ahn_implementation=AHN_TYPES[ahn_type], sliding_window=256, use_sliding_window=False,
               sliding_window_type="fixed", ahn_position="prev_attn", fa_layer_ids="", use_q_proj=False,
               use_ahn_router=False, use_normalized_l2=True, use_layerwise_decay=False, **STALE)
    cfg.update(extra)
    return cfg


def official_ahn_tensors(base_dir, ahn_type, seed=0):
    config = AhnConfig(base_config=AutoConfig.from_pretrained(base_dir), ahn_type=ahn_type)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.2 for k, shape in expected_ahn_shapes(config).items()}


def reference_logits(base_dir, ahn_type, tensors):
    model = AhnForCausalLM.from_base(base_dir, ahn_type=ahn_type, sliding_window=W, num_sinks=S)
    model.load_ahn_state_dict(tensors)
    with torch.no_grad():
        return model(IDS).logits


def converted_logits(out):
    model = AutoModelForCausalLM.from_pretrained(out, sliding_window=W, num_sinks=S)
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
@pytest.mark.parametrize("ahn_type", ["gdn", "dn", "mamba2"])
def test_ahn_only_checkpoint(tmp_path, arch, ahn_type):
    base = save_base(tmp_path / "base", arch)
    src = tmp_path / "official"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(official_config(tmp_path / "base", ahn_type)))
    tensors = official_ahn_tensors(base, ahn_type)
    save_file(tensors, src / "model.safetensors")
    assert ahn(["convert", "bytedance", "--ahn-path", str(src), "--base", base, "--out", str(tmp_path / "out")]) == 0
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (cfg["sliding_window"], cfg["num_sinks"], cfg["ahn_type"]) == (32640, 128, ahn_type)  # paper defaults
    assert cfg["base_model_name_or_path"] == base
    assert not set(STALE) & set(cfg["base_config"]) and "_ahn_implementation" not in cfg["base_config"]
    assert torch.equal(converted_logits(tmp_path / "out"), reference_logits(base, ahn_type, tensors))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
@pytest.mark.parametrize("ahn_type", ["gdn", "dn", "mamba2"])
def test_merged_sharded_checkpoint(tmp_path, arch, ahn_type):
    base = save_base(tmp_path / "base", arch)
    base_weights = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(base).state_dict().items()
                    if k != "lm_head.weight" or not AutoConfig.from_pretrained(base).tie_word_embeddings}
    tensors = official_ahn_tensors(base, ahn_type, seed=1)
    src = tmp_path / "merged"
    src.mkdir()
    cfg = official_config(tmp_path / "base", ahn_type)
    del cfg["_ahn_implementation"]  # the type is then told from the keys
    (src / "config.json").write_text(json.dumps(cfg))
    everything = {**base_weights, **tensors}
    keys = sorted(everything)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: everything[k].contiguous() for k in ks}, src / name)
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((tmp_path / "base" / name).read_bytes())
    ref = reference_logits(base, ahn_type, tensors)

    extracted = tmp_path / "extracted-base"
    assert ahn(["convert", "bytedance", "--ahn-path", str(src), "--extract-base", str(extracted),
                "--out", str(tmp_path / "out1")]) == 0
    assert json.loads((tmp_path / "out1" / "config.json").read_text())["base_model_name_or_path"] == str(extracted)
    assert torch.equal(converted_logits(tmp_path / "out1"), ref)
    assert ahn(["convert", "bytedance", "--ahn-path", str(src), "--base", base, "--out", str(tmp_path / "out2")]) == 0
    assert torch.equal(converted_logits(tmp_path / "out2"), ref)


def _official(tmp_path, ahn_type="gdn", tensors=None, **extra):
    base = save_base(tmp_path / "base", "qwen2")
    src = tmp_path / "official"
    src.mkdir(exist_ok=True)
    (src / "config.json").write_text(json.dumps(official_config(tmp_path / "base", ahn_type, **extra)))
    save_file(tensors if tensors is not None else official_ahn_tensors(base, ahn_type), src / "model.safetensors")
    return base, src


def _convert(args, capsys):
    code = ahn(["convert", "bytedance", *args])
    return code, capsys.readouterr().err


def test_ahn_only_needs_the_base(tmp_path, capsys):
    _, src = _official(tmp_path)
    code, err = _convert(["--ahn-path", str(src), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "An AHN-only checkpoint needs --base" in err


def test_merged_needs_base_or_extract(tmp_path, capsys):
    base, src = _official(tmp_path)
    tensors = official_ahn_tensors(base, "gdn")
    save_file({**tensors, "model.embed_tokens.weight": torch.zeros(300, 64)}, src / "model.safetensors")
    code, err = _convert(["--ahn-path", str(src), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "merged checkpoint" in err and "--extract-base" in err


def test_type_in_config_must_match_the_keys(tmp_path, capsys):
    base, src = _official(tmp_path, "gdn")
    save_file(official_ahn_tensors(base, "mamba2"), src / "model.safetensors")
    code, err = _convert(["--ahn-path", str(src), "--base", base, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "_ahn_implementation='GatedDeltaNet' but the tensors are 'mamba2'" in err


def test_q_proj_variant_is_refused(tmp_path, capsys):
    base, src = _official(tmp_path, use_q_proj=True)
    code, err = _convert(["--ahn-path", str(src), "--base", base, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "use_q_proj=true" in err


def test_base_of_another_shape(tmp_path, capsys):
    _, src = _official(tmp_path)
    other = save_base(tmp_path / "other", "llama")
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
    code, err = _convert(["--ahn-path", str(src), "--base", other, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "for a base with 2 layers" in err and "has 3 layers" in err


def test_not_an_ahn_checkpoint(tmp_path, capsys):
    base, src = _official(tmp_path, tensors={"model.norm.weight": torch.ones(64)})
    code, err = _convert(["--ahn-path", str(src), "--base", base, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "No AHN tensors" in err


def test_a_converted_checkpoint_recalls_with_the_training_free_score(tmp_path):
    """Recall slots on a converted official checkpoint (issue 39): it has no retention classifier, so
    ``num_recall_slots`` alone picks the training-free novelty score; the result equals our model with the same
    tensors and slots (and differs from no slots: the slots are attended); the learned score is refused."""
    base, src = _official(tmp_path, "gdn")
    assert ahn(["convert", "bytedance", "--ahn-path", str(src), "--base", base, "--out", str(tmp_path / "out")]) == 0
    slots = dict(sliding_window=W, num_sinks=S, num_recall_slots=4, recall_span=(1, 1))
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out", **slots)
    assert converted.config.recall_head is False
    ref = AhnForCausalLM.from_base(base, ahn_type="gdn", **slots)
    ref.load_ahn_state_dict(official_ahn_tensors(base, "gdn"))
    ref.config.recall_score = "novelty"
    with torch.no_grad():
        got, want = converted(IDS).logits, ref(IDS).logits
        with converted.runtime(num_recall_slots=0):
            without = converted(IDS).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got - without).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs a trained retention classifier"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "out", recall_score="learned", **slots)(IDS)
