"""Decode speed against the memory-bandwidth roofline, from an ``ahn bench`` JSON (GPU runs).

A decoding step must read every weight once plus the cache it attends to (full attention: the whole KV; AHN:
sinks + window KV + the fp32 state, read and written), so its floor is ``bytes / bandwidth`` and the roofline
speed is ``bandwidth / (weight_bytes + cache_bytes)`` tokens/s (batch 1). Nothing is measured here.

    python benchmarks/roofline.py benchmarks/results/gpu/bench_gpu.json [--bandwidth 4.8e12]
"""

from __future__ import annotations

import argparse
import json

# HBM bandwidth (bytes/s) by the name torch.cuda.get_device_name reports
BANDWIDTH = {"H200": 4.8e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "A100": 2.0e12}


def bandwidth_for(gpu_name: str | None) -> float | None:
    for key, bw in sorted(BANDWIDTH.items(), key=lambda kv: -len(kv[0])):
        if gpu_name and key in gpu_name:
            return bw
    return None


def roofline_rows(result: dict, bandwidth: float) -> list[dict]:
    out = []
    for r in result["rows"]:
        if "error" in r or not r.get("decode_tok_s") or "weight_bytes" not in r:
            continue
        moved = r["weight_bytes"] + r["cache_bytes"]
        roof = bandwidth / moved
        out.append(dict(method=r["method"], length=r["length"], decode_tok_s=r["decode_tok_s"],
                        roofline_tok_s=roof, fraction=r["decode_tok_s"] / roof, bytes_per_token=moved))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench")
    ap.add_argument("--bandwidth", type=float, default=None, help="bytes/s (default: from the GPU's name)")
    args = ap.parse_args(argv)
    result = json.load(open(args.bench))
    bw = args.bandwidth or bandwidth_for(result["machine"].get("gpu"))
    if bw is None:
        raise SystemExit(f"unknown GPU {result['machine'].get('gpu')!r}: pass --bandwidth")
    print(f"{'method':<16} {'length':>7} {'tok/s':>8} {'roofline':>9} {'fraction':>8} {'GB/token':>9}")
    for x in roofline_rows(result, bw):
        print(f"{x['method']:<16} {x['length']:>7} {x['decode_tok_s']:>8.1f} {x['roofline_tok_s']:>9.1f} "
              f"{x['fraction']:>8.1%} {x['bytes_per_token'] / 1e9:>9.2f}")


if __name__ == "__main__":
    main()
