# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""The layer-local objective over a long sequence in chunks: ``ahn distill --objective layer-local --sequence-chunk N``.

The whole-sequence step (``training/layer_local.py``) records every layer's queries, keys, values, input and
full-attention output for the whole sequence before any loss is formed: its memory grows with length x layers. Here
the sequence goes through the model ``N`` tokens at a time, teacher-forced in one pass per chunk: in every AHN layer
the attention call computes

* the teacher's full-attention output over all keys so far (kept per layer: only keys and values grow with length),
  which is what the layer passes on, so every later layer sees the teacher's residual stream;
* the student's sinks + window + memory output from the model's own chunked-prefill path (an ``AhnCache``, memory
  state and window carried from chunk to chunk), and the sinks + window output alone (a second cache);

and the chunk's terms of ``loss_l = sum_t |o_proj(y_student - y_full)|^2 / sum_t |o_proj(y_full - y_window)|^2``
(positions ``t >= S + W``). Each layer's chunk numerator is differentiated inside its attention call
(``torch.autograd.grad``) and its graph dropped; the memory state and the window's write gates carried into the next
chunk are detached (truncated backpropagation through time: a chunk's loss does not reach the writes of earlier
chunks). Since layer ``l``'s loss reaches only layer ``l``'s AHN (the stream is the teacher's), each layer's
gradient is scaled by its denominator once the whole sequence is read. The loss is exactly the whole-sequence
step's; the gradient is too when ``N`` covers the sequence. Not part of the remote-code payload.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..attention_ahn import LayerInputs
from ..modeling_ahn import CACHE_KWARG
from .layer_local import ahn_layers


def _detach_cache(cache) -> None:
    """Cut the graph between chunks: every tensor a cache layer carries (state, write gates) is detached."""
    for layer in cache.layers:
        for name, value in vars(layer).items():
            if isinstance(value, torch.Tensor) and value.requires_grad:
                setattr(layer, name, value.detach())


@contextlib.contextmanager
def _no_activation_checkpointing(model):
    """Layers run once: a checkpointed layer would recompute its forward (and this step's attention calls) when the
    per-layer gradient taken inside it reads what it saved. Nothing here keeps a graph across layers anyway."""
    flags = {m: m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")}
    try:
        for m in flags:
            m.gradient_checkpointing = False
        yield
    finally:
        for m, flag in flags.items():
            m.gradient_checkpointing = flag


def _teacher_attention(query, keys, values, scaling):
    """Causal attention of a chunk's queries ``[B, H, q, D]`` (the last ``q`` positions) over all keys so far
    ``[B, Hkv, kv, D]``; returns ``[B, q, H, D]``. The mask is a ``[q, kv]`` boolean (no position matrices), and
    SDPA does not materialise the scores. Right padding needs no mask: a real query sees no later key."""
    q_len, kv_len = query.shape[2], keys.shape[2]
    visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    out = F.scaled_dot_product_attention(query, keys.to(query.dtype), values.to(query.dtype), attn_mask=visible,
                                         scale=scaling, enable_gqa=True)
    return out.transpose(1, 2)


def _dense(weight: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter that FSDP2 may hold sharded (a ``DTensor``: gathered, on every process)."""
    from torch.distributed.tensor import DTensor

    return weight.full_tensor() if isinstance(weight, DTensor) else weight


@torch.no_grad()
def split_layer_local(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, chunk: int
                      ) -> tuple[torch.Tensor, dict, dict[int, torch.Tensor]]:
    """``(mean loss, {parameter: gradient of the mean loss}, {layer: loss})`` of the layer-local objective at the
    model's current window and sinks, reading ``input_ids`` ``chunk`` tokens at a time (see the module docstring).
    Right padding only (``attention_mask`` zeros at the ends of rows), as ``ahn distill`` collates.

    Each layer's chunk terms are differentiated inside its attention call, against its ``o_proj`` weight as a plain
    tensor (gathered when FSDP2 shards it): the gradient passes through no FSDP unit, so every process runs the same
    collectives whatever its window, and the graph held is one layer's of one chunk."""
    W, S = model.config.sliding_window, model.config.num_sinks
    B, T = input_ids.shape
    if chunk < 1:
        raise ValueError(f"split chunk must be >= 1 token, got {chunk}")
    if T <= S + W:
        raise ValueError(f"sequences of {T} tokens leave nothing to memory at window {W} + {S} sinks")
    layers = list(ahn_layers(model))
    params = {i: [p for p in model.model.layers[i].ahn.parameters() if p.requires_grad] for i, _, _ in layers}
    grads = {p: torch.zeros_like(p) for ps in params.values() for p in ps}
    num = {i: input_ids.new_zeros((), dtype=torch.float64) for i, _, _ in layers}
    den = {i: input_ids.new_zeros((), dtype=torch.float64) for i, _, _ in layers}
    seen_k, seen_v = {}, {}
    student, window_only = model.new_cache(), model.new_cache()
    originals = {}
    span = {}

    def hook(module, query, key, value, mask, *args, _i, _spec, _attend, **kwargs):
        inputs = _spec.inputs
        q_len = query.shape[2]
        new_k, new_v = key[:, :, -q_len:], value[:, :, -q_len:]
        seen_k[_i] = new_k if _i not in seen_k else torch.cat([seen_k[_i], new_k], dim=-2)
        seen_v[_i] = new_v if _i not in seen_v else torch.cat([seen_v[_i], new_v], dim=-2)
        scaling = kwargs.get("scaling")
        teacher = _teacher_attention(query, seen_k[_i], seen_v[_i], scaling)
        start, end = span["start"], span["end"]
        keep = slice(max(0, S + W - start), None)  # this chunk's positions t >= S + W
        with torch.enable_grad():
            out, _ = _attend(module, query, key, value, mask, *args, **kwargs)  # the student: "ahn" mode
        # sinks + window alone, on the second cache, for the denominator
        layer = window_only.layers[module.layer_idx]
        k_w, v_w = layer.update(new_k, new_v)
        previous, _spec.mode = _spec.mode, "swa"
        try:
            _spec.inputs = LayerInputs(inputs.hidden, window_only, inputs.rotation)
            window, _ = _attend(module, query, k_w, v_w, mask, *args, **kwargs)
        finally:
            _spec.mode = previous
        valid = None if mask is None else mask[:, start:end][:, keep].to(torch.bool)
        weight = _dense(module.o_proj.weight)  # [hidden, H * D]; a bias cancels in these differences
        delta = (teacher - window)[:, keep].flatten(-2) @ weight.T
        with torch.enable_grad():
            err = (out - teacher)[:, keep].flatten(-2) @ weight.T
            if valid is not None:
                delta, err = delta[valid], err[valid]
            term = err.float().pow(2).sum()
            if term.requires_grad and params[_i]:
                for p, g in zip(params[_i], torch.autograd.grad(term, params[_i], allow_unused=True)):
                    if g is not None:
                        grads[p] += g
        num[_i] += term.detach().double()
        den[_i] += delta.double().pow(2).sum()
        return teacher, None

    for i, _, spec in layers:
        originals[i] = spec.attention
        spec.attention = lambda *a, _i=i, _spec=spec, _attend=spec.attention, **k: hook(
            *a, _i=_i, _spec=_spec, _attend=_attend, **k)
    try:
        with model.runtime(mode="ahn"), _no_activation_checkpointing(model):
            for start in range(0, T, chunk):
                end = min(T, start + chunk)
                span.update(start=start, end=end)
                model.model(input_ids=input_ids[:, start:end],
                            attention_mask=None if attention_mask is None else attention_mask[:, :end],
                            position_ids=torch.arange(start, end, device=input_ids.device).expand(B, -1),
                            use_cache=True, **{CACHE_KWARG: student})
                _detach_cache(student)
    finally:
        for i, _, spec in layers:
            spec.attention = originals[i]
    n = len(layers)
    losses = {i: (num[i] / den[i].clamp_min(1e-12)).float() for i, _, _ in layers}
    for i, _, _ in layers:
        for p in params[i]:
            grads[p] /= den[i].clamp_min(1e-12).to(grads[p].dtype) * n
    return sum(losses.values()) / n, grads, losses


def gradient_carrier(grads: dict, value: torch.Tensor) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient with respect to each parameter ``p`` in ``grads`` is
    ``grads[p]``: what the training step backpropagates (through DDP or FSDP2) for a loss already differentiated."""
    with torch.enable_grad():
        carrier = sum((p * g.detach()).sum() for p, g in grads.items())
    return carrier - carrier.detach() + value.detach()


__all__ = ["gradient_carrier", "split_layer_local"]
