"""`ahn bench --profile` (benchmarking/breakdown.py) and the memory's op budget (issue 38): the memory's prefill work
in a few large ops, counted machine-independently as dispatched ATen ops."""

from __future__ import annotations

import json

import torch

from modeling_ahn.benchmarking.breakdown import REGIONS, RegionTracker, profile_model, table
from modeling_ahn.cli.main import main as cli_main
from modeling_ahn.memory_ahn import TORCH_CHUNK_SIZE
from modeling_ahn.modeling_ahn import CACHE_KWARG, AhnForCausalLM

from .conftest import make_base


def test_profile_splits_time_and_ops_by_region(tmp_path):
    res = profile_model("random:tiny", length=512, dtype="float32", window=32, sinks=4, chunk=256, decode=2,
                        layers=2, profiler=True)
    ahn, swa = res["ahn"], res["swa"]
    assert res["settings"]["layers"] == 2 and res["machine"]["cpu_features"] is not None
    # memory off: no memory work at all; memory on: some in prefill and in every decoding step
    assert all(swa[p]["ops"]["memory"] == 0 == swa[p]["ms"]["memory"] for p in ("prefill", "decode"))
    assert ahn["prefill"]["ops"]["memory"] > 0 and ahn["decode"]["ops"]["memory"] > 0
    # the base's own work is found in both modes, and the region times add up to no more than the wall time
    for mode in (ahn, swa):
        assert mode["prefill"]["ops"]["linear"] > 0 and mode["prefill"]["ops"]["attention"] > 0
        units = 2 * 512 / 2048
        assert sum(mode["prefill"]["ms"][r] for r in REGIONS) * units <= 1000 * mode["prefill_s"] * 1.001
    assert res["summary"]["profiler_events_ahn_minus_swa_per_layer_2k"] > 0
    assert res["summary"]["memory_ops_per_layer_2k"] == ahn["prefill"]["ops"]["memory"]
    text = table(res)
    assert "memory ops" in text and "AHN / memory off" in text


def test_bench_profile_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert cli_main(["bench", "--profile", "--base", "random:tiny", "--lengths", "256", "--window", "32",
                          "--sinks", "4", "--chunk", "128", "--decode", "1", "--layers", "1", "--repeats", "1",
                          "--dtype", "float32", "--device", "cpu", "--methods", "full,ahn_dn", "--out", str(out)]) == 0
    res = json.loads(out.read_text())  # one breakdown per AHN method (full attention has no memory to profile)
    assert len(res) == 1 and res[0]["settings"]["method"] == "ahn_dn" and res[0]["settings"]["layers"] == 1
    assert "per layer and" in capsys.readouterr().out


def _memory_ops(ahn_type, tokens=2048):
    """Dispatched ATen ops inside each memory during one steady prefill call of ``tokens`` tokens (every token of
    the call leaves the window), per layer."""
    torch.manual_seed(0)
    model = AhnForCausalLM.from_base(make_base("qwen2"), ahn_type=ahn_type, sliding_window=32, num_sinks=4,
                                     prefill_chunk_size=None).eval()
    tracker = RegionTracker(model)
    ids = torch.randint(3, 100, (1, 2 * tokens))
    with torch.inference_mode():
        cache = model.new_cache()
        model(input_ids=ids[:, :tokens], **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1)
        with tracker.counting_ops():
            tracker.start()
            model(input_ids=ids[:, tokens:], **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1)
    tracker.remove()
    return tracker.ops["memory"] / len(model.ahn_modules())


def test_memory_prefill_fits_the_op_budget():
    """Issue 38: <= 300 memory ops per layer per 2,048 prefill tokens (the chunked kernel, gates and read-out; it
    was 785 before the chunk loop was cut to three in-place ops per chunk). The sequential loop alone is
    3 * 2048 / TORCH_CHUNK_SIZE = 192 of them (two for DeltaNet, whose chunks do not decay)."""
    for ahn_type in ("gdn", "dn", "mamba2"):
        ops = _memory_ops(ahn_type)
        assert 2048 // TORCH_CHUNK_SIZE < ops <= 300, (ahn_type, ops)
