"""The layer-local objective read in chunks (training/sequence_split.py) against the whole-sequence step."""

from __future__ import annotations

import pytest
import torch

from modeling_ahn.training.distill import DistillConfig, distill
from modeling_ahn.training.layer_local import layer_local_losses, record_teacher
from modeling_ahn.training.sequence_split import gradient_carrier, split_layer_local

from .conftest import make_ahn
from .test_distill import corpus, distill_cfg, same_adapter, train_log  # noqa: F401  (corpus: a fixture)

T = 61


def _whole(model, ids, mask):
    params = [p for p in model.ahn_parameters() if p.requires_grad]
    losses = layer_local_losses(model, record_teacher(model, ids, mask), mask)
    loss = sum(losses.values()) / len(losses)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), {p: g if g is not None else torch.zeros_like(p) for p, g in zip(params, grads)}, losses


@pytest.mark.parametrize("arch, ahn_type", [("qwen2", "gdn"), ("llama", "mamba2"), ("qwen3", "dn")])
@pytest.mark.parametrize("padded", [False, True])
def test_the_loss_is_the_whole_sequence_loss_at_every_chunk_size(arch, ahn_type, padded):
    """Loss (per layer and mean) equal to the whole-sequence step within 1e-5 relative at chunk sizes from one token
    to more than the sequence; the gradient equal (1e-5 of its scale) when one chunk covers the sequence and, with
    the gradient stopped at chunk boundaries, still pointing the same way (cosine > 0.9) for shorter chunks."""
    model = make_ahn(arch, ahn_type, sliding_window=8, num_sinks=3).float().train()
    ids = torch.randint(3, 300, (2, T), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 50:] = 0
    ref, gref, per_ref = _whole(model, ids, mask)
    scale = max(float(g.abs().max()) for g in gref.values())
    flat_ref = torch.cat([g.flatten() for g in gref.values()])
    for chunk in (T, T + 39, 16, 7, 1):
        loss, grads, per = split_layer_local(model, ids, mask, chunk)
        assert float(loss) == pytest.approx(float(ref), rel=1e-5), chunk
        layer_losses = [float(per[i].detach()) for i in sorted(per)]
        assert layer_losses == pytest.approx([float(per_ref[i].detach()) for i in sorted(per_ref)], rel=1e-5)
        flat = torch.cat([grads[p].flatten() for p in gref])
        if chunk >= T:
            assert float((flat - flat_ref).abs().max()) <= 1e-5 * scale, chunk
        else:
            assert float(torch.nn.functional.cosine_similarity(flat, flat_ref, dim=0)) > 0.9, chunk


def test_the_gradient_carrier_backpropagates_the_split_gradient():
    model = make_ahn("qwen2", "gdn", sliding_window=8, num_sinks=3).float().train()
    ids = torch.randint(3, 300, (1, T), generator=torch.Generator().manual_seed(1))
    loss, grads, _ = split_layer_local(model, ids, None, 16)
    carrier = gradient_carrier(grads, loss)
    assert float(carrier) == float(loss)
    carrier.backward()
    assert all(torch.equal(p.grad, g) for p, g in grads.items())


def test_distill_with_a_chunk_covering_the_sequence_equals_the_whole_sequence_step(corpus, tmp_path):  # noqa: F811
    kw = dict(objective="layer-local", max_steps=6, eval_every=1000, save_every=100, lr=3e-3)
    whole = distill(distill_cfg(corpus, tmp_path / "whole", **kw), progress=False)
    split = distill(distill_cfg(corpus, tmp_path / "split", sequence_chunk=128, **kw), progress=False)
    losses = lambda d: [r["loss"] for r in train_log(d) if "loss" in r]  # noqa: E731
    assert losses(tmp_path / "split") == pytest.approx(losses(tmp_path / "whole"), rel=1e-5)
    assert same_adapter(whole, split, tol=1e-5)
    chunked = distill(distill_cfg(corpus, tmp_path / "chunked", sequence_chunk=24, **kw), progress=False)
    assert losses(tmp_path / "chunked")[0] == pytest.approx(losses(tmp_path / "whole")[0], rel=1e-5)  # same start
    assert not same_adapter(whole, chunked, tol=1e-7)  # shorter chunks: the truncated gradient
    assert "sequence chunk" in (chunked / "README.md").read_text()


def test_sequence_chunk_settings_are_checked():
    base = dict(base="b", data=["d"], output_dir="o")
    with pytest.raises(ValueError, match="use --objective layer-local"):
        DistillConfig(**base, sequence_chunk=64).validate()
    with pytest.raises(ValueError, match="cannot be combined"):
        DistillConfig(**base, sequence_chunk=64, objective="layer-local", content_weight=1.0).validate()
    with pytest.raises(ValueError, match=">= 1 token"):
        DistillConfig(**base, sequence_chunk=0, objective="layer-local").validate()
