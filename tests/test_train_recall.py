"""ahn train-recall: planted facts, the per-layer probes, the saved adapter with its retention classifier."""

from __future__ import annotations

import json
import random

import pytest
import torch

from modeling_ahn import AhnForCausalLM
from modeling_ahn.training import recall
from modeling_ahn.training.recall import RecallTrainConfig, fact_text, fit_probe, planted_sequence, train_recall

from .conftest import make_ahn, make_tokenizer

DOC = ("The hippocampus folds tokens that leave the window into memory. " * 40 + "\n") * 8


def test_fact_text_marks_its_value_fields():
    rng = random.Random(0)
    for _ in range(50):
        text, spans = fact_text(rng)
        assert spans and all(0 <= a < b <= len(text) for a, b in spans)
        for a, b in spans:  # a value is a whole field, not a piece of the template
            assert text[a:b].strip() == text[a:b] and text[a:b] not in ("The", "is")


def test_planted_sequence_labels_exactly_the_value_tokens():
    tok = make_tokenizer()
    rng = random.Random(1)
    ids, labels = planted_sequence(tok, DOC, 300, 2, rng)
    assert ids.shape == labels.shape == (300,)
    assert 0 < int(labels.sum()) < 300
    values = [*recall.NAMES, *recall.PLACES, *recall.THINGS, *recall.FOODS, *recall.ACTIVITIES, *recall.WORDS]
    for group in recall.fact_groups(labels):  # each labelled run is (a piece of) a value field, nothing else
        piece = tok.decode(ids[group]).strip()
        assert piece and (piece.isdigit() or any(piece in v or v in piece for v in values)), piece
    assert "hippocampus" not in tok.decode(ids[labels.bool()])  # no document text is labelled
    rng2 = random.Random(1)
    assert planted_sequence(tok, DOC, 300, 2, rng2)[1].tolist() == labels.tolist()  # deterministic per seed
    assert planted_sequence(tok, DOC[:100], 300, 2, random.Random(1)) is None  # too short: refused, not padded


def test_fit_probe_separates_and_folds_the_standardisation_back():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 8, generator=g) * torch.tensor([1, 10, 0.1, 1, 1, 1, 1, 1]) + 3
    y = (X[:, 1] - 10 * X[:, 2] > 3).long()
    w, b = fit_probe(X, y, l2=1e-4)
    acc = ((X @ w + b > 0).long() == y).float().mean()
    assert acc > 0.97


def test_train_recall_saves_an_adapter_whose_slots_run(tmp_path):
    model = make_ahn("qwen2", "gdn", 16, 2)
    tok = make_tokenizer()
    cfg = RecallTrainConfig(out=str(tmp_path / "out"), sequences=4, length=120, facts=2, seed=0)
    report = train_recall(cfg, model=model, tokenizer=tok, docs={"a": DOC, "b": DOC.upper()}, progress=False)
    assert report["train_sequences"] == 4 and report["positives_train"] > 0
    assert set(report["heldout_per_layer"]) == set(model.ahn_modules())
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["recall_head"] is True and saved["num_recall_slots"] == 0
    loaded = AhnForCausalLM.from_pretrained(tmp_path / "out", num_recall_slots=4, recall_span=[3, 1])
    for i, module in loaded.ahn_modules().items():
        assert torch.equal(module.recall.weight, model.ahn_modules()[i].recall.weight)
        assert module.recall.weight.abs().sum() > 0  # trained, not the zero initialisation
    ids = torch.randint(3, 100, (1, 60))
    with torch.no_grad():
        out = loaded.generate(ids, max_new_tokens=4, do_sample=False)
        with loaded.runtime(num_recall_slots=0):
            plain = loaded(ids).logits
        slotted = loaded(ids).logits
    assert out.shape == (1, 64)
    assert (plain - slotted).abs().max() > 0  # the slots are in use


def test_slots_on_an_adapter_without_a_classifier_name_the_fix(tmp_path):
    """Without a classifier the learned score names the fix; slots alone take the training-free novelty score."""
    model = make_ahn("qwen2", "gdn", 16, 2)
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="ahn train-recall"):
        AhnForCausalLM.from_pretrained(tmp_path / "plain", num_recall_slots=8, recall_score="learned")
    slotted = AhnForCausalLM.from_pretrained(tmp_path / "plain", num_recall_slots=8)
    assert slotted.config.num_recall_slots == 8 and slotted.config.recall_score is None
    assert slotted.get_submodule("model.layers.0.ahn").recall_head is None


SLOTTED_REMOTE = r"""
import sys
class _Block:  # only the repo's remote code may run
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_ahn" or name.startswith("modeling_ahn."):
            raise ImportError("blocked")
sys.meta_path.insert(0, _Block())
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
repo, io = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True, num_recall_slots=4, recall_span=[3, 1])
assert type(model).__module__.startswith("transformers_modules.")
with torch.no_grad():
    save_file({"logits": model(load_file(io)["ids"]).logits}, io)
"""


def test_an_adapter_with_slots_runs_by_remote_code_alone(tmp_path):
    """The exported repo carries recall_slots.py and the classifier: trust_remote_code with num_recall_slots at load
    time gives the package's logits, with the package blocked."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    from modeling_ahn.hub import export_model

    from .conftest import save_base

    base_dir = save_base(tmp_path / "base")
    model = AhnForCausalLM.from_base(base_dir, sliding_window=16, num_sinks=2)
    g = torch.Generator().manual_seed(0)
    model.add_recall_head({i: (torch.randn(model.config.hidden_size, generator=g), torch.zeros(()))
                           for i in model.ahn_modules()})
    export_model(model, tmp_path / "repo")
    assert "`recall_head`" in (tmp_path / "repo" / "README.md").read_text()  # the card names it beyond the format
    peft = load_file(tmp_path / "repo" / "peft" / "adapter_model.safetensors")
    assert peft and not any(".recall." in k for k in peft)  # the PEFT files carry the memory only
    ids = torch.randint(3, 100, (1, 70))
    with torch.no_grad():
        model.config.recall_span = [3, 1]
        with model.runtime(num_recall_slots=4):
            ref = model(ids).logits
        plain = model(ids).logits
    assert (ref - plain).abs().max() > 0
    io = tmp_path / "io.safetensors"
    save_file({"ids": ids}, io)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", SLOTTED_REMOTE, str(tmp_path / "repo"), str(io)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.equal(load_file(io)["logits"], ref)
