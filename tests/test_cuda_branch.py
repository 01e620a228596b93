"""The memories' CUDA branch against the torch path: the code path that ``memory_ahn._use_kernels`` selects (fla's
``chunk_*`` / ``fused_recurrent_*`` delta rules and ``chunk_simple_gla``, mamba-ssm's ``mamba_chunk_scan_combined``),
entered through the package's own dispatch (``delta_rule``, ``ssd_rule``, the memories, a model), never by calling a
kernel by hand.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (backend ``"kernels"`` with
``TRITON_INTERPRET=1``, plus the shims of ``tests/triton_interpreter.py``); with one, the same tests run them
compiled (``benchmarks/gpu_session.sh``). Where the ``interpret`` extra is not installed every test skips with the
reason (``make install-interpret``). The mutation tests at the end inject the layout mistakes such a dispatch can
make (every shape still fits) and check that the parity check goes red.
"""

from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import modeling_ahn
from modeling_ahn import memory_ahn

from . import triton_interpreter as ti
from .conftest import VOCAB, randomize_ahn

pytestmark = [
    pytest.mark.cuda_branch,
    # the kernels compute exp2 and products in masked-off lanes too (discarded, as on a GPU, where nobody warns)
    pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),  # at import
]

DEVICE = "cuda" if ti.use_gpu() else "cpu"
# The dispatch runs the kernels in bf16 (also for fp32 inputs: the memories' l2-normed q, k are fp32), the torch
# path in fp32: errors |kernels - torch| / |torch| (2-norms, per output, state or gradient tensor).
# Measured (AHN_PARITY_REPORT=1): outputs and states <= 0.015 in fp32, <= 0.022 in bf16; gradients <= 0.055 (the
# gradients of decays and gates sum many cancelling terms); every injected layout mistake >= 0.7.
TOL = 3e-2
BF16_TOL = 5e-2  # a bf16 memory or model: inputs and weights rounded to bf16 on both paths
GRAD_TOL = 0.1
REPORT = os.environ.get("AHN_PARITY_REPORT") == "1"  # print every comparison's error (pytest -s), to size TOL
VARIANTS = ["gdn", "dn", "mamba2", "mamba2-fla"]  # mamba2-fla: Mamba2 on fla's simple GLA (no mamba-ssm)


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    reason = ti.unavailable_reason()
    if reason:
        pytest.skip(reason)
    ti.activate()
    reason = ti.unavailable_reason()
    if reason:
        ti.deactivate()
        pytest.skip(reason)
    yield
    ti.deactivate()


@contextlib.contextmanager
def backend(name):
    old = memory_ahn.get_memory_backend()
    memory_ahn.set_memory_backend(name)
    try:
        yield
    finally:
        memory_ahn.set_memory_backend(old)


def select(variant, monkeypatch) -> str:
    """The memory type of ``variant``; ``mamba2`` needs mamba-ssm, ``mamba2-fla`` hides it (fla's fallback)."""
    if variant == "mamba2" and memory_ahn._KERNELS["mamba_chunk_scan_combined"] is None:
        pytest.skip(ti.unavailable_reason("mamba-ssm") or "mamba-ssm not installed")
    if variant == "mamba2-fla":
        monkeypatch.setitem(memory_ahn._KERNELS, "mamba_chunk_scan_combined", None)
    return variant.split("-")[0]


def parity_errors(got: dict, ref: dict, tol=TOL) -> list[str]:
    """The entries of ``got`` (the kernel path) that differ from ``ref`` (the torch path) by more than ``tol``
    (``GRAD_TOL`` for the entries named ``grad ...``) relative to ``ref`` (2-norms: ``|got - ref| / |ref|``; bf16
    rounding gives ~1e-3..5e-2, a layout mistake ~1). NaN, a missing entry or another shape counts as a
    difference."""
    bad = []
    for name, r in ref.items():
        g = got[name]
        if g is None and r is None:
            continue
        if g is None or r is None or g.shape != r.shape:
            bad.append(f"{name}: {None if g is None else tuple(g.shape)} vs {None if r is None else tuple(r.shape)}")
            continue
        g, r = g.double(), r.double()
        err = ((g - r).norm() / r.norm().clamp_min(1e-30)).item()
        if REPORT:
            print(f"parity {name}: {err:.3g}")
        if not err <= (GRAD_TOL if name.startswith("grad ") else tol):  # NaN fails
            bad.append(f"{name}: relative error {err:.3g}")
    return bad


def assert_parity(got: dict, ref: dict, tol=TOL):
    bad = parity_errors(got, ref, tol)
    if bad:
        raise AssertionError(f"kernel path differs from the torch path (tol {tol:g}): {'; '.join(bad)}")


# ---------------------------------------------------------------------------------------------------------------
# The recurrences as the memories call them: delta_rule (gdn, dn) and ssd_rule (mamba2) on [B, T, H, D] inputs.
# ---------------------------------------------------------------------------------------------------------------


def _rule_inputs(T, H, D, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = dict(
        q=memory_ahn.l2norm(torch.randn(1, T, H, D, generator=g)),
        k=memory_ahn.l2norm(torch.randn(1, T, H, D, generator=g)),
        v=torch.randn(1, T, H, D, generator=g),
        beta=torch.rand(1, T, H, generator=g),  # beta (delta rules) or dt (Mamba2)
        g=-0.3 * torch.rand(1, T, H, generator=g),  # log-decay (GDN)
        A=-(0.5 + torch.rand(H, generator=g)),  # Mamba2's A (log-decay dt * A)
        s0=0.5 * torch.randn(1, H, D, D, generator=g),  # a non-symmetric initial state
    )
    return {n: t.to(DEVICE).requires_grad_(grad) for n, t in x.items()}


def _rule(ahn_type, x, a, b, state):
    q, k, v, beta = (x[n][:, a:b] for n in ("q", "k", "v", "beta"))
    if ahn_type == "mamba2":
        return memory_ahn.ssd_rule(q, k, v, beta, x["A"], state)
    g = x["g"][:, a:b] if ahn_type == "gdn" else None
    return memory_ahn.delta_rule(q, k, v, g, beta, state, 1.0 / math.sqrt(q.shape[-1]), ahn_type)


RULE_STAGES = (  # (name, first token, end token, initial state): a prefill from no state, its continuation from the
    # returned state, a one-token step from that, and a prefill from a given (random, non-symmetric) initial state
    ("prefill", 0, 40, None), ("continuation", 40, 64, "returned"), ("step", 64, 65, "returned"),
    ("prefill from initial state", 0, 24, "s0"),
)


def check_rule_parity(ahn_type, D, H=2, seed=0, stages=RULE_STAGES):
    """``stages`` on the kernel path and the torch path, each stage's output and state compared before the next
    runs (so that a broken dispatch fails at its first wrong stage)."""
    x = _rule_inputs(65, H, D, seed)
    states = {"torch": None, "kernels": None}
    for name, a, b, init in stages:
        out = {}
        for path in ("torch", "kernels"):
            state = x["s0"] if init == "s0" else states[path] if init == "returned" else None
            with torch.no_grad(), backend(path):
                out[path] = _rule(ahn_type, x, a, b, state)
            states[path] = out[path][1]
        assert_parity({name: out["kernels"][0], f"{name} state": out["kernels"][1]},
                      {name: out["torch"][0], f"{name} state": out["torch"][1]})


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("variant", VARIANTS)
def test_recurrence_dispatch_equals_torch_path(variant, D, monkeypatch):
    ahn_type = select(variant, monkeypatch)
    if D == 64:
        check_rule_parity(ahn_type, D)
    else:  # one head; no continuation (the same kind of kernel call as the prefill from an initial state)
        check_rule_parity(ahn_type, D, H=1, stages=[s for s in RULE_STAGES if s[0] != "continuation"])


def _rule_grads(ahn_type, D, T=40, H=2):
    x = _rule_inputs(T, H, D, seed=3, grad=True)
    o, s = _rule(ahn_type, x, 0, T, x["s0"])
    w = torch.Generator().manual_seed(4)
    loss = (o * torch.randn(o.shape, generator=w).to(o.device)).sum() + (
        s * torch.randn(s.shape, generator=w).to(s.device)).sum()
    loss.backward()
    used = {"q", "k", "v", "beta", "s0"} | ({"g"} if ahn_type == "gdn" else set()) | (
        {"A"} if ahn_type == "mamba2" else set())
    return {f"grad {n}": x[n].grad for n in sorted(used)}


# (mamba-ssm's backward, the slowest under the interpreter, is checked there by the module test)
@pytest.mark.parametrize("variant", VARIANTS if DEVICE == "cuda" else ["gdn", "dn", "mamba2-fla"])
def test_recurrence_dispatch_gradients_equal_torch_path(variant, monkeypatch):
    """From an initial state: the gradients of the inputs, of the log-decay and of the initial state."""
    ahn_type = select(variant, monkeypatch)
    with backend("torch"):
        ref = _rule_grads(ahn_type, 64)
    with backend("kernels"):
        got = _rule_grads(ahn_type, 64)
    assert_parity(got, ref)


# ---------------------------------------------------------------------------------------------------------------
# Whole AHN memories (GQA: 4 query heads on 2 KV heads), fp32 and bf16, forward and backward.
# ---------------------------------------------------------------------------------------------------------------


def _memory(ahn_type, dtype, hidden=96, H=2, D=64):
    torch.manual_seed(0)
    fn = memory_ahn.build_memory(ahn_type, hidden, H, D)
    with torch.no_grad():
        for name, p in fn.named_parameters():
            if name == "o_proj.weight":
                p.normal_(0, 0.3)
            elif p.dim() == 2:  # the projections of the hidden state to gates: unit-variance pre-activations
                p.normal_(0, 1 / math.sqrt(p.shape[1]))
    return fn.to(DEVICE, dtype)


def memory_scenario(fn, dtype, grad, Hkv=1, T=57):
    """The memory's calls in a model: a prefill with some tokens not entering memory, a continuation from the
    returned state, a decoding step (``step``); with ``grad`` then the backward of a loss over all outputs and the
    last state (gradients of the inputs and of every parameter)."""
    H, D, hidden = fn.num_heads, fn.head_dim, fn.hidden_size
    g = torch.Generator().manual_seed(2)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_(grad)

    q, k, v = rand(1, H, T, D), rand(1, Hkv, T, D), rand(1, Hkv, T, D)
    xw, xr = rand(1, T, hidden), rand(1, T, hidden)
    valid = (torch.rand(1, T, generator=g) > 0.2).to(DEVICE)
    with torch.set_grad_enabled(grad):
        gates = fn.write_gates(xw)
        o1, s1 = fn(q[:, :, :40], k[:, :, :40], v[:, :, :40], gates[:, :40], valid[:, :40], xr[:, :40])
        o2, s2 = fn(q[:, :, 40:56], k[:, :, 40:56], v[:, :, 40:56], gates[:, 40:56], valid[:, 40:56], xr[:, 40:56],
                    s1)
        o3, s3 = fn.step(q[:, :, 56:57], k[:, :, 56], v[:, :, 56], gates[:, 56], xr[:, 56:57], s2)
    out = {"prefill": o1, "continuation": o2, "step": o3, "state": s3}
    if grad:
        loss = sum((t.float() * torch.randn(t.shape, generator=g).to(DEVICE)).sum() for t in out.values())
        fn.zero_grad()
        loss.backward()
        inputs = (("query", q), ("keys", k), ("values", v), ("x", xw), ("x_read", xr))
        out.update({f"grad {n}": t.grad for n, t in inputs})
        out.update({f"grad {n}": p.grad for n, p in fn.named_parameters()})
    return {n: None if t is None else t.detach() for n, t in out.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_memory_module_equals_torch_path(variant, dtype, monkeypatch):
    """GQA (2 query heads on 1 KV head): forward and backward, in fp32 and bf16 (for mamba-ssm, whose backward is
    the slowest under the interpreter, the backward in fp32 only)."""
    ahn_type = select(variant, monkeypatch)
    fn = _memory(ahn_type, dtype)
    grad = dtype == torch.float32 or variant != "mamba2" or DEVICE == "cuda"
    with backend("torch"):
        ref = memory_scenario(fn, dtype, grad)
    with backend("kernels"):
        got = memory_scenario(fn, dtype, grad)
    assert_parity(got, ref, TOL if dtype == torch.float32 else BF16_TOL)


# ---------------------------------------------------------------------------------------------------------------
# A tiny AHN model (Llama-shaped, head dim 64, GQA 2:1, window 8 + 2 sinks, one layer of two with memory): forward,
# backward and generate.
# ---------------------------------------------------------------------------------------------------------------


def tiny_model(ahn_type, dtype, **options):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    base = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    model = modeling_ahn.AhnForCausalLM.from_base(base, ahn_type=ahn_type, sliding_window=8, num_sinks=2,
                                                  full_attention_layers=[0], **options)  # layer 1 with memory
    randomize_ahn(model, seed=1)
    with torch.no_grad():  # decays that matter (GDN's initial dt of 0.001..0.1 makes the decays' gradients tiny sums
        for name, p in model.named_parameters():  # of cancelling terms, relatively inexact in any rounding)
            if name.endswith("dt_bias"):
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(7))
    return model.to(DEVICE, dtype).eval()


IDS = torch.randint(3, VOCAB, (1, 30), generator=torch.Generator().manual_seed(5))


def model_forward(model, grad):
    """Logits (the memory over the evicted tokens; the cache's prefill: ``generate`` below); with ``grad`` the AHN
    parameters' gradients of the LM loss."""
    ids = IDS.to(DEVICE)
    model.zero_grad()
    with torch.set_grad_enabled(grad):
        out = model(ids, labels=ids, use_cache=False)
    res = {"logits": out.logits.detach()}
    if grad:
        out.loss.backward()
        res.update({f"grad {n}": p.grad for n, p in model.named_parameters() if ".ahn." in n and p.requires_grad})
    return res


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_model_forward_equals_torch_path(variant, dtype, monkeypatch):
    """fp32: forward and backward (but for mamba-ssm, whose slow interpreted backward the module test covers);
    bf16: forward."""
    model = tiny_model(select(variant, monkeypatch), dtype)
    grad = dtype == torch.float32 and (variant != "mamba2" or DEVICE == "cuda")
    with backend("torch"):
        ref = model_forward(model, grad)
    with backend("kernels"):
        got = model_forward(model, grad)
    assert_parity(got, ref, TOL if dtype == torch.float32 else BF16_TOL)


@pytest.mark.parametrize("variant", ["gdn", "mamba2-fla"])
def test_model_with_value_centring_equals_torch_path(variant, monkeypatch):
    """``value_centring`` (values minus a per-head mean, one value head per query head) on the kernels: the logits and
    ``v_mean``'s gradient; for GDN every gradient. (Mamba2's ``g_proj`` gradient on this random model is a sum of
    cancelling terms that the bf16 kernels reproduce to only ~0.07-0.18 relative, with or without the option: the
    same weights without it gave the same error, 0.073, 2026-12-08.)"""
    model = tiny_model(select(variant, monkeypatch), torch.float32, value_centring=True)
    assert all(m.fn.v_mean.abs().max() > 0.05 for m in model.ahn_modules().values())  # (randomize_ahn)
    with backend("torch"):
        ref = model_forward(model, True)
    with backend("kernels"):
        got = model_forward(model, True)
    keep = [n for n in ref if n == "logits" or n.endswith("v_mean") or variant == "gdn"]
    assert any(n.endswith("v_mean") for n in keep) and ref[next(n for n in keep if n.endswith("v_mean"))].norm() > 0
    assert_parity({n: got[n] for n in keep}, {n: ref[n] for n in keep})


DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16"}


# bf16 for one delta rule and one SSD (their bf16 forwards are all in test_model_forward_equals_torch_path)
@pytest.mark.parametrize("variant,dtype", [(v, torch.float32) for v in VARIANTS] + [
    (v, torch.bfloat16) for v in ("gdn", "mamba2")], ids=lambda x: DTYPE_IDS.get(x, x))
def test_model_generate_equals_torch_path(variant, dtype, monkeypatch):
    """Greedy ``generate`` (a prefill, then one-token decoding steps): the same logits at every step, and so the same
    tokens -- up to a near tie of two logits, where the paths may part (a random tiny model's logits are flat): then
    the logits are compared up to and including that step (agreeing there, they can part only at a tie)."""
    model = tiny_model(select(variant, monkeypatch), dtype)
    tol = TOL if dtype == torch.float32 else BF16_TOL
    gen = {}
    for name in ("torch", "kernels"):
        with backend(name), torch.no_grad():
            gen[name] = model.generate(IDS[:, :20].to(DEVICE), max_new_tokens=6, do_sample=False, eos_token_id=None,
                                       pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    new_t, new_k = (gen[n].sequences[0, 20:] for n in ("torch", "kernels"))
    same = (new_t == new_k).long().cumprod(0).sum().item()  # steps before the paths part
    steps = min(same + 1, len(new_t))  # logits are comparable up to and including the step where they part
    assert_parity({f"logits {i}": gen["kernels"].logits[i] for i in range(steps)},
                  {f"logits {i}": gen["torch"].logits[i] for i in range(steps)}, tol)


@pytest.mark.parametrize("score", ["learned", "novelty"])
def test_model_with_recall_slots_equals_torch_path(score, monkeypatch):
    """Recall slots on the CUDA branch: the memory's kernels beside the slotted attention that CUDA tensors take
    (float32 query blocks, no banded CPU kernel), the whole forward and greedy decoding with their logits equal to
    the torch path's; the slots change the logits (else the check would hold without them)."""
    model = tiny_model(select("gdn", monkeypatch), torch.float32)
    if score == "learned":
        g = torch.Generator().manual_seed(3)
        model.add_recall_head({i: (torch.randn(128, generator=g), torch.randn((), generator=g))
                               for i in model.ahn_modules()})
    model.to(DEVICE)
    model.config.recall_score, model.config.recall_span, model.config.num_recall_slots = score, [2, 1], 4
    out = {}
    for name in ("torch", "kernels"):
        with backend(name), torch.no_grad():
            gen = model.generate(IDS[:, :20].to(DEVICE), max_new_tokens=4, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, return_dict_in_generate=True, output_logits=True)
            out[name] = {**model_forward(model, False), **{f"logits {i}": x for i, x in enumerate(gen.logits)}}
    with backend("torch"), torch.no_grad(), model.runtime(num_recall_slots=0):
        plain = model_forward(model, False)["logits"]
    assert (plain - out["torch"]["logits"]).abs().max() > 1e-3
    assert_parity(out["kernels"], out["torch"], TOL)


# ---------------------------------------------------------------------------------------------------------------
# The dispatch's own errors.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors without the interpreter")
def test_kernels_backend_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with backend("kernels"), pytest.raises(RuntimeError, match="need CUDA tensors.*TRITON_INTERPRET=1"):
        memory_ahn.delta_rule(*(torch.zeros(1, 2, 1, 16) for _ in range(3)), None, torch.ones(1, 2, 1), None, 0.25,
                              "dn")


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors")
def test_kernels_imported_without_the_interpreter_say_so(monkeypatch):
    assert memory_ahn._triton_interpreted()  # triton's own helpers too (shim 0 where triton came first)
    monkeypatch.setitem(memory_ahn._KERNELS, "interpret", False)  # as if imported before TRITON_INTERPRET=1
    with backend("kernels"), pytest.raises(RuntimeError, match="without Triton's interpreter.*first imported"):
        memory_ahn.delta_rule(*(torch.zeros(1, 2, 1, 16) for _ in range(3)), None, torch.ones(1, 2, 1), None, 0.25,
                              "dn")


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's pins")
def test_unavailable_reason_names_the_missing_or_wrong_version(monkeypatch):
    monkeypatch.setitem(ti.PINNED, "triton", "0.0.1")
    assert "written for triton==0.0.1" in ti.unavailable_reason()
    monkeypatch.setitem(ti.PINNED, "no-such-dist-for-ahn", "1.0")
    monkeypatch.delitem(ti.PINNED, "triton")
    assert "no-such-dist-for-ahn missing" in ti.unavailable_reason()
    assert "make install-interpret" in ti.unavailable_reason()


# ---------------------------------------------------------------------------------------------------------------
# Mutation proof: each layout mistake the dispatch could make, injected between the dispatch and the kernels
# (a wrapper around the entries of ``memory_ahn._KERNELS``, all shapes still fitting), must turn the parity red.
# ---------------------------------------------------------------------------------------------------------------

FLA_DELTA = ("chunk_delta_rule", "fused_recurrent_delta_rule", "chunk_gated_delta_rule",
             "fused_recurrent_gated_delta_rule")


def _t(x):
    return None if x is None else x.transpose(-1, -2).contiguous()


def _head_major(x):  # [B, T, H, D] -> the same tensor laid out as [B, H, T, D], read back as [B, T, H, D]
    return x.transpose(1, 2).contiguous().view(x.shape)


def _mutate(mutation, name, fn):
    mamba = name == "mamba_chunk_scan_combined"  # fn(x, dt, A, B, C, chunk_size=, initial_states=, ...)

    def wrapped(*args, **kw):
        args = list(args)
        if mutation == "state transposed":
            key = "initial_states" if mamba else "initial_state"
            kw[key] = _t(kw.get(key))
            out, state = fn(*args, **kw)
            return out, _t(state)
        if mutation == "[B,H,T,D] for [B,T,H,D]":
            for i in (0, 3, 4) if mamba else (0, 1, 2):
                args[i] = _head_major(args[i])
        elif mutation == "gate sign flipped":
            if mamba:
                args[2] = -args[2]
            else:
                kw["g"] = -kw["g"]
        elif mutation == "scale 1 instead of 1/sqrt(D)":
            kw["scale"] = 1.0
        elif mutation == "B and C swapped":
            if mamba:
                args[3], args[4] = args[4], args[3]
            else:  # fla's fallback: key k * dt and query q swapped
                args[0], args[1] = args[1], args[0]
        return fn(*args, **kw)

    return wrapped


def _targets(mutation, variant):
    if variant == "mamba2":
        return ["mamba_chunk_scan_combined"]
    if variant == "mamba2-fla":
        return ["chunk_simple_gla"]
    if mutation == "gate sign flipped":
        return [n for n in FLA_DELTA if "gated" in n]
    return list(FLA_DELTA)


MUTATIONS = [
    ("state transposed", ["gdn", "dn", "mamba2", "mamba2-fla"]),
    ("[B,H,T,D] for [B,T,H,D]", ["gdn", "dn", "mamba2", "mamba2-fla"]),
    ("gate sign flipped", ["gdn", "mamba2", "mamba2-fla"]),
    ("scale 1 instead of 1/sqrt(D)", ["gdn", "dn"]),
    ("B and C swapped", ["mamba2", "mamba2-fla"]),
]


@pytest.mark.parametrize("mutation,variant", [(m, v) for m, vs in MUTATIONS for v in vs])
def test_injected_layout_mistake_fails_the_parity_check(mutation, variant, monkeypatch):
    ahn_type = select(variant, monkeypatch)
    for name in _targets(mutation, variant):
        monkeypatch.setitem(memory_ahn._KERNELS, name, _mutate(mutation, name, memory_ahn._KERNELS[name]))
    with pytest.raises(AssertionError, match="kernel path differs from the torch path"):
        check_rule_parity(ahn_type, 64)
