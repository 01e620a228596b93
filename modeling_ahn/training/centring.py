# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``value_centring``'s starting point: each memory's ``v_mean`` set to the mean value its layer writes.

A memory whose values share a mean ``m`` adds ``k m^T`` with every write; what it returns then has a component
along ``m`` for every document, which the read-out's RMSNorm scales up as much as the content. Training from a
zero-initialised read-out finds that document-independent direction first (docs/content_memory.md). Centring the
values removes it from the state; this sets the centre once, from the layer's own values on training text,
before the first step (a fresh run; a resumed run reads it from its checkpoint).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def init_value_means(model, sequences, progress: bool = False) -> dict[int, torch.Tensor]:
    """Set every memory's ``v_mean`` ``(H, D)`` to the mean of the values it writes over ``sequences`` (token id
    tensors ``[B, T]`` or ``(ids, attention_mask)`` pairs), each query head the mean of its KV head; returns the
    means by layer. Raises if the model's memories have no ``value_centring`` or no token was written."""
    memories = {i: m.fn for i, m in model.ahn_modules().items()}
    if not memories or any(fn.v_mean is None for fn in memories.values()):
        raise ValueError("init_value_means needs memories built with value_centring=True")
    sums = {i: 0.0 for i in memories}
    counts = {i: 0.0 for i in memories}

    def hook(i):
        def pre(module, args):
            _, _, values, _, valid = args[:5]  # values [B, Hkv, T, D], valid [B, T]
            w = valid.to(torch.float64)[:, None, :, None]
            sums[i] = sums[i] + (values.to(torch.float64) * w).sum(dim=(0, 2))  # [Hkv, D]
            counts[i] += float(valid.sum())

        return pre

    from tqdm.auto import tqdm

    handles = [fn.register_forward_pre_hook(hook(i)) for i, fn in memories.items()]
    try:
        for item in tqdm(list(sequences), desc="value means", disable=not progress):
            ids, mask = item if isinstance(item, tuple) else (item, None)
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    means = {}
    for i, fn in memories.items():
        if not counts[i]:
            raise ValueError(f"layer {i}: no token left the window in these sequences; give sequences longer than "
                             f"sinks + window")
        mean = (sums[i] / counts[i]).repeat_interleave(fn.num_heads // sums[i].shape[0], dim=0)
        fn.v_mean.copy_(mean.to(fn.v_mean.dtype))
        means[i] = fn.v_mean.detach().clone()
    return means
