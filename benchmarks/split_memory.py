"""Peak memory of one layer-local training step against sequence length: the whole-sequence step against the same
step read in chunks (``--sequence-chunk``, ``training/sequence_split.py``), on a small random Qwen2 (CPU).

Each (length, mode) runs in a fresh process: build the model, run one step at a short length (so that one-time
allocations are made), record the resident set, run the measured step (loss and gradients of every AHN parameter,
window 512, 32 sinks, GDN), and report the peak resident set above that baseline (``ru_maxrss``)::

    python benchmarks/split_memory.py --json benchmarks/results/split_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

LENGTHS = (2048, 4096, 8192, 16384)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(length: int, chunk: int | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from modeling_ahn import AhnForCausalLM
    from modeling_ahn.training.layer_local import layer_local_losses, record_teacher
    from modeling_ahn.training.sequence_split import split_layer_local

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = Qwen2Config(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768)
    base = AutoModelForCausalLM.from_config(cfg)
    model = AhnForCausalLM.from_base(base, ahn_type="gdn", sliding_window=512, num_sinks=32,
                                     prefill_chunk_size=None).float().train()
    params = [p for p in model.ahn_parameters() if p.requires_grad]

    def step(n):
        ids = torch.randint(3, 1000, (1, n), generator=torch.Generator().manual_seed(n))
        if chunk is None:
            losses = layer_local_losses(model, record_teacher(model, ids), None)
            loss = sum(losses.values()) / len(losses)
            torch.autograd.grad(loss, params, allow_unused=True)
        else:
            loss, _, _ = split_layer_local(model, ids, None, chunk)
        return float(loss)

    step(1024)
    before = rss_mib()
    loss = step(length)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"length": length, "chunk": chunk, "loss": loss, "baseline_mib": round(before, 1),
            "peak_above_baseline_mib": round(peak - before, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=list(LENGTHS))
    p.add_argument("--json", type=Path)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: LENGTH CHUNK|whole
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(int(args.one[0]), None if args.one[1] == "whole" else int(args.one[1]))))
        return 0
    rows = []
    for length in args.lengths:
        for mode in ("whole", str(args.chunk)):
            out = subprocess.run([sys.executable, __file__, "--one", str(length), mode], capture_output=True,
                                 text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{length:6d} {mode:>6s}: peak {r['peak_above_baseline_mib']:8.1f} MiB above "
                  f"{r['baseline_mib']:.0f} MiB, loss {r['loss']:.6f}", flush=True)
    from modeling_ahn.benchmarking.bench import machine_info

    result = {"machine": machine_info("cpu"), "threads": 1,
              "model": "random Qwen2: hidden 256, 4 layers, 8 heads (2 kv), GDN; window 512, sinks 32",
              "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
