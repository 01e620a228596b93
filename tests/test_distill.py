"""Self-distillation: learning, exact resume, DDP = accumulation, chunked KL, data and bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2Config

from modeling_ahn import AhnForCausalLM
from modeling_ahn.training.distill import (
    PAPER_WINDOWS,
    DistillConfig,
    chunked_kl,
    distill,
    sample_window,
)

from .conftest import make_tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
WORDS = "the hippocampus folds tokens that leave window into memory".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny Qwen2 base whose predictions depend on distant tokens (init std 0.1), and 40 text documents."""
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(root / "base")
    make_tokenizer().save_pretrained(root / "base")
    rng = random.Random(0)
    (root / "data").mkdir()
    for i in range(40):
        (root / "data" / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(300)))
    return root


def distill_cfg(corpus, out, **kw):
    args = dict(base=str(corpus / "base"), data=[str(corpus / "data")], output_dir=str(out), windows=[16], sinks=[4],
                max_length=128, max_steps=40, lr=1e-2, eval_every=20, save_every=20, eval_sequences=4,
                eval_window=16, eval_sinks=4)
    args.update(kw)
    return DistillConfig(**args)


def train_log(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def test_forty_steps_reduce_heldout_kl(corpus, tmp_path):
    adapter = distill(distill_cfg(corpus, tmp_path / "run"), progress=False)
    evals = [r["eval"] for r in train_log(tmp_path / "run") if "eval" in r]
    first, last = evals[0], evals[-1]
    assert first["kl_ahn"] == pytest.approx(first["kl_swa"], abs=1e-7)  # a fresh adapter is sinks + SWA
    assert first["kl_swa"] > 0.05  # the distant context matters to the teacher
    assert last["kl_ahn"] <= 0.7 * first["kl_ahn"], (first["kl_ahn"], last["kl_ahn"])  # >= 30 % less
    assert last["ppl_ahn"] < last["ppl_swa"]
    # outputs: JSON log with the progress fields, a loss-curve PNG, a Hub-ready adapter repo with the recipe
    train = [r for r in train_log(tmp_path / "run") if "loss" in r]
    assert len(train) == 40 and all(r["tokens_per_s"] > 0 and "kl" in r and "lr" in r for r in train)
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    card = (adapter / "README.md").read_text()
    assert "## Training" in card and "## Evaluation" in card and "AHN (step 40)" in card
    model = AutoModelForCausalLM.from_pretrained(adapter, trust_remote_code=True)
    weights = load_file(tmp_path / "run" / "checkpoints" / "step-0000040" / "ahn.safetensors")
    assert all(torch.equal(model.ahn_state_dict()[k].float(), v) for k, v in weights.items())
    assert model.config.sliding_window == 16 and model.config.num_sinks == 4


def same_adapter(a, b, tol=1e-6):
    wa, wb = load_file(Path(a) / "model.safetensors"), load_file(Path(b) / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= tol


def test_killed_run_resumes_to_the_same_adapter(corpus, tmp_path):
    """Tolerance: 1e-6 on every AHN weight (the CPU run is deterministic, so in practice they are equal)."""
    kw = dict(windows=None, sinks=None, max_steps=60, save_every=4, eval_every=1000, lr=3e-3)
    reference = distill(distill_cfg(corpus, tmp_path / "ref", **kw), progress=False)
    cmd = [sys.executable, "-m", "modeling_ahn.cli", "distill", "--base", str(corpus / "base"), "--data",
           str(corpus / "data"), "--out", str(tmp_path / "run"), "--max-length", "128", "--max-steps", "60",
           "--save-every", "4", "--eval-every", "1000", "--lr", "3e-3", "--eval-sequences", "4", "--eval-window",
           "16", "--eval-sinks", "4", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = tmp_path / "run" / "checkpoints" / "step-0000004"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "run" / "adapter").exists()
    with pytest.raises(ValueError, match="already holds a run: pass --resume"):
        distill(distill_cfg(corpus, tmp_path / "run", **kw), progress=False)
    resumed = distill(distill_cfg(corpus, tmp_path / "run", **kw), resume=True, progress=False)
    assert same_adapter(reference, resumed)
    steps = [r["step"] for r in train_log(tmp_path / "run") if "loss" in r]
    assert steps == list(range(1, 61))  # rows logged after the checkpoint by the killed run were dropped
    assert [r["loss"] for r in train_log(tmp_path / "run") if "loss" in r] == pytest.approx(
        [r["loss"] for r in train_log(tmp_path / "ref") if "loss" in r], rel=1e-5)


def launch_distill(corpus, out, config, *extra, port="29627", popen=False):
    """``accelerate launch --config_file config ahn distill --cpu ...`` on the tiny corpus (one thread per process):
    the finished process, or with ``popen`` the running one in its own session (to be killed as a group)."""
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    ahn = shutil.which("ahn") or str(Path(sys.executable).parent / "ahn")
    cmd = [accelerate, "launch", "--config_file", str(config), "--main_process_port", port, ahn, "distill", "--cpu",
           "--base", str(corpus / "base"), "--data", str(corpus / "data"), "--out", str(out), "--max-length", "128",
           "--eval-sequences", "4", "--eval-window", "16", "--eval-sinks", "4", "--no-progress", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_two_processes_equal_one_process_with_accumulation(corpus, tmp_path):
    """2 DDP processes (gloo, CPU) x 1 sequence = 1 process x 2 accumulated sequences.
    Tolerance: 1e-5 relative on the per-step losses, 1e-5 absolute on the final AHN weights."""
    kw = dict(windows=None, sinks=None, max_steps=6, save_every=100, eval_every=1000, lr=3e-3)
    single = distill(distill_cfg(corpus, tmp_path / "single", grad_accum=2, **kw), progress=False)
    proc = launch_distill(corpus, tmp_path / "ddp", EXAMPLES / "ddp_cpu.yaml", "--max-steps", "6", "--save-every",
                          "100", "--eval-every", "1000", "--lr", "3e-3", port="29617")  # the shipped example
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = lambda out: [r["loss"] for r in train_log(out) if "loss" in r]  # noqa: E731
    assert len(losses(tmp_path / "ddp")) == 6
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=1e-5)
    assert same_adapter(single, tmp_path / "ddp" / "adapter", tol=1e-5)


def test_chunked_kl_equals_unchunked():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    ht = torch.randn(37, 16)
    hs = torch.randn(37, 16, requires_grad=True)
    log_t, log_s = head(ht).log_softmax(-1), head(hs).log_softmax(-1)
    direct = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    direct.backward()
    g_direct = hs.grad.clone()
    for chunk in (1, 7, 37, 100):
        hs.grad = None
        kl = chunked_kl(head, ht, hs, chunk)
        kl.backward()
        assert kl.item() == pytest.approx(direct.item(), rel=1e-6)
        assert torch.allclose(hs.grad, g_direct, atol=1e-7)


def test_window_sampling_follows_the_paper():
    rng = random.Random(0)
    for length in (100, 2048, 24_000):
        for _ in range(50):
            w, s = sample_window(length, rng=rng)
            assert w in PAPER_WINDOWS and length / 8 < w < length and s <= w // 2
    assert {sample_window(2048, rng=rng)[0] for _ in range(200)} == {512, 1024}
    assert sample_window(50, [8, 64], [0, 2, 99], rng=rng)[0] == 8


# ---------------------------------------------------------------------------------------------- data and bad input


def test_jsonl_text_messages_and_packing(corpus, tmp_path):
    from modeling_ahn.training.data import iter_documents, tokenize_documents

    tok = make_tokenizer()
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "the window"}) + "\n" + json.dumps({"text": "memory"}) + "\n")
    assert list(iter_documents([str(tmp_path / "a.jsonl")], tok)) == ["the window", "memory"]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="no chat template"):
        list(iter_documents([str(chat)], tok))
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    assert list(iter_documents([str(chat)], tok)) == ["<user>hi"]
    texts = [" ".join(["memory"] * 10)] * 5
    packed = tokenize_documents(texts, tok, max_length=8, min_length=4, pack=True)
    assert all(len(s) == 8 for s in packed.sequences[:-1]) and packed.tokens == sum(map(len, packed.sequences))


def test_split_documents_keeps_every_chunk_of_each_document_apart():
    from modeling_ahn.training.data import tokenize_documents

    tok = make_tokenizer()
    docs = ["the window " * 9, "memory", "the hippocampus folds tokens " * 6]
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    assert len(ids[0]) > 16 and len(ids[1]) < 5 and len(ids[2]) > 16
    split = tokenize_documents(docs, tok, max_length=8, min_length=5, split=True)
    expected = [c for d in ids if len(d) >= 5 for c in (d[i : i + 8] for i in range(0, len(d), 8)) if len(c) >= 5]
    assert split.sequences == expected and split.dropped_short == 1
    assert sum(map(len, split.sequences)) > len(ids[0]) + 8  # more than the first chunk of each document
    first = tokenize_documents(docs, tok, max_length=8, min_length=5)
    assert first.sequences == [ids[0][:8], ids[2][:8]] and set(map(tuple, first.sequences)) < set(map(tuple, expected))
    n0 = sum(len(ids[0][i : i + 8]) >= 5 for i in range(0, len(ids[0]), 8))
    assert split.source_document == [0] * n0 + [2] * (len(expected) - n0) and first.source_document == [0, 2]
    with pytest.raises(ValueError, match="exclusive"):
        tokenize_documents(docs, tok, max_length=8, min_length=5, pack=True, split=True)


def test_held_out_split_keeps_a_split_documents_other_chunks_out_of_training():
    from modeling_ahn.training.data import tokenize_documents
    from modeling_ahn.training.distill import held_out_split

    tok = make_tokenizer()
    docs = [f"{w} " * 40 for w in ("the", "window", "memory", "hippocampus", "folds", "tokens")]
    truncated = tokenize_documents(docs, tok, max_length=8, min_length=5)
    train, held = held_out_split(truncated, 2, 0.5, seed=0)
    assert len(held) == 2 and len(train) == 4 and not set(map(tuple, train)) & set(map(tuple, held))
    split = tokenize_documents(docs, tok, max_length=8, min_length=5, split=True)
    assert len(split.sequences) > 2 * len(docs)
    train, held = held_out_split(split, 2, 0.5, seed=0)
    doc_of = {tuple(s): d for s, d in zip(split.sequences, split.source_document)}
    held_docs = {doc_of[tuple(s)] for s in held}
    assert len(held) == 2 and train and not held_docs & {doc_of[tuple(s)] for s in train}
    assert len(train) == sum(d not in held_docs for d in split.source_document)  # every other chunk is kept


def test_too_short_data_says_how_many_were_dropped(corpus, tmp_path):
    (tmp_path / "short").mkdir()
    for i in range(3):
        (tmp_path / "short" / f"{i}.txt").write_text("the window")
    with pytest.raises(ValueError, match="3 documents read, 3 dropped for being shorter than 17 tokens"):
        distill(distill_cfg(corpus, tmp_path / "run", data=[str(tmp_path / "short")]), progress=False)


def test_empty_data(corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no .txt/.md/.jsonl files"):
        distill(distill_cfg(corpus, tmp_path / "run", data=[str(tmp_path / "empty")]), progress=False)


def test_bf16_on_a_cpu_without_native_bf16_warns(corpus, tmp_path, monkeypatch):
    import warnings

    from modeling_ahn.benchmarking import devices

    (tmp_path / "empty").mkdir()
    cfg = distill_cfg(corpus, tmp_path / "run", data=[str(tmp_path / "empty")], bf16=True, cpu=True)
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulates bf16"), pytest.raises(ValueError, match="contains no"):
        distill(cfg, progress=False)
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    with warnings.catch_warnings(record=True) as seen, pytest.raises(ValueError, match="contains no"):
        warnings.simplefilter("always")
        distill(cfg, progress=False)
    assert not [w for w in seen if "emulates bf16" in str(w.message)]


def test_messages_without_chat_template(corpus, tmp_path):
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match="tokenizer has no chat template"):
        distill(distill_cfg(corpus, tmp_path / "run", data=[str(tmp_path / "chat.jsonl")]), progress=False)


def test_bad_settings(corpus, tmp_path):
    with pytest.raises(ValueError, match="loss must be"):
        distill(distill_cfg(corpus, tmp_path / "r", loss="mse"), progress=False)
    with pytest.raises(ValueError, match="windows must be a non-empty list"):
        distill(distill_cfg(corpus, tmp_path / "r", windows=[]), progress=False)
    with pytest.raises(ValueError, match="pack and split_documents are exclusive"):
        distill(distill_cfg(corpus, tmp_path / "r", pack=True, split_documents=True), progress=False)


def test_resume_with_other_settings_is_refused(corpus, tmp_path):
    distill(distill_cfg(corpus, tmp_path / "run", max_steps=2, eval_every=100), progress=False)
    with pytest.raises(ValueError, match=r"differ from the saved run: \['lr'\]"):
        distill(distill_cfg(corpus, tmp_path / "run", max_steps=4, lr=5e-3), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"differ from the saved run: \['split_documents'\]"):
        distill(distill_cfg(corpus, tmp_path / "run", max_steps=4, split_documents=True), resume=True, progress=False)
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    del saved["split_documents"]  # a run saved before the setting existed resumes with its default
    (tmp_path / "run" / "run_config.json").write_text(json.dumps(saved))
    more = distill(distill_cfg(corpus, tmp_path / "run", max_steps=4, eval_every=100), resume=True, progress=False)
    assert [r["step"] for r in train_log(tmp_path / "run") if "loss" in r] == [1, 2, 3, 4]
    assert isinstance(AhnForCausalLM.from_pretrained(more), AhnForCausalLM)


def test_saved_datasets_dataset_and_checkpoint_contents(corpus, tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [(corpus / "data" / f"doc{i:02d}.txt").read_text() for i in range(12)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))
    distill(distill_cfg(corpus, tmp_path / "run", data=[str(tmp_path / "ds")], max_steps=2, save_every=2,
                        eval_every=100),
            progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000002"
    assert {p.name for p in ckpt.iterdir()} == {"ahn.safetensors", "state.json"} | {
        f"{n}{ext}" for n in ("optimizer", "scheduler", "rng") for ext in (".json", "-00000.safetensors")}  # no pickle
    assert json.loads((ckpt / "state.json").read_text()) == {"step": 2, "samples": 2}
    (ckpt / "optimizer.pt").write_bytes(b"")  # a checkpoint of the pickling version is refused, with the reason
    with pytest.raises(ValueError, match="pickle"):
        distill(distill_cfg(corpus, tmp_path / "run", data=[str(tmp_path / "ds")], max_steps=3, save_every=2,
                     eval_every=100), resume=True, progress=False)


def test_init_adapter_continues_from_an_exported_repo(corpus, tmp_path):
    first = distill(distill_cfg(corpus, tmp_path / "a", max_steps=10, eval_every=10, save_every=10), progress=False)
    distill(distill_cfg(corpus, tmp_path / "b", max_steps=1, eval_every=1, init_adapter=str(first)), progress=False)
    evals_a = [r["eval"] for r in train_log(tmp_path / "a") if "eval" in r]
    evals_b = [r["eval"] for r in train_log(tmp_path / "b") if "eval" in r]
    assert evals_a[-1]["kl_ahn"] < evals_a[0]["kl_ahn"]
    # the continued run starts where the first one ended, not from a fresh (= sinks+SWA) adapter
    assert evals_b[0]["kl_ahn"] == pytest.approx(evals_a[-1]["kl_ahn"], rel=1e-5)
    assert json.loads((tmp_path / "b" / "run_config.json").read_text())["init_adapter"] == str(first)
    with pytest.raises(ValueError, match="holds an AHN of type 'gdn', but this run trains 'mamba2'"):
        distill(distill_cfg(corpus, tmp_path / "c", ahn_type="mamba2", init_adapter=str(first)), progress=False)
    with pytest.raises(ValueError, match="is not an exported AHN repo"):
        distill(distill_cfg(corpus, tmp_path / "d", init_adapter=str(tmp_path)), progress=False)


def test_memory_span_sets_the_decays_a_run_starts_from(corpus, tmp_path):
    """``memory_span`` gives each layer's heads the requested half-lives (as the decay gate computes them),
    rotated per layer, before the first step; the rest of the initialisation is the release's."""
    import math

    from modeling_ahn.training.distill import init_memory_span

    torch.manual_seed(0)
    model = AhnForCausalLM.from_base(str(corpus / "base"), ahn_type="gdn", sliding_window=16, num_sinks=4)
    torch.manual_seed(0)
    paper = AhnForCausalLM.from_base(str(corpus / "base"), ahn_type="gdn", sliding_window=16, num_sinks=4)
    init_memory_span(model, 16, 4096)
    heads = model.config.base_config.num_attention_heads
    expected = torch.logspace(math.log10(16), math.log10(4096), heads, dtype=torch.float64)
    for i, module in sorted(model.ahn_modules().items()):
        fn = module.fn
        with torch.no_grad():
            fn.a_proj.weight.zero_()  # half-lives are defined at a_proj(x) = 0
            log_decay = fn.write_gates(torch.randn(1, 3, model.config.base_config.hidden_size))[0, :, 1, :]  # [T, H]
        half_life = (math.log(2) / -log_decay.double()).mean(0)
        torch.testing.assert_close(half_life, expected.roll(i % heads), rtol=1e-4, atol=0)
        other = dict(paper.ahn_modules()[i].fn.named_parameters())
        for name, p in fn.named_parameters():
            if name not in ("A_log", "dt_bias", "a_proj.weight"):
                torch.testing.assert_close(p, other[name], rtol=0, atol=0)
    assert {len(set(m.fn.dt_bias.tolist())) for m in model.ahn_modules().values()} == {heads}

    # a run's first checkpoint starts from these decays; the saved config records the span
    distill(distill_cfg(corpus, tmp_path / "run", max_steps=1, eval_every=100, save_every=1, lr=1e-9,
                 memory_span=[16, 4096]), progress=False)
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["memory_span"] == [16, 4096]
    saved = load_file(tmp_path / "run" / "checkpoints" / "step-0000001" / "ahn.safetensors")
    for i, module in sorted(model.ahn_modules().items()):
        key = next(k for k in saved if k.endswith(f"layers.{i}.ahn.fn.dt_bias"))
        torch.testing.assert_close(saved[key], module.fn.dt_bias, rtol=0, atol=1e-6)


def test_memory_span_bad_settings(corpus, tmp_path):
    for span, match in (([0, 8], "1 <= lo <= hi"), ([64, 16], "1 <= lo <= hi"), ([16], "two half-lives")):
        with pytest.raises(ValueError, match=match):
            distill(distill_cfg(corpus, tmp_path / "r", memory_span=span), progress=False)
    with pytest.raises(ValueError, match="'dn' has no decay"):
        distill(distill_cfg(corpus, tmp_path / "r", ahn_type="dn", memory_span=[16, 64]), progress=False)
    with pytest.raises(ValueError, match="'mamba2' has its own dt gates"):
        distill(distill_cfg(corpus, tmp_path / "r", ahn_type="mamba2", memory_span=[16, 64]), progress=False)
    with pytest.raises(ValueError, match="cannot be combined with init_adapter"):
        distill(distill_cfg(corpus, tmp_path / "r", memory_span=[16, 64], init_adapter=str(tmp_path)), progress=False)


def test_layer_local_objective_trains_and_lowers_heldout_kl(corpus, tmp_path):
    """``--objective layer-local`` (a tiny smoke run): the per-layer loss starts at 1 (a fresh AHN leaves all of
    what window + sinks miss) and falls; the held-out KL to the teacher falls below sinks+SWA's; q_proj is trained
    and exported. (The tiny random base's far context is mostly noise: 40 steps remove a few per cent of it.)"""
    adapter = distill(distill_cfg(corpus, tmp_path / "ll", objective="layer-local", use_q_proj=True, max_steps=40,
                           lr=1e-2, eval_every=40), progress=False)
    losses = [r["loss"] for r in train_log(tmp_path / "ll") if "loss" in r]
    assert losses[0] == pytest.approx(1.0, abs=1e-5) and sum(losses[-10:]) / 10 < 0.985
    evals = [r["eval"] for r in train_log(tmp_path / "ll") if "eval" in r]
    assert evals[0]["kl_ahn"] == evals[0]["kl_swa"] and evals[-1]["kl_ahn"] < 0.99 * evals[-1]["kl_swa"]
    weights = load_file(adapter / "model.safetensors")
    assert any(k.endswith(".ahn.fn.q_proj.weight") for k in weights)
    assert json.loads((adapter / "config.json").read_text())["use_q_proj"] is True
    assert "| objective | layer-local |" in (adapter / "README.md").read_text()


def test_a_time_budget_stops_at_a_checkpoint_and_resumes_to_the_same_adapter(corpus, tmp_path):
    kw = dict(windows=None, sinks=None, max_steps=24, save_every=1000, eval_every=1000, lr=3e-3)
    reference = distill(distill_cfg(corpus, tmp_path / "ref", **kw), progress=False)
    stopped = distill(distill_cfg(corpus, tmp_path / "run", max_minutes=1e-6, **kw), progress=False)
    assert stopped.name == "checkpoints" and not (tmp_path / "run" / "adapter").exists()
    assert [r["step"] for r in train_log(tmp_path / "run") if "loss" in r] == [1]  # stopped after its first step
    while not (tmp_path / "run" / "adapter").exists():  # bounded runs, one step each, until done
        distill(distill_cfg(corpus, tmp_path / "run", max_minutes=1e-6, **kw), resume=True, progress=False)
    assert same_adapter(reference, tmp_path / "run" / "adapter")
    with pytest.raises(ValueError, match="max_minutes"):
        distill(distill_cfg(corpus, tmp_path / "bad", max_minutes=0), progress=False)


def test_training_and_evaluation_leave_the_live_config_unchanged(corpus, tmp_path, monkeypatch):
    """Each batch's sampled window and the evaluation's modes are set by ``model.runtime(...)`` for their duration
    only: between steps and after the run the model holds the settings it was built with; the adapter's saved
    settings are set on a copy of its config."""
    from modeling_ahn.attention_ahn import get_layer_spec
    from modeling_ahn.training import distill as distill_module

    built, seen = [], []
    from_base, sample = AhnForCausalLM.from_base, distill_module.sample_window

    def build(*args, **kwargs):
        built.append(from_base(*args, **kwargs))
        return built[-1]

    def settings():
        model = built[0]
        modes = {get_layer_spec(layer.self_attn).mode for layer in model.model.layers}
        return model.config.sliding_window, model.config.num_sinks, model.config.prefill_chunk_size, modes

    def spy(*args, **kwargs):
        seen.append(settings())
        return sample(*args, **kwargs)

    monkeypatch.setattr(AhnForCausalLM, "from_base", staticmethod(build))
    monkeypatch.setattr(distill_module, "sample_window", spy)
    adapter = distill(distill_cfg(corpus, tmp_path / "run", windows=[32], sinks=[8], max_steps=3, eval_every=2,
                           save_every=100), progress=False)
    assert seen == [(16, 4, None, {"ahn"})] * 3
    assert settings() == (16, 4, None, {"ahn"})
    saved = json.loads((adapter / "config.json").read_text())
    assert (saved["sliding_window"], saved["num_sinks"], saved["prefill_chunk_size"]) == (16, 4, 2048)


def test_run_config_records_no_home_directory_and_resumes(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(corpus.parent))  # the corpus now lies under the home directory
    cfg = distill_cfg(corpus, tmp_path / "run", max_steps=2, eval_every=1000, save_every=1)
    distill(cfg, progress=False, _stop_after=1)
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["base"] == f"~/{corpus.name}/base" and saved["data"] == [f"~/{corpus.name}/data"]
    assert str(corpus.parent) not in json.dumps(saved)
    distill(cfg, resume=True, progress=False)  # the same settings, compared in the same form
    assert (tmp_path / "run" / "adapter" / "model.safetensors").exists()


def test_saved_states_are_sharded_and_exact(tmp_path, monkeypatch):
    """Optimizer / scheduler / RNG states: JSON + safetensors shards of at most SHARD_BYTES, read back exactly
    (tuples, int keys and tensors included)."""
    import modeling_ahn.training.distill as d

    monkeypatch.setattr(d, "SHARD_BYTES", 100)
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(30)}}, "groups": [{"lr": 1e-3}],
             "python": random.getstate(), "none": None}
    d.save_state(tmp_path / "s", state)
    assert len(list(tmp_path.glob("s-*.safetensors"))) == 2 and (tmp_path / "s.json").exists()
    back = d.load_state(tmp_path / "s")
    assert back["python"] == state["python"] and back["groups"] == state["groups"] and back["none"] is None
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])


def test_content_pair_swaps_only_the_far_context():
    from modeling_ahn.training.distill import content_pair

    a, b = list(range(100, 164)), list(range(200, 264))
    (swapped,), (start, end) = content_pair([a], [b], window=16, sinks=4)
    prefix = 4 + (64 - 4 - 16) // 2
    assert swapped == a[:4] + b[4:prefix] + a[prefix:]
    assert (start, end) == (prefix + 16 - 1, 64)  # the first query whose window holds no swapped token
    assert content_pair([a[:20]], [b], window=16, sinks=4) is None  # nothing the window leaves to swap


def test_content_weight_trains_the_content_loss_and_resumes_exactly(corpus, tmp_path):
    """``--content-weight`` (layer-local): each step also reads the sequence with another's far context; the
    content loss starts at 1 (a fresh AHN carries nothing of what it read), falls, and a time-budgeted run resumes
    to the same adapter."""
    kw = dict(objective="layer-local", use_q_proj=True, content_weight=1.0, lr=1e-2)
    distill(distill_cfg(corpus, tmp_path / "cw", max_steps=80, eval_every=80, **kw), progress=False)
    rows = [r for r in train_log(tmp_path / "cw") if "loss" in r]
    content = [r["content"] for r in rows]
    assert content[0] == pytest.approx(1.0, abs=1e-5) and sum(content[-20:]) / 20 < 0.95
    assert all(r["loss"] > r["content"] for r in rows)  # the total holds the attention-transfer loss too
    short = dict(max_steps=6, save_every=1000, eval_every=1000, **kw)
    reference = distill(distill_cfg(corpus, tmp_path / "ref", **short), progress=False)
    while not (tmp_path / "run" / "adapter").exists():
        distill(distill_cfg(corpus, tmp_path / "run", max_minutes=1e-6, **short), resume=(tmp_path / "run").exists(),
                progress=False)
    assert same_adapter(reference, tmp_path / "run" / "adapter")
    with pytest.raises(ValueError, match="content_weight adds a loss to the layer-local objective"):
        distill(distill_cfg(corpus, tmp_path / "bad", content_weight=1.0), progress=False)
    with pytest.raises(ValueError, match="content_weight must be >= 0"):
        distill(distill_cfg(corpus, tmp_path / "bad", objective="layer-local", content_weight=-1.0), progress=False)


def test_value_centring_starts_from_the_mean_value_and_resumes_exactly(corpus, tmp_path):
    """``--value-centring``: a fresh run sets every memory's ``v_mean`` from the first training sequences before its
    first step (then trains it), and a time-budgeted run resumes to the same adapter (``v_mean`` included)."""
    from modeling_ahn.training.centring import init_value_means
    from modeling_ahn.training.distill import setup_run

    run = setup_run(distill_cfg(corpus, tmp_path / "setup", value_centring=True), progress=False)
    means = {i: m.fn.v_mean.detach().clone() for i, m in run.model.ahn_modules().items()}
    assert all(v.abs().max() > 1e-3 for v in means.values())
    again = init_value_means(run.model, [torch.tensor([s]) for s in run.sequences[:4]])
    assert all(torch.equal(means[i], again[i]) for i in means)
    short = dict(max_steps=6, save_every=1000, eval_every=1000, value_centring=True)
    reference = distill(distill_cfg(corpus, tmp_path / "ref", **short), progress=False)
    trained = load_file(str(Path(reference) / "model.safetensors"))
    key = next(k for k in trained if k.endswith("ahn.fn.v_mean"))
    assert not torch.equal(trained[key], means[int(key.split(".")[2])])  # trained from its start
    while not (tmp_path / "run" / "adapter").exists():
        distill(distill_cfg(corpus, tmp_path / "run", max_minutes=1e-6, **short), resume=(tmp_path / "run").exists(),
                progress=False)
    assert same_adapter(reference, tmp_path / "run" / "adapter")
