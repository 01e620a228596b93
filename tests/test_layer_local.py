"""The layer-local objective: teacher-forced, per-layer, no gradient through the base (training/layer_local.py)."""

from __future__ import annotations

import pytest
import torch

from modeling_ahn.training.layer_local import layer_local_losses, layer_local_step, record_teacher

from .conftest import AHN_TYPES, make_ahn
from .reference import LayerRecorder

W, S = 6, 2


def _ids(n, batch=2, seed=0):
    return torch.randint(3, 300, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_the_teacher_is_the_base_with_full_attention():
    model = make_ahn("qwen2", "gdn", W, S)
    ids = _ids(30)
    records = record_teacher(model, ids)
    assert sorted(records) == list(range(len(model.model.layers)))
    with torch.no_grad(), model.attention_mode("full"), LayerRecorder() as rec:
        model(ids, use_cache=False)
    for i, call in enumerate(rec.calls):
        assert torch.equal(records[i].target, call["out"]) and torch.equal(records[i].hidden, call["hidden"])


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_an_untrained_memory_leaves_all_of_delta(ahn_type):
    model = make_ahn("llama", ahn_type, W, S, random_ahn=False)  # o_proj = 0: the student is sinks + window
    losses = layer_local_losses(model, record_teacher(model, _ids(30)))
    assert all(abs(float(v) - 1.0) < 1e-6 for v in losses.values()), losses


def test_the_student_is_the_models_own_layer_on_the_teachers_input():
    """Layer 0 sees the same input in teacher and student, so the objective's student there is exactly the AHN
    model's own layer 0 (the production whole-sequence path): its loss, recomputed from the outputs of two ordinary
    forwards (mode "ahn" and mode "swa"), is the same number."""
    model = make_ahn("qwen2", "gdn", W, S)
    ids = _ids(30)
    records = record_teacher(model, ids)
    with torch.no_grad(), LayerRecorder() as ahn:
        model(ids, use_cache=False)
    with torch.no_grad(), model.attention_mode("swa"), LayerRecorder() as swa:
        model(ids, use_cache=False)
    o_proj = model.model.layers[0].self_attn.o_proj.weight
    keep = slice(S + W, None)
    target = records[0].target
    err = ((ahn.calls[0]["out"] - target)[:, keep].flatten(-2) @ o_proj.T).pow(2).sum()
    delta = ((target - swa.calls[0]["out"])[:, keep].flatten(-2) @ o_proj.T).pow(2).sum()
    loss0 = layer_local_losses(model, records)[0]
    assert torch.allclose(loss0, err / delta, rtol=1e-5), (float(loss0), float(err / delta))


def test_only_the_ahn_gets_gradients_and_the_loss_goes_down():
    torch.manual_seed(0)
    model = make_ahn("qwen2", "gdn", W, S, random_ahn=False)
    params = list(model.ahn_parameters())
    opt = torch.optim.Adam(params, lr=3e-2)
    ids = _ids(40, batch=1)
    first, _ = layer_local_step(model, ids)
    assert abs(first - 1.0) < 1e-6
    frozen = [p for n, p in model.named_parameters() if ".ahn." not in n]
    assert all(p.grad is None for p in frozen)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    for _ in range(30):
        opt.step()
        opt.zero_grad()
        loss, per_layer = layer_local_step(model, ids)
    assert loss < 0.8 * first, (first, loss, per_layer)


def test_padding_is_left_out():
    model = make_ahn("llama", "gdn", W, S)
    ids = _ids(30)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    losses = layer_local_losses(model, record_teacher(model, ids, mask), mask)
    assert all(torch.isfinite(v) for v in losses.values())


def test_too_short_a_sequence_is_refused():
    model = make_ahn("llama", "gdn", W, S)
    with pytest.raises(ValueError, match="nothing to memory"):
        layer_local_step(model, _ids(W + S))


def test_the_memory_only_mode_refuses_a_cached_call():
    from modeling_ahn.attention_ahn import MEMORY_ONLY, get_layer_spec

    model = make_ahn("qwen2", "gdn", W, S)
    for layer in model.model.layers:
        get_layer_spec(layer.self_attn).mode = MEMORY_ONLY
    with torch.no_grad(), pytest.raises(ValueError, match="whole sequences only"):
        model(_ids(20), use_cache=True)


def _pair(n=40, prefix=16, seed=0):
    """A sequence and the same with its tokens [S, prefix) from another one."""
    from modeling_ahn.evaluation.calibration import first_unswapped_query, swap_evicted

    a, b = _ids(n, batch=2, seed=seed).tolist()
    return torch.tensor([a]), torch.tensor([swap_evicted(a, b, S, prefix)]), first_unswapped_query(prefix, W)


def test_the_content_loss_is_one_for_a_memory_that_ignores_what_it_read():
    """The content loss cancels whatever the memory adds regardless of the document: an untrained memory and one
    read the same document twice has nothing to carry (loss 0, not a division by zero), and training on the pair
    takes the loss below 1 (the memory then carries the far context)."""
    from modeling_ahn.training.layer_local import layer_local_contrast_losses

    torch.manual_seed(0)
    model = make_ahn("qwen2", "gdn", W, S, random_ahn=False)
    a, b, start = _pair()
    ra, rb = record_teacher(model, a), record_teacher(model, b)
    losses = layer_local_contrast_losses(model, ra, rb, start)
    assert all(abs(float(v) - 1.0) < 1e-6 for v in losses.values()), losses
    # the same document twice: no far-context difference to carry; a random memory's read-outs cancel exactly
    same = make_ahn("qwen2", "gdn", W, S)
    ra2 = record_teacher(same, a)
    for v in layer_local_contrast_losses(same, ra2, ra2, start).values():
        assert float(v) == 0.0
    params = list(model.ahn_parameters())
    opt = torch.optim.Adam(params, lr=3e-2)
    for _ in range(40):
        loss = sum(layer_local_contrast_losses(model, ra, rb, start).values()) / len(losses)
        loss.backward()
        assert all(p.grad is None for n, p in model.named_parameters() if ".ahn." not in n)
        opt.step()
        opt.zero_grad()
    assert float(loss) < 0.9, float(loss)


def test_the_far_normalised_content_loss_starts_at_the_document_share():
    """normalise='far' (what `ahn distill --content-weight` trains): the same error over the layer's whole far part,
    so an untrained memory starts at |c|^2 / |delta|^2 (< 1: the document is part of what the window misses)."""
    from modeling_ahn.training.layer_local import layer_local_contrast_losses, layer_local_contrast_terms

    torch.manual_seed(0)
    model = make_ahn("qwen2", "gdn", W, S, random_ahn=False)
    a, b, start = _pair()
    ra, rb = record_teacher(model, a), record_teacher(model, b)
    far = layer_local_contrast_losses(model, ra, rb, start, normalise="far")
    for i, (err, c_sum, far_sum) in layer_local_contrast_terms(model, ra, rb, start).items():
        assert float(err) == pytest.approx(float(c_sum), rel=1e-6)  # nothing carried: the error is all of c
        assert float(far[i]) == pytest.approx(float(c_sum / far_sum), rel=1e-6) and 0 < float(far[i]) < 1
    with pytest.raises(ValueError, match="normalise must be 'content' or 'far'"):
        layer_local_contrast_losses(model, ra, rb, start, normalise="delta")
