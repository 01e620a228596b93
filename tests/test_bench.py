"""`ahn bench` end to end on a tiny random model (each point runs in its own process)."""

from __future__ import annotations

import json
import math
import platform
import types
from pathlib import Path

import pytest
import torch

from modeling_ahn.benchmarking.bench import parse_length, run, table
from modeling_ahn.cli import main as cli_main
from modeling_ahn.memory_ahn import TORCH_CHUNK_SIZE, TORCH_SEGMENT


def _bench_script(name):
    """A script of ``benchmarks/`` (not a package) loaded as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_length():
    assert [parse_length(x) for x in ("1k", "64K", "512", "0.5k")] == [1024, 65536, 512, 512]


def test_bench_runs_every_method_and_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bench.json"
    res = run("random:tiny", [96, 320], ["full", "swa_hf", "sinks_swa", "ahn_gdn"], window=32, sinks=4, chunk=64,
              decode=3, dtype="float32", device="cpu", out=out, progress=False)
    rows = {(r["method"], r["length"]): r for r in res["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    assert json.loads(out.read_text())["machine"]["torch"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    # full attention's cache grows with the length; sinks+window caches do not
    assert rows[("full", 320)]["cache_bytes"] > 3 * rows[("full", 96)]["cache_bytes"]
    for m in ("sinks_swa", "ahn_gdn"):
        assert rows[(m, 320)]["cache_bytes"] == rows[(m, 96)]["cache_bytes"]
    assert rows[("ahn_gdn", 320)]["cache_bytes"] > rows[("sinks_swa", 320)]["cache_bytes"]  # + the state
    assert "ahn_gdn" in table(res)
    # resume: points already measured are not run again
    partial = out.with_suffix(".partial.jsonl")
    n = len(partial.read_text().splitlines())
    run("random:tiny", [96, 320], ["full", "ahn_gdn"], window=32, sinks=4, chunk=64, decode=3, dtype="float32",
        device="cpu", out=out, progress=False)
    assert len(partial.read_text().splitlines()) == n
    assert "reusing 4 point(s)" in capsys.readouterr().err  # said (full, ahn_gdn x 2 lengths): not taken as new
    # ... but a point measured with other settings is measured anew, not reused
    res2 = run("random:tiny", [96], ["ahn_gdn"], window=16, sinks=4, chunk=64, decode=3, dtype="float32",
               device="cpu", out=out, progress=False)
    assert len(partial.read_text().splitlines()) == n + 1
    assert res2["settings"]["window"] == 16 and res2["rows"][0]["cache_bytes"] < rows[("ahn_gdn", 96)]["cache_bytes"]


def test_static_methods_run_compiled(tmp_path):
    """full_static / ahn_gdn_static: fixed-size caches and a compiled decoding step (the eager backend here, so
    no C++ toolchain is needed; inductor and CUDA graphs are the GPU session's job)."""
    res = run("random:tiny", [96, 320], ["full_static", "ahn_gdn_static"], window=32, sinks=4, chunk=64, decode=3,
              dtype="float32", device="cpu", out=tmp_path / "s.json", progress=False, compile_backend="eager")
    rows = {(r["method"], r["length"]): r for r in res["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    assert all(r["compile_s"] > 0 and r["decode_ms"] > 0 for r in rows.values())
    assert rows[("ahn_gdn_static", 320)]["cache_bytes"] == rows[("ahn_gdn_static", 96)]["cache_bytes"]
    assert rows[("full_static", 320)]["cache_bytes"] > 3 * rows[("full_static", 96)]["cache_bytes"]
    assert res["settings"]["compile_backend"] == "eager"


def test_bench_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        run("random:tiny", [64], ["flash"], 32, 4, 64, 2, "float32", "cpu", tmp_path / "x.json", progress=False)
    res = run("random:nope", [64], ["full"], 32, 4, 64, 2, "float32", "cpu", tmp_path / "y.json", progress=False)
    assert "unknown random shape" in res["rows"][0]["error"]
    assert cli_main(["bench", "--methods", "full,warp", "--out", str(tmp_path / "z.json")]) == 2


def test_roofline_fraction_from_bench_rows(tmp_path):
    """benchmarks/roofline.py: bandwidth / (weights + cache) bytes per token, against the measured speed."""
    roofline = _bench_script("roofline")
    result = {"machine": {"gpu": "NVIDIA H200"}, "rows": [
        {"method": "ahn_gdn_static", "length": 131072, "decode_tok_s": 400.0, "weight_bytes": 6e9,
         "cache_bytes": 2e9},
        {"method": "full", "length": 131072, "error": "OOM"}]}
    bw = roofline.bandwidth_for(result["machine"]["gpu"])
    assert bw == 4.8e12 and roofline.bandwidth_for("NVIDIA H100 80GB HBM3") == 3.35e12
    (row,) = roofline.roofline_rows(result, bw)
    assert row["roofline_tok_s"] == pytest.approx(600.0) and row["fraction"] == pytest.approx(400 / 600)
    (tmp_path / "b.json").write_text(json.dumps(result))
    roofline.main([str(tmp_path / "b.json")])


def test_kernel_speed_times_every_variant_per_thread_count_and_feeds_the_targets(tmp_path):
    out = tmp_path / "k.json"
    _bench_script("kernel_speed").main(["--tokens", "100", "--heads", "2", "--head-dim", "8", "--threads", "1,2",
                                        "--chunk-sizes", f"8,{TORCH_CHUNK_SIZE}", "--segments",
                                        f"32,{TORCH_SEGMENT},none", "--repeats", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    variants = {f"t{t}/chunk{c}/seg{s}" for t in (1, 2) for c in (8, TORCH_CHUNK_SIZE)
                for s in (32, TORCH_SEGMENT, "none")}
    assert set(res["speedup_vs_recurrent"]) == variants
    assert set(res["seconds"]) == set(res["speedup_vs_recurrent"]) | {"t1/recurrent", "t2/recurrent"}
    assert max(res["max_abs_diff_vs_recurrent"].values()) < 1e-5
    # the targets report the default configuration (what the model runs) at each thread count, not the best variant
    rows = [r for r in _bench_script("perf_targets").targets({"rows": []}, res) if "kernel" in r["target"]]
    default = f"chunk{TORCH_CHUNK_SIZE}/seg{TORCH_SEGMENT}"
    assert [r["measured"] for r in rows] == pytest.approx([res["speedup_vs_recurrent"][f"t1/{default}"],
                                                           res["speedup_vs_recurrent"][f"t2/{default}"]])
    assert all(default in r["target"] for r in rows)


def test_memory_span_window_equivalent_interpolates_log_linearly():
    eq = _bench_script("memory_span").window_equivalent
    swa = {512: 27.0, 1024: 26.0, 2048: 25.5}
    assert eq(27.0, swa) == pytest.approx(512)
    assert eq(26.5, swa) == pytest.approx(512 * 2 ** 0.5)  # halfway in log(window)
    assert eq(25.75, swa) == pytest.approx(1024 * 2 ** 0.5)
    assert eq(28.0, swa) is None and eq(25.0, swa) is None  # outside the measured windows


def test_quality_report_keeps_the_day_each_method_was_measured():
    import argparse

    q = _bench_script("quality")
    done = {"a/full/0": [10.0, 5], "a/swa/0": [11.0, 5], "a/ahn/0": [10.5, 5],
            "c/needle/ahn/2048/0.100": {"score": 0.0}, "c/needle/full/2048/0.100": {"score": 1.0},
            "dates": {"a/full/0": "2026-11-23", "a/swa/0": "2026-11-23", "a/ahn/0": "2026-12-01",
                      "c/needle/ahn/2048/0.100": "2026-12-02", "c/needle/full/2048/0.100": "2026-11-23"}}
    rep = q.summarize(done, argparse.Namespace(window=512, sinks=64), "base", "adapter")
    assert rep["dates"] == {"ahn": ["2026-12-01", "2026-12-02"], "full": ["2026-11-23"], "swa": ["2026-11-23"]}
    ppl = {m: math.exp(v[0] / v[1]) for m, v in (("full", done["a/full/0"]), ("swa", done["a/swa/0"]),
                                                  ("ahn", done["a/ahn/0"]))}
    assert rep["perplexity_8k"]["gap_closed"] == pytest.approx((ppl["swa"] - ppl["ahn"]) / (ppl["swa"] - ppl["full"]))


def test_memory_control_swaps_only_what_the_scored_windows_do_not_see():
    import torch
    from transformers import AutoModelForCausalLM

    from modeling_ahn import AhnForCausalLM
    from modeling_ahn.evaluation.calibration import first_unswapped_query, swap_evicted
    from modeling_ahn.evaluation.probes import token_nll

    from .conftest import make_base_config, randomize_ahn

    mc = _bench_script("memory_control")
    a, b = list(range(100, 140)), list(range(200, 240))
    swapped = swap_evicted(a, b, sinks=3, prefix=20)
    assert swapped[:3] == a[:3] and swapped[3:20] == b[3:20] and swapped[20:] == a[20:]
    with pytest.raises(ValueError, match="sinks"):
        swap_evicted(a, b, sinks=30, prefix=20)
    assert mc.content_share(0.02, 0.02) == 0 and mc.content_share(0.02, 0.0) == 1 and mc.content_share(0, 1) is None
    W, S, P = 6, 3, 20
    start = first_unswapped_query(P, W)
    assert start == P + W - 1
    for layers in (1, 2):
        cfg = make_base_config("llama")
        cfg.num_hidden_layers = layers
        torch.manual_seed(0)
        model = randomize_ahn(AhnForCausalLM.from_base(AutoModelForCausalLM.from_config(cfg), ahn_type="gdn",
                                                        sliding_window=W, num_sinks=S)).eval()
        ids = [t % cfg.vocab_size for t in a], [t % cfg.vocab_size for t in swap_evicted(a, b, S, P)]

        def nll(mode, x, model=model):
            with model.attention_mode(mode):
                return token_nll(model, torch.tensor([x]))

        swa, ahn = [nll("swa", x) for x in ids], [nll("ahn", x) for x in ids]
        reach = start + (layers - 1) * (W - 1)  # stacked windows carry older tokens forward
        assert torch.equal(swa[0][reach:], swa[1][reach:])  # sinks+SWA: the same tokens in every window
        assert not torch.allclose(swa[0][reach - 1], swa[1][reach - 1])  # ... and the boundary is tight
        assert not torch.allclose(ahn[0][reach:], ahn[1][reach:])  # the memory sees the swap


def test_quality_gap_interval_resamples_whole_segments():
    q = _bench_script("quality")
    same = [{"full": [10.0, 5], "swa": [11.0, 5], "ahn": [10.5, 5]}] * 4
    lo, hi = q.gap_interval(same, draws=200)
    assert lo == pytest.approx(hi) and 0 < lo < 1  # every resample is the same text: no spread
    varied = [{"full": [10.0, 5], "swa": [11.0 + 0.5 * i, 5], "ahn": [10.5 + 0.1 * i, 5]} for i in range(8)]
    lo, hi = q.gap_interval(varied, draws=500)
    ppl = {m: math.exp(sum(u[m][0] for u in varied) / 40) for m in ("full", "swa", "ahn")}
    gap = (ppl["swa"] - ppl["ahn"]) / (ppl["swa"] - ppl["full"])
    assert lo < gap < hi and hi - lo > 0.02


def test_quality_perplexity_compares_only_segments_every_method_measured():
    import argparse

    q = _bench_script("quality")
    done = {f"a/{m}/{i}": [10.0 + i + (m == "swa"), 5] for m in ("full", "swa") for i in range(12)}
    done.update({f"a/ahn/{i}": [10.5 + i, 5] for i in (2, 3)})  # AHN still being measured
    done = json.loads(json.dumps(done, sort_keys=True))  # as the partial file stores it: "10" before "2"
    p = q.summarize(done, argparse.Namespace(window=512, sinks=64), "base", "adapter")["perplexity_8k"]
    assert p["segments"] == 2
    assert p["full"] == pytest.approx(math.exp((12.0 + 13.0) / 10))  # AHN's segments 2 and 3, not "0" and "1"


def test_dtype_auto_is_what_the_machine_runs_fast(tmp_path, monkeypatch):
    from modeling_ahn.benchmarking import devices

    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    assert devices.resolve_dtype("auto", "cpu") is torch.float32
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    assert devices.resolve_dtype("auto", "cpu") is torch.bfloat16
    assert devices.resolve_dtype("float16") is torch.float16
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of"):
        devices.resolve_dtype("fp8")
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    res = run("random:tiny", [96], ["ahn_gdn"], window=32, sinks=4, chunk=64, decode=2, dtype="auto", device="cpu",
              out=tmp_path / "a.json", progress=False)
    assert res["settings"]["dtype"] == "float32"  # recorded as resolved, not as "auto"


def test_long_context_overhead_is_per_token_cost_over_the_base_at_the_reference_length(tmp_path):
    from modeling_ahn.benchmarking.bench import long_context_overhead

    rows = [dict(method="full", length=1024, prefill_s=2.0, decode_ms=10.0),
            dict(method="ahn_gdn", length=16384, prefill_s=40.0, decode_ms=12.0),
            dict(method="ahn_gdn", length=1024, error="boom")]
    o = long_context_overhead(rows)
    assert o["reference"] == dict(method="full", length=1024)
    assert o["points"][("full", 1024)] == dict(prefill=1.0, decode=1.0)
    # 40 s / 16k tokens against 2 s / 1k tokens: 1.25x per token; decode 12 / 10
    assert o["points"][("ahn_gdn", 16384)]["prefill"] == pytest.approx(1.25)
    assert o["points"][("ahn_gdn", 16384)]["decode"] == pytest.approx(1.2)
    assert ("ahn_gdn", 1024) not in o["points"]
    assert long_context_overhead(rows[1:])["points"] == {}  # no reference in the run: not computed

    # in a run: every row carries its overhead against this run's own reference point, and the table shows it
    res = run("random:tiny", [64, 256], ["full", "ahn_gdn"], window=32, sinks=4, chunk=64, decode=2,
              dtype="float32", device="cpu", out=tmp_path / "b.json", progress=False, reference_length=64)
    rows = {(r["method"], r["length"]): r for r in res["rows"]}
    assert res["overhead_reference"] == dict(method="full", length=64)
    assert rows[("full", 64)]["prefill_overhead"] == 1.0
    ref = rows[("full", 64)]
    r = rows[("ahn_gdn", 256)]
    assert r["prefill_overhead"] == pytest.approx((r["prefill_s"] / 256) / (ref["prefill_s"] / 64))
    assert r["decode_overhead"] == pytest.approx(r["decode_ms"] / ref["decode_ms"])
    assert f"{r['prefill_overhead']:.2f}/" in table(res)


def test_machine_info_records_the_cpu_features_that_decide_speed():
    from modeling_ahn.benchmarking.bench import VECTOR_FEATURES, cpu_features, machine_info

    info = machine_info("cpu")
    assert info["cpu_features"] == cpu_features() and set(info["cpu_features"]) <= set(VECTOR_FEATURES)
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() == "x86_64" and cpuinfo.exists() and " avx2" in cpuinfo.read_text():
        assert "avx2" in info["cpu_features"]


def test_stream_soak_checks_bounded_memory_finiteness_and_restarts(tmp_path, monkeypatch):
    """benchmarks/stream_memory.py (the soak of issue 35, here on its tiny model): constant cache, finite states and
    logits, and restart checks that compare a copied cache with the running one -- which fail when they differ."""
    stream = _bench_script("stream_memory")
    out = tmp_path / "soak.json"
    args = ["--tokens", "3000", "--window", "64", "--sinks", "4", "--chunk", "256", "--checkpoints", "1000",
            "--restart-every", "1200", "--json", str(out)]
    assert stream.main(args) == 0
    res = json.loads(out.read_text())
    assert res["cache_bounded"] and res["finite"] and res["restarts_equal"] and len(res["restarts"]) == 2
    assert [r["tokens"] for r in res["rows"]] == [1008, 2008, 3008] and res["machine"]["cpu_features"] is not None

    real_copy = stream.copy.deepcopy

    def perturbed(cache):  # a "restart" that lost something: the check must say so
        fresh = real_copy(cache)
        layer = next(x for x in fresh.layers if x.recurrent_state is not None)
        layer.recurrent_state = layer.recurrent_state + 1e-3
        return fresh

    monkeypatch.setattr(stream, "copy", types.SimpleNamespace(deepcopy=perturbed))
    assert stream.main(args) == 1
    assert not json.loads(out.read_text())["restarts_equal"]


def test_side_by_side_interleaves_every_point_in_one_process(tmp_path, capsys):
    """`ahn bench --side-by-side`: all points in one process, prefill chunks and decoding steps round-robin; the
    decode overhead is the ratio of medians with a bootstrap interval around it; the same per-point facts as the
    grid (cache bytes constant for AHN, growing for full attention)."""
    from modeling_ahn.benchmarking import side_by_side

    out = tmp_path / "sbs.json"
    assert cli_main(["bench", "--side-by-side", "--base", "random:tiny", "--lengths", "96,320", "--methods",
                     "full,ahn_gdn,ahn_gdn_slots64_static", "--max-full-length", "96", "--overhead-reference", "96",
                     "--window", "32", "--sinks", "4", "--chunk", "64", "--decode", "5", "--dtype", "float32",
                     "--device", "cpu", "--compile-backend", "eager", "--no-progress", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {(r["method"], r["length"]): r for r in res["rows"]}
    assert set(rows) == {("full", 96), ("ahn_gdn", 96), ("ahn_gdn", 320), ("ahn_gdn_slots64_static", 96),
                         ("ahn_gdn_slots64_static", 320)}  # no full attention beyond --max-full-length
    assert res["settings"]["side_by_side"] and out.with_suffix(".png").stat().st_size > 10_000
    for r in rows.values():
        steps = r["decode_steps_ms"]
        assert len(steps) == 5 and r["decode_ms"] == sorted(steps)[2] and r["peak_bytes"] is None
        lo, hi = r["decode_overhead_ci95"]
        assert lo <= r["decode_overhead"] <= hi
        lo, hi = r["prefill_overhead_ci95"]
        assert lo <= r["prefill_overhead"] <= hi
    # the 96-token points (2 chunks) prefill again while the 320-token ones (5 chunks) run: 3 passes, 6 chunks
    assert rows[("full", 96)]["prefill_passes"] == 3 and rows[("full", 96)]["prefill_chunks"] == 6
    assert rows[("ahn_gdn", 320)]["prefill_passes"] == 1 and rows[("ahn_gdn", 320)]["prefill_chunks"] == 5
    assert rows[("full", 96)]["decode_overhead"] == 1.0 and rows[("full", 96)]["prefill_overhead"] == 1.0
    assert rows[("ahn_gdn", 320)]["cache_bytes"] == rows[("ahn_gdn", 96)]["cache_bytes"]
    assert rows[("ahn_gdn_slots64_static", 320)]["compile_s"] > 0
    assert "overhead decode [95% CI]" in capsys.readouterr().out
    # the interval resamples rounds: identical steps give a point interval, a doubled point gives 2
    assert side_by_side.decode_interval([2.0] * 7, [1.0] * 7) == (2.0, 2.0)
    log, ref_log = [(k, 2.0, 64) for k in range(5)], [(k, 1.0, 64) for k in range(5)]
    assert side_by_side.prefill_interval(log, ref_log) == (2.0, 2.0)
    with pytest.raises(ValueError, match="--decode >= 2"):
        side_by_side.run("random:tiny", [96], ["full"], 32, 4, 64, 1, "float32", "cpu", tmp_path / "x.json",
                         progress=False)
