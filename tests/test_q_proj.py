"""The official ``use_q_proj`` option: each memory reads with a learned per-head projection of the query before
RoPE (``model.layers.{i}.ahn.fn.q_proj.weight`` ``(H, D, D)``), rotated again."""

from __future__ import annotations

import pytest
import torch

from modeling_ahn.attention_ahn import get_layer_spec
from modeling_ahn.memory_ahn import rotate, unrotate

from .conftest import AHN_TYPES, make_ahn, random_ids, random_projections
from .reference import LayerRecorder

W, S = 5, 2




def test_unrotate_inverts_rope_also_with_an_attention_scaling():
    x = torch.randn(2, 3, 7, 8)
    ang = torch.rand(2, 1, 7, 4) * 6
    ang = torch.cat([ang, ang], -1)
    for scale in (1.0, 1.7):
        cos, sin = ang.cos() * scale, ang.sin() * scale
        assert torch.allclose(unrotate(rotate(x, cos, sin), cos, sin), x, atol=1e-5)


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_a_fresh_q_proj_reads_exactly_as_none(ahn_type):
    ref = make_ahn("qwen2", ahn_type, W, S)
    model = make_ahn("qwen2", ahn_type, W, S, use_q_proj=True)
    assert {k for k in model.ahn_state_dict()} - {k for k in ref.ahn_state_dict()} == {
        f"model.layers.{i}.ahn.fn.q_proj.weight" for i in range(2)}
    model.load_ahn_state_dict({**model.ahn_state_dict(), **ref.ahn_state_dict()})
    ids = random_ids(30)
    with torch.no_grad():
        assert (model(ids, use_cache=False).logits - ref(ids, use_cache=False).logits).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_q_proj_projects_the_raw_query_then_rotates(arch):
    """The memory's read query is RoPE(q_proj(W_q x + b)): recomputed here from the layer input with the base's
    own projection and rotary embedding."""
    model = random_projections(make_ahn(arch, "gdn", W, S, use_q_proj=True))
    ids = random_ids(20)
    with torch.no_grad(), LayerRecorder() as rec:
        model(ids, use_cache=False)
    call = rec.calls[0]
    attn = call["module"]
    spec = get_layer_spec(attn)
    B, H, T, D = call["query"].shape
    raw = attn.q_proj(call["hidden"]).view(B, T, H, D)  # [B, T, H, D] before RoPE
    proj = torch.einsum("bthd,hde->bthe", raw, spec.memory.q_proj.weight).transpose(1, 2)
    cos, sin = model.model.rotary_emb(raw, torch.arange(T)[None].expand(B, -1))
    expected = rotate(proj, cos[:, None], sin[:, None])
    got = spec.memory.read_query(call["query"], (cos, sin))
    assert torch.allclose(got, expected, atol=1e-5)


# Every execution path with q_proj (chunked prefill, decoding, static cache) and the save/load round trip:
# tests/test_memory_options.py, with the other memory options.
