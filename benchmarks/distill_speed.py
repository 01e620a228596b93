"""Distillation throughput (steps/s, tokens/s) of `ahn distill` on a real base at a given sequence length.

Default base: SmolLM2-135M-Instruct from `ahn fetch-default`. The corpus is the Python standard library's
source files, packed into sequences of --length tokens (speed does not depend on the text). Each
configuration runs --steps optimizer steps with batch 1; the first step (warm-up) is excluded.

    python benchmarks/distill_speed.py [--base DIR] [--length 2048] [--steps 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

from modeling_ahn.default.shipped import add_adapter_arguments
from modeling_ahn.training.distill import DistillConfig, distill


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_adapter_arguments(ap, repeatable=False)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--configs", default="fp32,bf16,bf16-nockpt",
                    help="comma-separated: fp32|bf16, with -nockpt to disable activation checkpointing and -ll for "
                         "the layer-local objective (default: end-to-end KL); e.g. fp32-nockpt,fp32-ll side by side")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.base is None:
        from modeling_ahn.default.model import fetch_default

        args.base = str(fetch_default()["llama"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = sorted(stdlib.glob("*.py"))[:200]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            objective = "layer-local" if name.endswith("-ll") else "end-to-end"
            cfg = DistillConfig(base=args.base, data=[str(p) for p in docs], output_dir=f"{tmp}/{name}",
                                max_length=args.length, min_length=args.length, pack=True, max_steps=args.steps,
                                eval_every=10**9, save_every=10**9, eval_sequences=1, bf16=name.startswith("bf16"),
                                activation_checkpointing="nockpt" not in name, lr=1e-4,
                                objective=objective)
            distill(cfg, progress=True)
            log = [json.loads(x) for x in Path(f"{tmp}/{name}/train_log.jsonl").read_text().splitlines()]
            steps = [r for r in log if "loss" in r][1:]
            secs = sum(r["step_s"] for r in steps)
            row = dict(config=name, objective=objective, length=args.length, steps=len(steps), step_s=secs / len(steps),
                       steps_per_s=len(steps) / secs, tokens_per_s=sum(r["tokens"] for r in steps) / secs)
            rows.append(row)
            print(f"{name}: {row['step_s']:.2f} s/step, {row['steps_per_s']:.3f} steps/s, "
                  f"{row['tokens_per_s']:.0f} tokens/s ({objective}, {args.length} tokens)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(base=Path(args.base).name, rows=rows, torch=torch.__version__,
                                                   threads=torch.get_num_threads(), machine=platform.machine(),
                                                   python=sys.version.split()[0]), indent=2))


if __name__ == "__main__":
    main()
