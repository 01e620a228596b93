"""Tiny random base models built in the tests (no network), and helpers."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

import modeling_ahn  # noqa: E402,F401  (registers the "ahn" attention and Auto classes)

VOCAB = 320
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def make_base_config(arch: str):
    if arch == "qwen2":  # q/k/v projections carry biases
        return Qwen2Config(**COMMON, num_key_value_heads=2)
    if arch == "qwen3":  # per-head q/k RMSNorm, explicit head_dim
        return Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=16)
    if arch == "llama":  # GQA 4:1
        return LlamaConfig(**COMMON, num_key_value_heads=1)
    if arch == "mistral":
        return MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=None)
    raise ValueError(arch)


def make_base(arch: str, seed: int = 0, attn_implementation: str = "sdpa"):
    torch.manual_seed(seed)
    cfg = make_base_config(arch)
    cfg._attn_implementation = attn_implementation
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    if arch == "qwen2":  # make the q/k/v biases non-trivial
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1)
    return model.eval()


@torch.no_grad()
def randomize_ahn(model, seed: int = 1, scale: float = 0.3):
    """Random non-zero AHN weights (a fresh AHN has o_proj = 0 and contributes nothing)."""
    g = torch.Generator().manual_seed(seed)
    for module in model.ahn_modules().values():
        for name, p in module.named_parameters():
            if name.endswith("o_proj.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            elif name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif name.endswith("bias") and "proj" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def random_ids(n, batch=2, seed=0):
    return torch.randint(3, 300, (batch, n), generator=torch.Generator().manual_seed(seed))


def random_projections(model, seed=5):
    """Random (identity + noise) memory read/write projections, where the model has them (``use_q_proj``,
    ``use_k_proj``): a fresh projection is the identity and would hide a wrong one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.ahn_modules().values():
            for proj in (m.fn.q_proj, m.fn.k_proj):
                if proj is not None:
                    w = proj.weight
                    w.copy_(torch.eye(w.shape[-1]) + 0.3 * torch.randn(w.shape, generator=g))
    return model


def make_ahn(arch="qwen2", ahn_type="gdn", sliding_window=5, num_sinks=2, seed=0, random_ahn=True, **kw):
    model = modeling_ahn.AhnForCausalLM.from_base(
        make_base(arch, seed), ahn_type=ahn_type, sliding_window=sliding_window, num_sinks=num_sinks, **kw
    )
    torch.manual_seed(seed + 123)
    for module in model.ahn_modules().values():
        module.fn.reset_parameters()
    if random_ahn:
        randomize_ahn(model, seed + 1)
    return model.eval()


ARCHS = ["qwen2", "qwen3", "llama"]
AHN_TYPES = ["gdn", "dn", "mamba2"]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=["blocked", "unblocked"])
def attention_path(request, monkeypatch):
    """Run a test with whole-sequence attention in small query blocks, and without blocking."""
    from modeling_ahn import window_attention

    monkeypatch.setattr(window_attention, "BLOCK_MIN", 1 if request.param == "blocked" else 10**9)
    return request.param


@pytest.fixture
def paths(monkeypatch):
    """Records ``(AttentionPath, ChunkFacts or None)`` of every "ahn" attention call while the test runs."""
    from modeling_ahn import attention_ahn

    seen = []
    choose = attention_ahn.choose_path

    def recording(spec, step, facts):
        path = choose(spec, step, facts)
        seen.append((path, facts))
        return path

    monkeypatch.setattr(attention_ahn, "choose_path", recording)
    return seen


def count_paths(seen, path) -> int:
    return sum(p is path for p, _ in seen)


def run_chunks(model, cache, chunks, mask=None):
    """Feed ``chunks`` (token tensors) one after the other; returns the logits of every call, concatenated."""
    out, seen = [], 0
    for ids in chunks:
        seen += ids.shape[1]
        m = None if mask is None else mask[:, :seen]
        pos = None if m is None else (m.long().cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        out.append(model(ids, attention_mask=m, position_ids=pos, past_key_values=cache, use_cache=True).logits)
    return torch.cat(out, dim=1)


def compiled_decode(model, ids, prompt: int):
    """Prefill ``ids[:, :prompt]`` into two ``StaticAhnCache`` s, then decode the rest one token per step, eagerly on
    one and through ``torch.compile(fullgraph=True)`` on the other (the ``eager`` backend, counting compilations and
    graph runs: no C++ toolchain needed). Returns ``(max |compiled - eager|, graphs, runs, compiled cache)``."""
    from modeling_ahn import StaticAhnCache
    from modeling_ahn.modeling_ahn import CACHE_KWARG

    torch._dynamo.reset()
    base = model.base_causal_lm
    graphs, runs = [], []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)

        def run(*args):
            runs.append(1)
            return gm.forward(*args)

        return run

    step = torch.compile(base.forward, backend=counting_backend, fullgraph=True)
    with torch.no_grad():
        ref_cache, cache = StaticAhnCache(model.config), StaticAhnCache(model.config)
        ref = [base(ids[:, :prompt], **{CACHE_KWARG: ref_cache}, use_cache=True).logits]
        got = [base(ids[:, :prompt], **{CACHE_KWARG: cache}, use_cache=True).logits]
        for t in range(prompt, ids.shape[1]):
            pos = torch.tensor([[t]])
            ref.append(base(ids[:, t: t + 1], position_ids=pos, **{CACHE_KWARG: ref_cache}, use_cache=True).logits)
            got.append(step(input_ids=ids[:, t: t + 1], position_ids=pos, **{CACHE_KWARG: cache},
                            use_cache=True).logits)
    return float((torch.cat(got, 1) - torch.cat(ref, 1)).abs().max()), graphs, runs, cache


def make_tokenizer():
    """A byte-level BPE tokenizer (as Qwen's and Llama-3's are) trained offline on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["the hippocampus folds tokens that leave the window into memory"] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def save_base(directory, arch="qwen2", seed=0, license="apache-2.0"):
    """A tiny base model repo on disk: weights, config, tokenizer, generation config, model card."""
    base = make_base(arch, seed)
    base.save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    (directory / "README.md").write_text(f"---\nlicense: {license}\n---\n# tiny {arch}\n")
    return str(directory)


def save_ahn_repo(root, sliding_window, num_sinks, ahn_type="gdn"):
    """A tiny base at ``root/base`` and an exported AHN repo (``modeling_ahn.hub.export_model``) with random
    (non-zero) AHN weights at ``root/repo``; returns ``(base_dir, model)``."""
    base_dir = save_base(root / "base")
    model = modeling_ahn.AhnForCausalLM.from_base(base_dir, ahn_type=ahn_type, sliding_window=sliding_window,
                                                  num_sinks=num_sinks)
    randomize_ahn(model)
    from modeling_ahn.hub import export_model

    export_model(model, root / "repo")  # save_pretrained + the full model card, as `ahn export` writes it
    return base_dir, model
