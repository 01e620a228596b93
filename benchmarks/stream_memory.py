"""Stream a long input through a tiny random AHN model and show that memory stays flat.

Feeds ``--tokens`` tokens (default 65,536) in prefill chunks, then decodes a few tokens, and prints,
at 4k, 16k and 64k tokens seen: the cache size (sinks + window + state) and the process's peak RSS.
The cache must stay at sinks + window and the peak RSS at 64k must be at most 1.15x the one at 4k.

    python benchmarks/stream_memory.py [--tokens 65536] [--window 1024] [--sinks 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from modeling_ahn import AhnCache, AhnForCausalLM, SinkWindowLayer


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=1024, help="prefill chunk size")
    ap.add_argument("--ahn-type", default="gdn")
    ap.add_argument("--checkpoints", default="4096,16384,65536")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    base = AutoModelForCausalLM.from_config(cfg).eval()
    model = AhnForCausalLM.from_base(base, ahn_type=args.ahn_type, sliding_window=args.window,
                                     num_sinks=args.sinks, prefill_chunk_size=args.chunk)
    with torch.no_grad():  # a non-zero memory, so the recurrent path does real work
        for m in model.ahn_modules().values():
            m.fn.o_proj.weight.normal_(0, 0.02)

    checkpoints = sorted(int(c) for c in args.checkpoints.split(",") if c)
    cache = AhnCache(model.config)
    gen = torch.Generator().manual_seed(0)
    seen, rows = 0, []
    t0 = time.perf_counter()
    print(f"streaming {args.tokens} tokens, window {args.window}, sinks {args.sinks}, chunk {args.chunk}, "
          f"{args.ahn_type}, torch {torch.__version__}, {platform.machine()}", flush=True)
    print(f"{'tokens':>8} {'cache KiB':>10} {'window':>7} {'sinks':>6} {'peak RSS MiB':>13} {'elapsed s':>10}")
    with torch.no_grad():
        for target in checkpoints:
            while seen < target:
                n = min(args.chunk, target - seen)
                ids = torch.randint(0, cfg.vocab_size, (1, n), generator=gen)
                model(ids, past_key_values=cache, logits_to_keep=1)
                seen += n
            for _ in range(8):  # a few decode steps at this length
                model(torch.randint(0, cfg.vocab_size, (1, 1), generator=gen), past_key_values=cache)
            seen += 8
            layer = next(layer for layer in cache.layers if isinstance(layer, SinkWindowLayer))
            row = dict(tokens=target, cache_bytes=cache.cache_bytes(), window_stored=layer.keys.shape[-2],
                       sinks_stored=int(layer.sink_filled.sum()), peak_rss_mib=round(peak_rss_mib(), 1),
                       elapsed_s=round(time.perf_counter() - t0, 1))
            rows.append(row)
            print(f"{target:>8} {row['cache_bytes'] / 1024:>10.1f} {row['window_stored']:>7} "
                  f"{row['sinks_stored']:>6} {row['peak_rss_mib']:>13.1f} {row['elapsed_s']:>10.1f}", flush=True)

    ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    bounded = len({r["cache_bytes"] for r in rows}) == 1 and all(r["window_stored"] == args.window for r in rows)
    print(f"peak RSS {rows[-1]['tokens']} / {rows[0]['tokens']} tokens: {ratio:.3f}x (target <= 1.15x); "
          f"cache constant at sinks + window: {bounded}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows, rss_ratio=ratio, cache_bounded=bounded,
                           torch=torch.__version__, python=sys.version.split()[0], machine=platform.machine()),
                      f, indent=2)
    return 0 if ratio <= 1.15 and bounded else 1


if __name__ == "__main__":
    sys.exit(main())
