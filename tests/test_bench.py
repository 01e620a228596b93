"""`ahn bench` end to end on a tiny random model (each point runs in its own process)."""

from __future__ import annotations

import json

import pytest

from modeling_ahn.bench import parse_length, run, table
from modeling_ahn.cli import main as cli_main


def test_parse_length():
    assert [parse_length(x) for x in ("1k", "64K", "512", "0.5k")] == [1024, 65536, 512, 512]


def test_bench_runs_every_method_and_writes_json_and_plot(tmp_path):
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


def test_bench_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        run("random:tiny", [64], ["flash"], 32, 4, 64, 2, "float32", "cpu", tmp_path / "x.json", progress=False)
    res = run("random:nope", [64], ["full"], 32, 4, 64, 2, "float32", "cpu", tmp_path / "y.json", progress=False)
    assert "unknown random shape" in res["rows"][0]["error"]
    assert cli_main(["bench", "--methods", "full,warp", "--out", str(tmp_path / "z.json")]) == 2
