"""Speed of the pure-PyTorch memory kernels: the chunked (WY-form) delta rule against the per-token loop.

    python benchmarks/kernel_speed.py [--tokens 8192] [--threads 1,2] [--chunk-sizes 16,32,64]
                                      [--segments 512,2048,none]
                                      [--out benchmarks/results/kernel_speed_cpu.json]

Shapes are SmolLM2-135M's (9 heads of 64) unless told otherwise; GDN (gated delta rule), float32, batch 1.
All kernels run the same inputs back to back, alternating, best of --repeats; their outputs are compared too.
``chunk32/seg2048``: chunks of 32 tokens, the chunk-parallel work 2048 tokens at a time (the default);
``chunk32/segnone``: all chunks at once. Each thread count is a separate round (``t2/...``: two threads); the
per-token loop is timed in every round, and each speed-up is against the loop at the same thread count.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from modeling_ahn.memory_ahn import l2norm, torch_chunk_rule, torch_recurrent_rule


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--chunk-sizes", default="16,32,64")
    ap.add_argument("--segments", default="512,2048,none", help="tokens per segment; 'none': unsegmented")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, one round each")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "kernel_speed_cpu.json"))
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    T, H, D = args.tokens, args.heads, args.head_dim
    q = l2norm(torch.randn(1, T, H, D, generator=g))
    k = l2norm(torch.randn(1, T, H, D, generator=g))
    v = torch.randn(1, T, H, D, generator=g)
    beta = torch.rand(1, T, H, generator=g)
    gate = -torch.rand(1, T, H, generator=g) * 0.1
    scale = D ** -0.5
    kernels = {"recurrent": lambda: torch_recurrent_rule(q, k, v, gate, beta, None, scale)}
    for c in (int(x) for x in args.chunk_sizes.split(",")):
        for seg in args.segments.split(","):
            sg = None if seg == "none" else int(seg)
            kernels[f"chunk{c}/seg{seg}"] = lambda c=c, sg=sg: torch_chunk_rule(q, k, v, gate, beta, None, scale,
                                                                            chunk_size=c, segment=sg)
    threads = [int(x) for x in str(args.threads).split(",")]
    best, outs, speedup = {}, {}, {}
    with torch.no_grad():
        for nt in threads:
            torch.set_num_threads(nt)
            tag = f"t{nt}/"
            for name in kernels:
                best[tag + name] = float("inf")
            for _ in range(args.repeats):
                for name, fn in kernels.items():
                    t0 = time.perf_counter()
                    outs[name] = fn()
                    best[tag + name] = min(best[tag + name], time.perf_counter() - t0)
            speedup.update({tag + n: best[tag + "recurrent"] / best[tag + n] for n in kernels if n != "recurrent"})
    ref_o, ref_s = outs["recurrent"]
    res = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "torch": torch.__version__,
           "threads": threads, "tokens": T, "heads": H, "head_dim": D, "seconds": best,
           "speedup_vs_recurrent": speedup,
           "max_abs_diff_vs_recurrent": {n: max(float((o - ref_o).abs().max()), float((s - ref_s).abs().max()))
                                         for n, (o, s) in outs.items() if n != "recurrent"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
