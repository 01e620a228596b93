"""Does the attention's mask memo pay? Forward time of a random SmolLM2-width model (8 layers), memo on vs off,
alternating in one process: a whole 4k sequence (training form, BLOCKED), a chunked 8k prefill (BANDED after the
first chunk), and 64 decoding steps (STEADY_STEP; the sink-rotation memo beyond the base's context).

    python benchmarks/memo_speed.py [--rounds 3] [--out benchmarks/results/memo_speed_cpu.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from modeling_ahn import AhnForCausalLM, window_attention
from modeling_ahn.benchmarking.bench import machine_info


def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
    m = AhnForCausalLM.from_base(LlamaForCausalLM(cfg), ahn_type="gdn", sliding_window=512, num_sinks=32,
                                 prefill_chunk_size=2048)
    return m.eval()


def workloads(m):
    ids = torch.randint(3, 49000, (1, 8192), generator=torch.Generator().manual_seed(0))

    def whole():
        m(ids[:, :4096], use_cache=False)

    def prefill():
        m(ids, use_cache=True)

    out = m(ids[:, :4096], use_cache=True)

    def decode():
        c = copy.deepcopy(out.past_key_values)
        for t in range(64):
            m(ids[:, 4096 + t: 4097 + t], past_key_values=c, use_cache=True)

    return {"whole_4k": whole, "prefill_8k": prefill, "decode_64": decode}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    m = model()
    get = window_attention.LastValueMemo.get
    times = {}
    with torch.no_grad():
        for name, fn in workloads(m).items():
            fn()  # warm-up
            for _ in range(args.rounds):
                for memo in ("on", "off"):
                    window_attention.LastValueMemo.get = get if memo == "on" else (lambda self, key, tensors: None)
                    t = time.perf_counter()
                    fn()
                    times.setdefault(name, {}).setdefault(memo, []).append(time.perf_counter() - t)
            window_attention.LastValueMemo.get = get
    def median(xs):
        return sorted(xs)[len(xs) // 2]

    report = {"machine": machine_info("cpu"), "seconds": times,
              "median_off_over_on": {k: median(v["off"]) / median(v["on"]) for k, v in times.items()}}
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
