"""Stream a long input through an AHN model and show that memory stays flat and the stream stays sound.

Feeds ``--tokens`` tokens in prefill chunks, decoding a few tokens at each checkpoint, and records there: the cache
size (sinks + window + state), the process's resident and peak RSS, whether the logits and every memory state are
finite, and -- every ``--restart-every`` tokens -- a restart check: a copy of the cache (``copy.deepcopy``: a fresh
cache object holding the same tensors' values) and the running cache take the same next chunk, and their logits and
states must be equal (torch.equal): nothing of the stream lives outside the cache.

Two models: ``--model tiny`` (default; a tiny random Qwen2, random token ids, 64k tokens: the memory check of
``make bench-stream``, target peak RSS at the last checkpoint <= 1.15x the first) and ``--model default`` (the
fetched SmolLM2-135M-Instruct + the shipped AHN-GDN adapter, the held-out corpora's text cycled: the soak of issue 35,
e.g. 1M tokens, one thread)::

    python benchmarks/stream_memory.py [--tokens 65536] [--window 1024] [--sinks 64] [--json out.json]
    python benchmarks/stream_memory.py --model default --tokens 1048576 --chunk 2048 --checkpoints 65536 \\
        --restart-every 262144 --threads 1 --json benchmarks/results/soak_smollm2_1m.json

``--checkpoints``: comma-separated token counts, or one number (every that many tokens). The run fails (exit 1)
if the cache grows, a state or logit is not finite, a restart check differs, or RSS grows beyond the target.
"""

from __future__ import annotations

import argparse
import copy
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


def rss_mib() -> float:
    """Resident memory now (Linux ``/proc/self/statm``; the peak where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return peak_rss_mib()


def tiny_model(args):
    cfg = Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    base = AutoModelForCausalLM.from_config(cfg).eval()
    model = AhnForCausalLM.from_base(base, ahn_type=args.ahn_type, sliding_window=args.window,
                                     num_sinks=args.sinks, prefill_chunk_size=args.chunk)
    with torch.no_grad():  # a non-zero memory, so the recurrent path does real work
        for m in model.ahn_modules().values():
            m.fn.o_proj.weight.normal_(0, 0.02)
    gen = torch.Generator().manual_seed(0)

    def tokens(n):
        return torch.randint(0, cfg.vocab_size, (1, n), generator=gen)

    return model, tokens


def default_model(args):
    """The fetched default base + the shipped adapter (float32), fed the held-out corpora's text, cycled."""
    from transformers import AutoTokenizer

    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.demo import resolve_base
    from modeling_ahn.default.shipped import shipped_repo

    repo = shipped_repo("gdn", base=resolve_base(None))
    overrides = {k: v for k, v in (("sliding_window", args.window), ("num_sinks", args.sinks)) if v is not None}
    model = AutoModelForCausalLM.from_pretrained(str(repo), trust_remote_code=True, dtype=torch.float32,
                                                 prefill_chunk_size=args.chunk, **overrides).eval()
    tok = AutoTokenizer.from_pretrained(str(repo))
    text = "\n\n".join(doc for source in ("austen", "pg_essays", "gnu_standards")
                       for doc in held_out_documents(source).values())
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    state = {"at": 0}

    def tokens(n):  # the corpus, cycled
        idx = (state["at"] + torch.arange(n)) % ids.numel()
        state["at"] = (state["at"] + n) % ids.numel()
        return ids[idx][None]

    print(f"default model: {repo} ({ids.numel():,} held-out tokens, cycled)", flush=True)
    return model, tokens


def finite_states(cache) -> bool:
    return all(bool(torch.isfinite(layer.recurrent_state).all()) for layer in cache.layers
               if isinstance(layer, SinkWindowLayer) and layer.recurrent_state is not None)


def restart_check(model, cache, ids) -> bool:
    """The running cache and a copy of it take the same chunk: equal logits and equal states."""
    fresh = copy.deepcopy(cache)
    a = model(ids, past_key_values=cache, logits_to_keep=1).logits
    b = model(ids, past_key_values=fresh, logits_to_keep=1).logits
    same_states = all(torch.equal(x.recurrent_state, y.recurrent_state) and torch.equal(x.keys, y.keys)
                      for x, y in zip(cache.layers, fresh.layers) if isinstance(x, SinkWindowLayer))
    return bool(torch.equal(a, b)) and same_states


def parse_checkpoints(text: str, total: int) -> list[int]:
    parts = [int(c) for c in text.split(",") if c]
    if len(parts) == 1 and parts[0] < total:  # "every N tokens"
        return list(range(parts[0], total + 1, parts[0])) + ([] if total % parts[0] == 0 else [total])
    return sorted(p for p in parts if p <= total) or [total]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "default"])
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--window", type=int, default=None, help="sliding window (tiny: 1024; default: the adapter's)")
    ap.add_argument("--sinks", type=int, default=None, help="attention sinks (tiny: 64; default: the adapter's)")
    ap.add_argument("--chunk", type=int, default=1024, help="prefill chunk size")
    ap.add_argument("--ahn-type", default="gdn", help="memory of the tiny model")
    ap.add_argument("--checkpoints", default="4096,16384,65536")
    ap.add_argument("--restart-every", type=int, default=0, help="a restart check every this many tokens (0: none)")
    ap.add_argument("--rss-target", type=float, default=1.15, help="peak RSS at the end / at the first checkpoint")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "tiny":
        args.window = args.window or 1024
        args.sinks = 64 if args.sinks is None else args.sinks
        model, tokens = tiny_model(args)
    else:
        model, tokens = default_model(args)
    cfg = model.config

    checkpoints = parse_checkpoints(args.checkpoints, args.tokens)
    cache = AhnCache(cfg)
    seen, rows, restarts = 0, [], []
    next_restart = args.restart_every or None
    t0 = time.perf_counter()
    print(f"streaming {args.tokens:,} tokens, window {cfg.sliding_window}, sinks {cfg.num_sinks}, chunk {args.chunk}, "
          f"{cfg.ahn_type}, torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s)",
          flush=True)
    print(f"{'tokens':>9} {'cache KiB':>10} {'window':>7} {'sinks':>6} {'RSS MiB':>8} {'peak MiB':>9} {'finite':>7} "
          f"{'elapsed s':>10}")
    with torch.no_grad():
        for target in checkpoints:
            while seen < target:
                n = min(args.chunk, target - seen)
                ids = tokens(n)
                if next_restart is not None and seen + n >= next_restart:
                    ok = restart_check(model, cache, ids)
                    restarts.append(dict(tokens=seen + n, equal=ok))
                    print(f"{seen + n:>9} restart check: {'equal' if ok else 'DIFFERENT'}", flush=True)
                    next_restart += args.restart_every
                else:
                    model(ids, past_key_values=cache, logits_to_keep=1)
                seen += n
            logits_finite = True
            for _ in range(8):  # a few decode steps at this length (the stream goes on after them)
                out = model(tokens(1), past_key_values=cache)
                logits_finite = logits_finite and bool(torch.isfinite(out.logits).all())
            seen += 8
            layer = next(layer for layer in cache.layers if isinstance(layer, SinkWindowLayer))
            row = dict(tokens=seen, cache_bytes=cache.cache_bytes(), window_stored=layer.keys.shape[-2],
                       sinks_stored=int(layer.sink_filled.sum()), rss_mib=round(rss_mib(), 1),
                       peak_rss_mib=round(peak_rss_mib(), 1), finite=logits_finite and finite_states(cache),
                       elapsed_s=round(time.perf_counter() - t0, 1))
            rows.append(row)
            if args.json:  # written at every checkpoint: a long soak that is stopped keeps what it measured
                write_json(args, rows, restarts, cfg.sliding_window, complete=target == checkpoints[-1])
            print(f"{row['tokens']:>9} {row['cache_bytes'] / 1024:>10.1f} {row['window_stored']:>7} "
                  f"{row['sinks_stored']:>6} {row['rss_mib']:>8.1f} {row['peak_rss_mib']:>9.1f} "
                  f"{str(row['finite']):>7} {row['elapsed_s']:>10.1f}", flush=True)

    res = summary(args, rows, restarts, cfg.sliding_window)
    print(f"peak RSS {rows[-1]['tokens']:,} / {rows[0]['tokens']:,} tokens: {res['rss_ratio']:.3f}x (target <= "
          f"{args.rss_target}x); cache constant at sinks + window: {res['cache_bounded']}; finite throughout: "
          f"{res['finite']}; restart checks equal: {res['restarts_equal']} ({len(restarts)})")
    ok = res["rss_ratio"] <= args.rss_target and res["cache_bounded"] and res["finite"] and res["restarts_equal"]
    return 0 if ok else 1


def summary(args, rows, restarts, window) -> dict:
    return dict(rss_ratio=rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"],
                cache_bounded=len({r["cache_bytes"] for r in rows}) == 1 and all(r["window_stored"] == window
                                                                                for r in rows),
                finite=all(r["finite"] for r in rows), restarts_equal=all(r["equal"] for r in restarts))


def write_json(args, rows, restarts, window: int, complete: bool) -> None:
    from modeling_ahn.benchmarking.bench import machine_info

    with open(args.json, "w") as f:
        settings = {k: v for k, v in vars(args).items() if k != "json"}  # not where it was written: a machine path
        json.dump(dict(args=settings, complete=complete, rows=rows, restarts=restarts,
                       **summary(args, rows, restarts, window), machine=machine_info("cpu"),
                       python=sys.version.split()[0]), f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
