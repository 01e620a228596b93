# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Layer-local attention transfer: the objective ``ahn distill --objective layer-local``.

Each AHN layer is trained to supply what window + sinks attention misses of that layer's full-attention output:
the part that came from the evicted tokens, ``delta = y_full - y_window`` (before the base ``o_proj``). It is
*teacher-forced*: one no-grad forward of the frozen base with full attention yields every layer's pre-normed input,
its q/k/v (after the base's norms and RoPE) and its full-attention output; then, layer by layer, the student's
window + sinks attention plus its AHN read-out is computed from the teacher's inputs by the model's own attention
code (the whole-sequence path, exactly what inference runs), and

    loss_l = sum_t |o_proj(y_student_t - y_full_t)|^2 / sum_t |o_proj(y_full_t - y_window_t)|^2

over the positions whose memory is not empty (``t >= S + W``): the share of the layer's far-context contribution
(measured where it enters the residual stream) that the memory does not yet reproduce. An untrained AHN (``o_proj``
zero) has ``loss_l = 1`` in every layer. No gradient passes through the frozen base and no LM head runs, so a step
costs one base forward plus, per layer, two window attentions and the memory's forward and backward (the
end-to-end KL objective backpropagates through every layer of the student). Tooling, not payload.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention_ahn import MEMORY_ONLY, LayerInputs, get_layer_spec


@dataclass
class LayerRecord:
    """One layer of the teacher's forward: the inputs of its attention function and its output."""

    query: torch.Tensor  # [B, H, T, D], after the base's q norm and RoPE
    key: torch.Tensor  # [B, Hkv, T, D]
    value: torch.Tensor
    hidden: torch.Tensor  # [B, T, hidden]: the layer's pre-normed input (the AHN gates are computed from it)
    rotation: tuple | None  # RoPE's (cos, sin) [B, T, D] of the positions (the memory's q_proj reads before RoPE)
    target: torch.Tensor  # [B, T, H, D]: full attention's output, before o_proj
    scaling: float | None


def ahn_layers(model):
    """``(index, attention module, spec)`` of every layer with a memory."""
    for i, layer in enumerate(model.model.layers):
        spec = get_layer_spec(layer.self_attn)
        if spec is not None and spec.memory is not None:
            yield i, layer.self_attn, spec


@torch.no_grad()
def record_teacher(model, input_ids, attention_mask=None) -> dict[int, LayerRecord]:
    """One full-attention forward of the base's decoder (no LM head), recording every AHN layer's attention call."""
    records, originals = {}, {}
    for i, _, spec in ahn_layers(model):
        originals[i] = spec.attention

        def recording(module, query, key, value, mask, *args, _i=i, _spec=spec, _attend=spec.attention, **kwargs):
            inputs = _spec.inputs
            out, weights = _attend(module, query, key, value, mask, *args, **kwargs)
            records[_i] = LayerRecord(query, key, value, inputs.hidden, inputs.rotation, out, kwargs.get("scaling"))
            return out, weights

        spec.attention = recording
    try:
        with model.runtime(mode="full"):
            model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for i, _, spec in ahn_layers(model):
            spec.attention = originals[i]
    return records


def project(attn, x: torch.Tensor) -> torch.Tensor:
    """``x @ o_proj.weight.T``: a difference of attention outputs as it enters the residual stream. Called as the
    module (not through its weight), so that a sharded base (``training/sharding.py``) gathers it; a bias cancels."""
    out = attn.o_proj(x)
    if attn.o_proj.bias is not None:
        out = out - attn.o_proj(x.new_zeros(x.shape[-1]))
    return out


def layer_output(spec, attn, record: LayerRecord, mask, mode: str):
    """The layer's attention output from the teacher's inputs, in ``mode``: ``"swa"`` (window + sinks), ``"ahn"``
    (plus the memory) or ``MEMORY_ONLY`` (the memory's read-out alone)."""
    previous, spec.mode = spec.mode, mode
    try:
        spec.inputs = LayerInputs(record.hidden, None, record.rotation)
        out, _ = spec.attention(attn, record.query, record.key, record.value, mask, scaling=record.scaling)
    finally:
        spec.mode = previous
    return out


@torch.no_grad()
def layer_local_parts(model, input_ids, attention_mask=None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per AHN layer, ``(y_full, y_window)`` ``[B, T, H, D]``: the teacher's full-attention output and the sinks +
    window attention of the same inputs (their difference is what the memory is trained to supply)."""
    records = record_teacher(model, input_ids, attention_mask)
    return {i: (records[i].target, layer_output(spec, attn, records[i], attention_mask, "swa"))
            for i, attn, spec in ahn_layers(model)}


def layer_local_losses(model, records: dict[int, LayerRecord], attention_mask=None) -> dict[int, torch.Tensor]:
    """Per-layer normalised losses (see the module docstring) at the model's current window and sinks; each one's
    graph reaches only its own layer's AHN parameters."""
    W, S = model.config.sliding_window, model.config.num_sinks
    losses = {}
    for i, attn, spec in ahn_layers(model):
        r = records[i]
        T = r.query.shape[2]
        if T <= S + W:
            raise ValueError(f"sequences of {T} tokens leave nothing to memory at window {W} + {S} sinks")
        keep = slice(S + W, None)
        valid = None if attention_mask is None else attention_mask[:, keep].to(torch.bool)
        with torch.no_grad():
            window = layer_output(spec, attn, r, attention_mask, "swa")
            delta = project(attn, (r.target - window)[:, keep].flatten(-2))
            if valid is not None:
                delta = delta[valid]
            norm = delta.float().pow(2).sum().clamp_min(1e-12)
        # the student's output is window + memory read-out (what mode "ahn" computes), its window part reused
        student = window + layer_output(spec, attn, r, attention_mask, MEMORY_ONLY)
        err = project(attn, (student - r.target)[:, keep].flatten(-2))
        if valid is not None:
            err = err[valid]
        losses[i] = err.float().pow(2).sum() / norm
    return losses


def layer_local_contrast_terms(model, records_a: dict[int, LayerRecord], records_b: dict[int, LayerRecord],
                               start: int, end: int | None = None
                               ) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer, the sums behind the content losses of a document pair that differ only in far context (``b`` is
    ``a`` with evicted tokens taken from another document, e.g. ``calibration.swap_evicted``): with
    ``c = delta_a - delta_b`` the document-dependent part of what the window misses and ``c_mem`` the same
    difference of the memory's read-outs, over the queries ``start <= t < end`` (``start``: the first query whose
    window holds no swapped token; ``end``: the end of the shortest sequence of a padded batch, default all),
    ``(sum |o_proj(c_mem - c)|^2`` (with its graph), ``sum |o_proj(c)|^2``, ``sum |o_proj(delta_a)|^2)``, all
    float32 scalar tensors (no host sync: the training step reads them once, when it logs)."""
    terms = {}
    for i, attn, spec in ahn_layers(model):
        parts = []
        for r in (records_a[i], records_b[i]):
            with torch.no_grad():
                window = layer_output(spec, attn, r, None, "swa")
            parts.append((r.target - window, layer_output(spec, attn, r, None, MEMORY_ONLY)))
        (delta_a, mem_a), (delta_b, mem_b) = parts
        with torch.no_grad():
            c = project(attn, (delta_a - delta_b)[:, start:end].flatten(-2))
            c_sum = c.float().pow(2).sum()
            far_sum = project(attn, delta_a[:, start:end].flatten(-2)).float().pow(2).sum()
        err = project(attn, (mem_a - mem_b)[:, start:end].flatten(-2)) - c
        terms[i] = (err.float().pow(2).sum(), c_sum, far_sum)
    return terms


def layer_local_contrast_losses(model, records_a: dict[int, LayerRecord], records_b: dict[int, LayerRecord],
                                start: int, end: int | None = None, normalise: str = "content"
                                ) -> dict[int, torch.Tensor]:
    """Per-layer content losses of a document pair (see :func:`layer_local_contrast_terms`):

        content: loss_l = sum |o_proj(c_mem - c)|^2 / sum |o_proj(c)|^2
        far:     loss_l = sum |o_proj(c_mem - c)|^2 / sum |o_proj(delta_a)|^2

    Whatever the memory adds regardless of what it read cancels in ``c_mem``. Normalised by the document part
    (``"content"``) the loss is 1 for sinks + SWA and for a pure bias, and below 1 only for a memory that carries
    the document (the held-out ``content`` share of ``benchmarks/memory_ab.py`` is ``1 - loss``). Normalised by the
    layer's whole far-context part (``"far"``, the attention-transfer loss's unit) it starts at the layer's
    document share ``|c|^2 / |delta|^2`` instead: layers whose far context is mostly the same whatever the document
    (a few per cent in SmolLM2's early layers) then weigh little, rather than contributing the noisy gradient of a
    ratio of two small numbers when all layers train at once."""
    _check_normalise(normalise)
    return normalised_contrast(layer_local_contrast_terms(model, records_a, records_b, start, end), normalise)


NORMALISATIONS = ("content", "far")


def _check_normalise(normalise: str) -> None:
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be 'content' or 'far', got {normalise!r}")


def normalised_contrast(terms: dict, normalise: str = "content") -> dict[int, torch.Tensor]:
    """The per-layer content losses of :func:`layer_local_contrast_losses` from already computed
    :func:`layer_local_contrast_terms` (one set of terms serves both normalisations)."""
    _check_normalise(normalise)
    pick = 1 if normalise == "content" else 2
    return {i: t[0] / t[pick].clamp_min(1e-12) for i, t in terms.items()}


def layer_local_step(model, input_ids, attention_mask=None, scale: float = 1.0) -> tuple[float, dict[int, float]]:
    """One teacher-forced step: record the teacher, backpropagate the mean of the per-layer losses (times
    ``scale``, e.g. ``1 / grad_accum``) into the AHN parameters. Returns ``(mean loss, {layer: loss})``."""
    losses = layer_local_losses(model, record_teacher(model, input_ids, attention_mask), attention_mask)
    mean = sum(losses.values()) / len(losses)
    (mean * scale).backward()
    return float(mean), {i: float(v) for i, v in losses.items()}


__all__ = ["LayerRecord", "ahn_layers", "layer_local_contrast_losses", "layer_local_contrast_terms",
           "layer_local_losses", "layer_local_parts", "layer_local_step", "layer_output", "normalised_contrast",
           "project", "record_teacher"]
