"""The memories against the spec: parameter names/shapes/init, naive per-token reference = chunked = step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modeling_ahn import memory_ahn
from modeling_ahn.memory_ahn import build_memory, torch_chunk_rule, torch_recurrent_rule

from .conftest import AHN_TYPES, make_ahn
from .reference import naive_memory

OFFICIAL_PARAMS = {
    "gdn": {
        "b_proj.weight": ("H", "hidden"),
        "a_proj.weight": ("H", "hidden"),
        "g_proj.weight": ("H", "hidden"),
        "A_log": ("H",),
        "D": ("H",),
        "dt_bias": ("H",),
        "o_norm.weight": ("D",),
        "o_proj.weight": ("H", "D", "D"),
    },
    "dn": {
        "b_proj.weight": ("H", "hidden"),
        "g_proj.weight": ("H", "hidden"),
        "o_norm.weight": ("D",),
        "o_proj.weight": ("H", "D", "D"),
    },
    "mamba2": {
        "dt_proj.weight": ("H", "hidden"),
        "dt_proj.bias": ("H",),
        "g_proj.weight": ("H", "hidden"),
        "g_proj.bias": ("H",),
        "A_log": ("H",),
        "dt_bias": ("H",),
        "norm.weight": ("HD",),
        "o_proj.weight": ("H", "D", "D"),
    },
}


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_official_parameter_names_and_shapes(ahn_type):
    hidden, H, D = 48, 3, 8
    dims = {"H": H, "D": D, "hidden": hidden, "HD": H * D}
    fn = build_memory(ahn_type, hidden, H, D)
    got = {n: tuple(p.shape) for n, p in fn.named_parameters()}
    want = {n: tuple(dims[d] for d in shape) for n, shape in OFFICIAL_PARAMS[ahn_type].items()}
    assert got == want


@pytest.mark.parametrize("name,expected", [("GatedDeltaNet", "gdn"), ("DeltaNet", "dn"), ("Mamba2", "mamba2"),
                                           ("gdn", "gdn"), ("DN", "dn")])
def test_official_names_accepted(name, expected):
    assert memory_ahn.canonical_ahn_type(name) == expected


def test_unknown_type_raises():
    with pytest.raises(ValueError, match="Unknown ahn_type 'lstm'"):
        memory_ahn.canonical_ahn_type("lstm")


def test_initialisation_follows_spec():
    torch.manual_seed(0)
    H = 4096  # many heads: the init distributions become visible
    gdn = build_memory("gdn", 8, H, 4)
    assert torch.all(gdn.o_proj.weight == 0)
    A = gdn.A_log.detach().exp()
    assert 0 < A.min() and A.max() <= 16 and abs(A.mean().item() - 8) < 0.5  # U(0, 16)
    dt = torch.nn.functional.softplus(gdn.dt_bias.detach())
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6 and dt.min() < 1.1e-3
    log_dt = dt.log()  # log-uniform on [log 1e-3, log 1e-1]
    assert abs(log_dt.mean().item() - (math.log(1e-3) + math.log(1e-1)) / 2) < 0.1
    assert torch.all(gdn.D == 1) and torch.all(gdn.o_norm.weight == 1)

    m2 = build_memory("mamba2", 8, 5, 4)
    assert torch.allclose(m2.A_log.detach(), torch.log(torch.arange(1.0, 6.0)))
    assert torch.all(m2.dt_bias == 1) and torch.all(m2.norm.weight == 1) and torch.all(m2.o_proj.weight == 0)
    dn = build_memory("dn", 8, 5, 4)
    assert torch.all(dn.o_proj.weight == 0)


@pytest.mark.parametrize(
    "hidden,H,D,layers,ahn_type,expected_m",
    [
        (2048, 16, 128, 36, "gdn", 12.98),  # Qwen2.5-3B
        (2048, 16, 128, 36, "dn", 11.80),
        (2048, 16, 128, 36, "mamba2", 11.87),
        (3584, 28, 128, 28, "gdn", 21.28),  # Qwen2.5-7B
    ],
)
def test_parameter_counts_match_the_release(hidden, H, D, layers, ahn_type, expected_m):
    with torch.device("meta"):
        fn = build_memory(ahn_type, hidden, H, D)
    total = layers * sum(p.numel() for p in fn.parameters())
    assert round(total / 1e6, 2) == expected_m


def _random_memory(ahn_type, hidden=24, H=3, D=8, seed=0):
    torch.manual_seed(seed)
    fn = build_memory(ahn_type, hidden, H, D)
    with torch.no_grad():
        for n, p in fn.named_parameters():
            if n == "o_proj.weight":
                p.normal_(0, 0.3)
            elif p.dim() == 2:
                p.normal_(0, 0.3)
    return fn.double().float()


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_naive_reference_equals_chunked_and_step_forms(ahn_type):
    """Memory inputs aligned per query: write token i (where valid), read with query i."""
    hidden, H, D, T, Hkv = 24, 4, 8, 37, 2
    fn = _random_memory(ahn_type, hidden, H, D)
    torch.manual_seed(1)
    q = torch.randn(1, H, T, D)
    k = torch.randn(1, Hkv, T, D)
    v = torch.randn(1, Hkv, T, D)
    xw = torch.randn(1, T, hidden)
    xr = torch.randn(1, T, hidden)
    valid = torch.rand(1, T) > 0.3
    valid[:, :4] = False  # nothing written yet: the read must be exactly zero
    gates = fn.write_gates(xw)

    with torch.no_grad():
        chunked, state = fn(q, k, v, gates, valid, xr)
        steps, s = [], None
        for t in range(T):
            o, s = fn(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], gates[:, t : t + 1],
                      valid[:, t : t + 1], xr[:, t : t + 1], s)
            steps.append(o)
        steps = torch.cat(steps, 1)
        ref = naive_memory(fn, ahn_type, q[0].transpose(0, 1), k[0].repeat_interleave(2, 0).transpose(0, 1),
                           v[0].repeat_interleave(2, 0).transpose(0, 1), (xw[0], xr[0]), valid[0])
    assert torch.all(chunked[0, :4] == 0) and torch.all(steps[0, :4] == 0)
    assert (chunked[0].double() - ref).abs().max() < 1e-5
    assert (steps[0].double() - ref).abs().max() < 1e-5
    assert (state - s).abs().max() < 1e-5


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_one_token_step_equals_the_forward_on_that_token(ahn_type):
    """``step`` (a decoding step: one evicted token written, then one read) equals ``forward`` on one valid token,
    from an empty memory and from a filled one, with GQA (4 query heads over 2 KV heads)."""
    hidden, H, D, Hkv = 24, 4, 8, 2
    fn = _random_memory(ahn_type, hidden, H, D)
    torch.manual_seed(3)
    state = None
    with torch.no_grad():
        for t in range(6):
            q, k, v = torch.randn(2, H, 1, D), torch.randn(2, Hkv, 1, D), torch.randn(2, Hkv, 1, D)
            xw, xr = torch.randn(2, 1, hidden), torch.randn(2, 1, hidden)
            gates = fn.write_gates(xw)
            ref, ref_state = fn(q, k, v, gates, torch.ones(2, 1, dtype=torch.bool), xr, state)
            out, new_state = fn.step(q, k[:, :, 0], v[:, :, 0], gates[:, 0], xr, state)
            assert out.shape == ref.shape and out.dtype == ref.dtype
            assert (out - ref).abs().max() < 1e-5 * max(1.0, ref.abs().max()), t
            assert (new_state - ref_state).abs().max() < 1e-5, t
            state = ref_state


@pytest.mark.parametrize("delta", [True, False])
@pytest.mark.parametrize("gated", [True, False])
def test_step_rule_equals_the_recurrence(delta, gated):
    torch.manual_seed(0)
    B, H, K, V = 2, 3, 16, 12
    q, k = memory_ahn.l2norm(torch.randn(B, 1, H, K)), memory_ahn.l2norm(torch.randn(B, 1, H, K))
    v, beta = torch.randn(B, 1, H, V), torch.rand(B, 1, H)
    g = -torch.rand(B, 1, H) if gated else None
    for s0 in (None, torch.randn(B, H, K, V)):
        o1, s1 = torch_recurrent_rule(q, k, v, g, beta, s0, 0.5, delta)
        o2, s2 = memory_ahn.torch_step_rule(q[:, 0], k[:, 0], v[:, 0], None if g is None else g[:, 0], beta[:, 0],
                                            s0, 0.5, delta)
        assert (o1[:, 0] - o2).abs().max() < 1e-5 and (s1 - s2).abs().max() < 1e-5


@pytest.mark.parametrize("delta", [True, False])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("chunk_size,segment", [(1, None), (7, None), (64, None), (7, 20), (8, 256)])
def test_chunk_kernel_equals_recurrence(delta, gated, chunk_size, segment):
    """``segment``: the chunk-parallel work one segment at a time (20 -> segments of 14 with chunks of 7)."""
    torch.manual_seed(0)
    B, T, H, K, V = 2, 93, 3, 16, 12
    q = memory_ahn.l2norm(torch.randn(B, T, H, K))
    k = memory_ahn.l2norm(torch.randn(B, T, H, K))
    v = torch.randn(B, T, H, V)
    g = -torch.rand(B, T, H) if gated else None
    beta = torch.rand(B, T, H)
    s0 = torch.randn(B, H, K, V)
    o1, s1 = torch_recurrent_rule(q, k, v, g, beta, s0, 0.5, delta)
    o2, s2 = torch_chunk_rule(q, k, v, g, beta, s0, 0.5, delta, chunk_size=chunk_size, segment=segment)
    assert (o1 - o2).abs().max() < 1e-5 and (s1 - s2).abs().max() < 1e-5


def test_chunk_kernel_gradients_match_recurrence():
    torch.manual_seed(0)
    B, T, H, K = 1, 20, 2, 8
    base = [torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, K)]
    g0, b0 = -torch.rand(B, T, H), torch.rand(B, T, H)
    grads = []
    for fn in (torch_recurrent_rule, lambda *a: torch_chunk_rule(*a, chunk_size=4, segment=8)):
        q, k, v = (x.clone().requires_grad_() for x in base)
        g, b = g0.clone().requires_grad_(), b0.clone().requires_grad_()
        o, s = fn(memory_ahn.l2norm(q), memory_ahn.l2norm(k), v, g, b, None, 0.3, True)
        (o.square().sum() + s.sum()).backward()
        grads.append([t.grad for t in (q, k, v, g, b)])
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_recurrence_stays_fp32_under_bf16_autocast(ahn_type):
    """bf16 training runs under autocast; the memory recurrence must not be cast to bf16 with it."""
    fn = _random_memory(ahn_type)
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 3, 70, 8), torch.randn(1, 3, 70, 8), torch.randn(1, 3, 70, 8)
    x = torch.randn(1, 70, 24)
    valid = torch.ones(1, 70, dtype=torch.bool)
    with torch.no_grad():
        gates = fn.write_gates(x)
        ref, ref_state = fn(q, k, v, gates, valid, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, state = fn(q, k, v, gates, valid, x)
    assert state.dtype == torch.float32
    assert torch.allclose(state, ref_state, atol=1e-6, rtol=0)
    # the read passes through o_proj (a bf16 matmul under autocast): only that last product may round
    assert (out.float() - ref).abs().max() < 2e-2 * ref.abs().max()


def test_invalid_tokens_leave_the_state_unchanged():
    fn = _random_memory("gdn")
    q, k, v = torch.randn(1, 3, 6, 8), torch.randn(1, 3, 6, 8), torch.randn(1, 3, 6, 8)
    x = torch.randn(1, 6, 24)
    s0 = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        _, s = fn(q, k, v, fn.write_gates(x), torch.zeros(1, 6, dtype=torch.bool), x, s0)
    assert torch.equal(s, s0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_cuda_kernels_equal_torch_path(ahn_type):
    if not memory_ahn.kernels_available(ahn_type):
        pytest.skip(f"kernels for {ahn_type} not installed")
    hidden, H, D, T = 256, 4, 64, 300
    fn = _random_memory(ahn_type, hidden, H, D).cuda()
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, H, T, D, device="cuda") for _ in range(3))
    x = torch.randn(2, T, hidden, device="cuda")
    valid = torch.rand(2, T, device="cuda") > 0.2
    gates = fn.write_gates(x)
    outs = {}
    try:
        for backend in ("torch", "kernels"):
            memory_ahn.set_memory_backend(backend)
            with torch.no_grad():
                o1, s1 = fn(q[:, :, :200], k[:, :, :200], v[:, :, :200], gates[:, :200], valid[:, :200], x[:, :200])
                o2, s2 = fn(q[:, :, 200:], k[:, :, 200:], v[:, :, 200:], gates[:, 200:], valid[:, 200:], x[:, 200:], s1)
                o3, s3 = fn(q[:, :, -1:], k[:, :, -1:], v[:, :, -1:], gates[:, -1:], valid[:, -1:], x[:, -1:], s2)
            outs[backend] = (torch.cat([o1, o2, o3], 1), s3)
    finally:
        memory_ahn.set_memory_backend("auto")
    (ot, st), (ok, sk) = outs["torch"], outs["kernels"]
    scale = ot.abs().max()
    assert (ot - ok).abs().max() / scale < 2e-2  # bf16 kernels vs fp32 torch
    assert (st - sk).abs().max() / st.abs().max() < 2e-2


@pytest.mark.parametrize("ahn_type", ["gdn", "mamba2"])
def test_memory_half_lives_are_those_of_the_decays_the_forward_applies(ahn_type):
    """``longctx.memory_half_lives`` recomputes the gates from the hidden states; it must agree with the decays
    the AHN forward itself feeds to the recurrence (recorded here), and skip padded positions."""
    from modeling_ahn.evaluation.probes import memory_half_lives

    model = make_ahn("llama", ahn_type=ahn_type, sliding_window=5, num_sinks=2)
    ids = torch.randint(0, model.config.base_config.vocab_size, (1, 20))
    recorded = {}
    for i, module in model.ahn_modules().items():
        fn, orig = module.fn, module.fn.write_gates

        def wrap(x, fn=fn, orig=orig, i=i):
            out = orig(x)
            log_decay = out[..., 1, :] if ahn_type == "gdn" else -fn.A_log.float().exp() * out[..., 0, :]
            recorded.setdefault(i, []).append(log_decay)
            return out

        fn.write_gates = wrap
    with torch.no_grad():
        for n in (20, 12):
            recorded.clear()
            model(ids[:, :n], use_cache=False)
            expected = torch.stack([math.log(2) / -torch.cat(recorded[i], 1)[0].mean(0) for i in sorted(recorded)])
            mask = (torch.arange(20) < n).long()[None]
            got = memory_half_lives(model, ids, attention_mask=mask if n < 20 else None)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    assert got.shape == (len(model.ahn_modules()), model.config.base_config.num_attention_heads)
    with pytest.raises(ValueError, match="DeltaNet has no decay"):
        memory_half_lives(make_ahn("llama", ahn_type="dn"), ids)


@pytest.mark.parametrize("delta", [True, False])
def test_chunk_kernel_shares_grouped_key_heads(delta):
    """Keys/values with fewer heads (grouped-query attention) give exactly what their repeated heads give: the kernel
    repeats them in its one layout copy instead of the caller's ``repeat_interleave``."""
    torch.manual_seed(0)
    B, T, H, Hkv, K = 2, 70, 6, 2, 8
    q, k = memory_ahn.l2norm(torch.randn(B, T, H, K)), memory_ahn.l2norm(torch.randn(B, T, Hkv, K))
    v, g, beta, s0 = torch.randn(B, T, Hkv, K), -torch.rand(B, T, H), torch.rand(B, T, H), torch.randn(B, H, K, K)
    rep = [x.repeat_interleave(H // Hkv, dim=2) for x in (k, v)]
    o1, s1 = torch_chunk_rule(q, *rep, g, beta, s0, 0.5, delta, chunk_size=8, segment=32)
    o2, s2 = torch_chunk_rule(q, k, v, g, beta, s0, 0.5, delta, chunk_size=8, segment=32)
    assert torch.equal(o1, o2) and torch.equal(s1, s2)
    with pytest.raises(ValueError, match="cannot share"):
        torch_chunk_rule(q, k[:, :, :1].expand(B, T, 4, K)[:, :, :4], v, g, beta, s0, 0.5, delta)


@pytest.mark.parametrize("delta", [True, False])
def test_chunk_kernel_bf16_products_stay_close_and_fp32_state(delta):
    """``matmul_dtype=bfloat16`` (bf16 models, no gradient): the chunk products in bf16 with float32 accumulation,
    as fla's kernels do; output and state within bf16 rounding of the float32 kernel, the state still float32; with a
    gradient the products stay float32 (the same result as without ``matmul_dtype``)."""
    torch.manual_seed(0)
    B, T, H, K = 1, 300, 4, 32
    q, k = memory_ahn.l2norm(torch.randn(B, T, H, K)), memory_ahn.l2norm(torch.randn(B, T, H, K))
    v, g, beta, s0 = torch.randn(B, T, H, K), -torch.rand(B, T, H) * 0.2, torch.rand(B, T, H), torch.randn(B, H, K, K)
    with torch.no_grad():
        ref_o, ref_s = torch_chunk_rule(q, k, v, g, beta, s0, 0.5, delta)
        o, s = torch_chunk_rule(q, k, v, g, beta, s0, 0.5, delta, matmul_dtype=torch.bfloat16)
    assert o.dtype == s.dtype == torch.float32
    err_o = ((o - ref_o).abs().max() / ref_o.abs().max()).item()
    err_s = ((s - ref_s).abs().max() / ref_s.abs().max()).item()
    assert 0 < err_o < 2e-2 and err_s < 2e-2, (err_o, err_s)  # bf16 rounding: not exact, not far
    qg = q.clone().requires_grad_()
    o_grad, _ = torch_chunk_rule(qg, k, v, g, beta, s0, 0.5, delta, matmul_dtype=torch.bfloat16)
    assert (o_grad - ref_o).abs().max() < 1e-5


def test_bf16_memory_takes_bf16_products_where_they_are_native(monkeypatch):
    """A bf16 model's memory runs the chunk kernel with bf16 products (``product_dtype``) where the CPU multiplies
    bf16 natively, and float32 ones where it emulates them (faster there); a float32 or float16 model never takes
    bf16 products."""
    assert memory_ahn.CPU_MULTIPLIES_BF16 is memory_ahn.cpu_multiplies_bf16()
    assert memory_ahn.cpu_multiplies_bf16() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    bf16 = torch.zeros(1, dtype=torch.bfloat16)
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(memory_ahn, "CPU_MULTIPLIES_BF16", native)
        assert memory_ahn.product_dtype(bf16) is expected
        assert memory_ahn.product_dtype(torch.zeros(1)) is None
        assert memory_ahn.product_dtype(torch.zeros(1, dtype=torch.float16)) is None


@pytest.mark.parametrize("ahn_type", ["gdn", "dn"])
def test_delta_rule_readout_equals_its_formula(ahn_type):
    """The fused read-out (norm and gate factors in one pass, the norm's weight folded into ``o_proj``) equals
    ``o_proj(RMSNorm(o) * silu(g_proj(x)))`` written out."""
    fn = _random_memory(ahn_type)
    torch.manual_seed(3)
    with torch.no_grad():
        fn.o_norm.weight.uniform_(0.5, 1.5)
        o, x = torch.randn(2, 7, fn.num_heads, fn.head_dim), torch.randn(2, 7, fn.hidden_size)
        normed = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + fn.o_norm.eps) * fn.o_norm.weight
        gated = normed * F.silu(x @ fn.g_proj.weight.T)[..., None]
        ref = torch.einsum("bthd,hde->bthe", gated, fn.o_proj.weight)
        assert (fn._readout(o, x) - ref).abs().max() < 1e-5


def test_training_after_inference_mode_in_a_fresh_process():
    """The chunk kernel caches its masks per chunk length; made under ``torch.inference_mode`` (a first call from
    generation code) they were inference tensors, and the next training step failed ("Inference tensors cannot be
    saved for backward"). A fresh interpreter, so that no earlier test has filled the cache."""
    import subprocess
    import sys

    code = """
import torch
from tests.conftest import make_ahn
model = make_ahn("qwen2", "gdn", sliding_window=8, num_sinks=3).float()
ids = torch.randint(3, 300, (1, 80), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    model(ids, use_cache=False)
model.train()
model(ids, use_cache=False).logits.float().pow(2).mean().backward()
assert any(p.grad is not None for p in model.ahn_parameters())
print("ok")
"""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_gdn_gates_made_once_follow_every_change_of_their_parameters():
    """GDN keeps its stacked gate weight and ``-exp(A_log)`` between decoding steps (``derived_from_parameters``);
    an in-place change (an optimiser step, ``load_state_dict``), a new dtype, or a gradient must make them afresh."""
    torch.manual_seed(0)
    fn = build_memory("gdn", 24, 3, 8)
    x = torch.randn(2, 5, 24)

    def reference():
        ba = x @ torch.cat([fn.b_proj.weight, fn.a_proj.weight]).T
        g = -fn.A_log.float().exp() * F.softplus(ba[..., 3:] + fn.dt_bias)
        return torch.stack([torch.sigmoid(ba[..., :3]), g], dim=-2)

    with torch.inference_mode():
        first = fn.write_gates(x)
    assert torch.equal(first, reference())
    with torch.no_grad():
        fn.A_log.add_(0.5)
        fn.a_proj.weight.mul_(-2)
    with torch.inference_mode():
        assert torch.equal(fn.write_gates(x), reference()) and not torch.allclose(fn.write_gates(x), first)
    fn.load_state_dict({k: v * 1.5 if k.endswith("b_proj.weight") else v for k, v in fn.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(fn.write_gates(x), reference())
    fn.double()
    x = x.double()
    with torch.no_grad():
        assert fn.write_gates(x).dtype == torch.float32 and torch.allclose(fn.write_gates(x), reference().float())
    fn.float()
    x = x.float()
    with torch.no_grad():
        fn.write_gates(x)  # kept, without a graph
    fn.write_gates(x).sum().backward()  # a gradient: through the parameters, not the kept tensors
    assert all(p.grad is not None for p in (fn.b_proj.weight, fn.a_proj.weight, fn.A_log))
