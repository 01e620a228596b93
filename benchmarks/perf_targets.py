"""Issue-7 and issue-23 CPU targets from measured results: reads an ``ahn bench`` JSON and ``kernel_speed.py``'s JSON and
prints each ratio next to its target (met / missed). Nothing is measured here.

    python benchmarks/perf_targets.py [--bench benchmarks/results/bench_cpu.json]
                                      [--kernel benchmarks/results/kernel_speed_cpu.json] [--ahn ahn_gdn]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rows_by(result):
    return {(r["method"], r["length"]): r for r in result["rows"] if "error" not in r}


def targets(bench: dict, kernel: dict | None, ahn: str = "ahn_gdn") -> list[dict]:
    r = rows_by(bench)
    out = []

    def add(name, value, target, ok):
        out.append({"target": name, "measured": value, "goal": target, "met": ok})

    def ratio(a, b, key):
        return a[key] / b[key] if a and b else None

    full32, ahn32, ahn4, swa32 = r.get(("full", 32768)), r.get((ahn, 32768)), r.get((ahn, 4096)), \
        r.get(("sinks_swa", 32768))
    x = ratio(full32, ahn32, "prefill_s")
    add("prefill time full / AHN at 32k", x, ">= 4", x is not None and x >= 4)
    x = ratio(full32, ahn32, "decode_ms")
    add("decode latency full / AHN at 32k", x, ">= 3", x is not None and x >= 3)
    x = ratio(ahn32, ahn4, "decode_ms")
    add("AHN decode latency 32k / 4k", x, "<= 1.2", x is not None and x <= 1.2)
    ahn64 = r.get((ahn, 65536))
    x = ratio(ahn64, ahn4, "peak_bytes")
    add("AHN peak memory 64k / 4k", x, "<= 1.15", x is not None and x <= 1.15)
    x = ratio(ahn32, swa32, "prefill_s")
    add("AHN / sinks+SWA prefill time at 32k", x, "<= 1.3", x is not None and x <= 1.3)
    x = ratio(ahn32, swa32, "decode_ms")
    add("AHN / sinks+SWA decode latency at 32k", x, "<= 1.3", x is not None and x <= 1.3)
    # issue 23: long-context overhead (per-token cost / full attention's at the run's reference length, 1k by
    # default; `ahn bench` writes it on every row) and our sinks+SWA path against transformers' sliding window
    for L, goal in ((16384, 1.25), (32768, 1.3), (65536, 1.3)):
        row = r.get((ahn, L))
        for phase in ("prefill", "decode"):
            x = row.get(f"{phase}_overhead") if row else None
            add(f"AHN {phase} long-context overhead at {L // 1024}k", x, f"<= {goal}", x is not None and x <= goal)
    for L in sorted({length for (m, length) in r if m == "swa_hf"}):
        ours, theirs = r.get(("sinks_swa", L)), r.get(("swa_hf", L))
        for key, phase in (("prefill_s", "prefill"), ("decode_ms", "decode")):
            x = ratio(theirs, ours, key)
            add(f"{phase} speed sinks+SWA / transformers' sliding window at {L // 1024}k"
                + (" (sinks must be 0 for the same work)" if bench.get("settings", {}).get("sinks") else ""),
                x, ">= 1", x is not None and x >= 1 and not bench.get("settings", {}).get("sinks"))
    if kernel:  # the default configuration (what the model runs), at each thread count measured
        from modeling_ahn.memory_ahn import TORCH_CHUNK_SIZE, TORCH_SEGMENT

        default = f"chunk{TORCH_CHUNK_SIZE}/seg{TORCH_SEGMENT}"
        for name, x in kernel["speedup_vs_recurrent"].items():
            if name.endswith("/" + default):
                threads = name.split("/")[0][1:]
                add(f"torch chunk kernel / per-token loop at {kernel['tokens']} tokens ({threads} thread(s), "
                    f"{default})", x, ">= 10", x >= 10)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=str(HERE / "results" / "bench_cpu.json"))
    ap.add_argument("--kernel", default=str(HERE / "results" / "kernel_speed_cpu.json"))
    ap.add_argument("--ahn", default="ahn_gdn")
    args = ap.parse_args(argv)
    bench = json.loads(Path(args.bench).read_text())
    kernel = json.loads(Path(args.kernel).read_text()) if Path(args.kernel).exists() else None
    print("| target | measured | goal | met |\n|---|---|---|---|")
    for t in targets(bench, kernel, args.ahn):
        v = "–" if t["measured"] is None else f"{t['measured']:.2f}"
        print(f"| {t['target']} | {v} | {t['goal']} | {'yes' if t['met'] else 'no'} |")


if __name__ == "__main__":
    main()
