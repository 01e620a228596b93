"""Speed of the pure-PyTorch memory kernels: the chunked (WY-form) delta rule against the per-token loop.

    python benchmarks/kernel_speed.py [--tokens 8192] [--threads 1] [--out benchmarks/results/kernel_speed_cpu.json]

Shapes are SmolLM2-135M's (9 heads of 64) unless told otherwise; GDN (gated delta rule), float32, batch 1.
Both kernels run the same inputs back to back, alternating, best of --repeats; their outputs are compared too.
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
    ap.add_argument("--chunk-sizes", default="32,64,128")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "kernel_speed_cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
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
        kernels[f"chunk{c}"] = lambda c=c: torch_chunk_rule(q, k, v, gate, beta, None, scale, chunk_size=c)
    best = {name: float("inf") for name in kernels}
    outs = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, fn in kernels.items():
                t0 = time.perf_counter()
                outs[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    ref_o, ref_s = outs["recurrent"]
    res = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "torch": torch.__version__,
           "threads": args.threads, "tokens": T, "heads": H, "head_dim": D, "seconds": best,
           "speedup_vs_recurrent": {n: best["recurrent"] / t for n, t in best.items() if n != "recurrent"},
           "max_abs_diff_vs_recurrent": {n: max(float((o - ref_o).abs().max()), float((s - ref_s).abs().max()))
                                         for n, (o, s) in outs.items() if n != "recurrent"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
