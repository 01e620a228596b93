"""Adapter-only Hub repos: export, loading (package, remote code, AutoModel), and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from modeling_ahn import AhnForCausalLM, AhnModel
from modeling_ahn.hub import export_model
from modeling_ahn.modeling_ahn import PAYLOAD_FILES, code_hash

from .conftest import make_base, save_ahn_repo

W, S = 5, 2
IDS = torch.randint(3, 101, (2, 23), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Qwen2 base on disk and an exported AHN repo with random (non-zero) AHN weights."""
    root = tmp_path_factory.mktemp("hub")
    base_dir, model = save_ahn_repo(root, W, S)
    with torch.no_grad():
        logits = model(IDS).logits
        hidden = model.model(IDS, use_cache=False).last_hidden_state
    return dict(root=root, base=base_dir, repo=root / "repo", model=model, logits=logits, hidden=hidden)


def test_export_writes_a_complete_adapter_only_repo(exported):
    repo, model = exported["repo"], exported["model"]
    files = {p.name for p in repo.iterdir()}
    assert set(PAYLOAD_FILES) <= files
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "peft", "tokenizer.json",
            "tokenizer_config.json"} <= files
    assert "adapter_config.json" not in files  # see test_repo_is_not_taken_for_a_plain_peft_adapter
    cfg = json.loads((repo / "config.json").read_text())
    assert cfg["model_type"] == "ahn"
    assert cfg["auto_map"] == {"AutoConfig": "configuration_ahn.AhnConfig", "AutoModel": "modeling_ahn.AhnModel",
                               "AutoModelForCausalLM": "modeling_ahn.AhnForCausalLM"}
    assert cfg["base_model_name_or_path"] == exported["base"]
    assert (cfg["sliding_window"], cfg["num_sinks"], cfg["ahn_type"]) == (W, S, "gdn")
    assert cfg["ahn_version"] and cfg["ahn_code_hash"] == code_hash()
    assert "text_config" not in cfg and cfg["base_config"]["model_type"] == "qwen2"
    # only AHN tensors, official keys, bit-identical
    weights = load_file(repo / "model.safetensors")
    assert set(weights) == set(model.ahn_state_dict())
    assert all(torch.equal(weights[k], v) for k, v in model.ahn_state_dict().items())
    peft = load_file(repo / "peft" / "adapter_model.safetensors")
    assert len(peft) == len(weights) and all(".self_attn.ahn.fn." in k for k in peft)
    adapter_cfg = json.loads((repo / "peft" / "adapter_config.json").read_text())
    assert adapter_cfg["peft_type"] == "AHN" and adapter_cfg["sliding_window"] == W
    for name in PAYLOAD_FILES:  # the payload is the package's code, verbatim
        assert (repo / name).read_bytes() == (Path(__file__).parents[1] / "modeling_ahn" / name).read_bytes()


def test_repo_is_not_taken_for_a_plain_peft_adapter(exported):
    """transformers' Auto classes treat a Hub repo with a root adapter_config.json as "base + PEFT adapter" and
    load the base model class instead of ours; the PEFT files therefore live in peft/."""
    from transformers.utils.peft_utils import find_adapter_config_file

    assert find_adapter_config_file(str(exported["repo"])) is None
    assert find_adapter_config_file(str(exported["repo"]), subfolder="peft") is not None


def test_model_card(exported):
    card = (exported["repo"] / "README.md").read_text()
    head = card.split("---")[1]
    for line in ("library_name: transformers", "pipeline_tag: text-generation", "license: apache-2.0",
                 f"base_model: {exported['base']}", "- ahn", "- long-context", "- gateddeltanet"):
        assert line in head, line
    n = exported["model"].num_ahn_parameters()
    assert f"| AHN parameters | {n:,} (" in card and "trust_remote_code=True" in card
    assert "| inference window / sinks | 5 / 2 (override at load time) |" in card
    assert "$" not in card.replace("$base", "")  # every placeholder was filled


def test_eval_table_in_card(tmp_path):
    model = AhnForCausalLM.from_base(make_base("llama"), sliding_window=W, num_sinks=S)
    export_model(model, tmp_path, eval_results=[{"task": "ppl@8k", "swa": 12.5, "ahn": 11.25}])
    card = (tmp_path / "README.md").read_text()
    assert "## Evaluation" in card and "| task | swa | ahn |" in card and "| ppl@8k | 12.5 | 11.25 |" in card


def test_save_pretrained_writes_the_same_repo_with_a_short_card(exported, tmp_path):
    """The payload's save_pretrained writes every file the export does; only the card is the short one (the full
    card is tooling: it is rendered by modeling_ahn.hub, which the remote code does not ship)."""
    exported["model"].save_pretrained(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted(
        p.relative_to(exported["repo"]) for p in exported["repo"].rglob("*"))
    for p in exported["repo"].rglob("*"):
        mine = tmp_path / p.relative_to(exported["repo"])
        if p.suffix == ".safetensors":  # (the header's metadata order is not fixed)
            theirs, ours = load_file(p), load_file(mine)
            assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
        elif p.is_file() and p.name != "README.md":
            assert mine.read_bytes() == p.read_bytes(), p.name
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("# AHN-gdn adapter for ") and "AHN parameters; window 5, 2 sinks." in card


def test_reload_with_the_package_is_identical(exported):
    model = AutoModelForCausalLM.from_pretrained(exported["repo"])
    assert type(model) is AhnForCausalLM
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, exported["logits"])
    tok = AutoTokenizer.from_pretrained(exported["repo"])
    base_tok = AutoTokenizer.from_pretrained(exported["base"])
    text = "the hippocampus folds tokens"
    assert tok(text)["input_ids"] == base_tok(text)["input_ids"] and len(tok(text)["input_ids"]) > 1
    assert tok.decode(tok(text)["input_ids"]) == text
    assert model.generation_config.eos_token_id == 2


def test_automodel_gives_the_decoder_without_head(exported):
    model = AutoModel.from_pretrained(exported["repo"])
    assert type(model) is AhnModel and not hasattr(model, "lm_head")
    with torch.no_grad():
        hidden = model(IDS, use_cache=False).last_hidden_state
        model.config.prefill_chunk_size = 4
        chunked = model(IDS).last_hidden_state
    assert torch.equal(hidden, exported["hidden"])
    assert (chunked - hidden).abs().max() < 1e-4


def test_load_time_overrides_dtype_and_base_model(exported):
    model = AutoModelForCausalLM.from_pretrained(exported["repo"], sliding_window=9, num_sinks=0, dtype=torch.bfloat16)
    assert (model.config.sliding_window, model.config.num_sinks) == (9, 0)
    assert {p.dtype for p in model.ahn_parameters()} == {torch.bfloat16}
    base = AutoModelForCausalLM.from_pretrained(exported["base"])
    reused = AhnForCausalLM.from_pretrained(exported["repo"], base_model=base)
    assert reused.base_causal_lm is base
    with torch.no_grad():
        assert torch.equal(reused(IDS).logits, exported["logits"])


REMOTE_SCRIPT = r"""
import sys
class _Block:  # make the installed package invisible: only the repo's remote code may run
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_ahn" or name.startswith("modeling_ahn."):
            raise ImportError("modeling_ahn is blocked in this process")
sys.meta_path.insert(0, _Block())
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM
repo, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
ids = load_file(out)["ids"]
with torch.no_grad():
    logits = model(ids).logits
    gen = model.generate(ids[:1, :9], max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    hidden = AutoModel.from_pretrained(repo, trust_remote_code=True)(ids, use_cache=False).last_hidden_state
bf16 = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True, dtype=torch.bfloat16)
assert {p.dtype for p in bf16.ahn_parameters()} == {torch.bfloat16}
assert "modeling_ahn" not in sys.modules
save_file({"logits": logits, "gen": gen, "hidden": hidden}, out)
print("REMOTE_OK", type(model).__module__)
"""


def test_remote_code_load_without_the_package(exported, tmp_path):
    io = tmp_path / "io.safetensors"
    save_file({"ids": IDS}, io)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(exported["repo"]), str(io)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REMOTE_OK transformers_modules." in proc.stdout
    got = load_file(io)
    assert torch.equal(got["logits"], exported["logits"])
    assert torch.equal(got["hidden"], exported["hidden"])
    with torch.no_grad():
        ref = exported["model"].generate(IDS[:1, :9], max_new_tokens=6, do_sample=False, eos_token_id=None,
                                         pad_token_id=0)
    assert torch.equal(got["gen"], ref)


def test_code_hash_mismatch_warns(exported, tmp_path, caplog):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(exported["repo"], repo)
    cfg = json.loads((repo / "config.json").read_text())
    cfg["ahn_code_hash"] = "0000000000000000"
    (repo / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level("WARNING"):
        AutoModelForCausalLM.from_pretrained(repo)
    assert "code hash 0000000000000000" in caplog.text


# ---------------------------------------------------------------- bad input: clear errors, nothing half-loaded


def _copy_repo(exported, tmp_path):
    import shutil

    return Path(shutil.copytree(exported["repo"], tmp_path / "repo"))


def test_missing_weights(exported, tmp_path):
    repo = _copy_repo(exported, tmp_path)
    (repo / "model.safetensors").unlink()
    with pytest.raises(OSError, match="has no model.safetensors"):
        AutoModelForCausalLM.from_pretrained(repo)


def test_corrupt_weights(exported, tmp_path):
    repo = _copy_repo(exported, tmp_path)
    data = (repo / "model.safetensors").read_bytes()
    (repo / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        AutoModelForCausalLM.from_pretrained(repo)


def test_pickle_adapter_is_refused(exported, tmp_path):
    repo = _copy_repo(exported, tmp_path)
    (repo / "model.safetensors").unlink()
    torch.save(exported["model"].ahn_state_dict(), repo / "pytorch_model.bin")
    with pytest.raises(ValueError, match="as a pickle.*can execute arbitrary code"):
        AutoModelForCausalLM.from_pretrained(repo)


def test_missing_and_unexpected_keys_are_listed(exported, tmp_path):
    repo = _copy_repo(exported, tmp_path)
    weights = load_file(repo / "model.safetensors")
    weights.pop("model.layers.1.ahn.fn.a_proj.weight")
    weights["model.layers.1.ahn.fn.bogus"] = torch.zeros(3)
    save_file(weights, repo / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.ahn.fn.a_proj.weight'\].*unexpected "
                                         r"\['model.layers.1.ahn.fn.bogus'\]"):
        AutoModelForCausalLM.from_pretrained(repo)


def test_adapter_for_another_base_names_both_shapes(exported):
    cfg = AutoConfig.from_pretrained(exported["base"])
    cfg.num_hidden_layers, cfg.layer_types = 3, ["full_attention"] * 3
    bigger = AutoModelForCausalLM.from_config(cfg)
    before = {n for n, _ in bigger.named_modules()}
    with pytest.raises(ValueError, match="made for a base with 2 layers.*but the base model has 3 layers"):
        AhnForCausalLM.from_pretrained(exported["repo"], base_model=bigger)
    assert {n for n, _ in bigger.named_modules()} == before  # the given base was not touched
    assert bigger.config._attn_implementation != "ahn"


def test_unreachable_base(exported, tmp_path):
    repo = _copy_repo(exported, tmp_path)
    cfg = json.loads((repo / "config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (repo / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OSError, match="(?s)Could not load the base model .*no-such-base.* pass base_model="):
        AutoModelForCausalLM.from_pretrained(repo)


def test_device_map_reaches_the_base(exported):
    model = AutoModelForCausalLM.from_pretrained(exported["repo"], device_map="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, exported["logits"])


def test_remote_code_that_differs_from_the_installed_package_warns(exported, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(exported["repo"], repo)
    with open(repo / "memory_ahn.py", "a") as f:
        f.write("\n# locally edited\n")
    script = ("import sys, logging; logging.basicConfig(level=logging.WARNING)\n"
              "from transformers import AutoModelForCausalLM\n"
              "AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script, str(repo)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "differs from the installed modeling_ahn package" in proc.stderr
    assert "exported by modeling_ahn" in proc.stderr  # and from the hash recorded at export


def test_a_local_base_without_a_card_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    """A local base directory without README.md has licence "other" at once: before, the name was tried as a Hub id
    (offline: 23 s of retries per export)."""
    import huggingface_hub

    from modeling_ahn.hub.card import base_license

    asked = []
    monkeypatch.setattr(huggingface_hub.ModelCard, "load", lambda name, *a, **k: asked.append(str(name)))
    (tmp_path / "base").mkdir()
    monkeypatch.chdir(tmp_path)
    assert base_license("base") == "other"
    assert base_license(str(tmp_path / "base")) == "other"
    assert asked == []  # (base_license turns any error into "other": the calls are counted instead)
