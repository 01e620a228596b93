"""The cache holds what ``cache_bytes`` says: after a prefill no tensor of an AHN layer keeps a larger buffer alive
(a slice of the step's concatenated keys kept the whole chunk's storage, and the memory's final state a view of the
chunk kernel's per-chunk state buffer: ~7 MB per layer of SmolLM2 for a 147 KB state)."""

from __future__ import annotations

import pytest
import torch

from modeling_ahn.cache_ahn import SinkWindowLayer
from modeling_ahn.modeling_ahn import CACHE_KWARG, AhnForCausalLM

from .conftest import make_base


def _held_bytes(layer: SinkWindowLayer) -> int:
    """Bytes of the distinct storages behind the layer's tensors."""
    storages = {}
    for t in vars(layer).values():
        if torch.is_tensor(t) and t.numel():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("ahn_type", ["gdn", "dn", "mamba2"])
@pytest.mark.parametrize("chunk", [None, 100])
def test_prefill_leaves_no_larger_buffer_alive(ahn_type, chunk):
    torch.manual_seed(0)
    model = AhnForCausalLM.from_base(make_base("qwen2"), ahn_type=ahn_type, sliding_window=16, num_sinks=4,
                                     prefill_chunk_size=chunk).eval()
    ids = torch.randint(3, 100, (1, 300))
    with torch.no_grad():
        cache = model.new_cache()
        model(input_ids=ids, **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1)
    for layer in cache.layers:
        assert layer.recurrent_state is not None
        assert _held_bytes(layer) == layer.state_bytes(), [
            (n, t.untyped_storage().nbytes(), t.nbytes) for n, t in vars(layer).items() if torch.is_tensor(t)]
