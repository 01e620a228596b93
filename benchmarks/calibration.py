"""Calibration probe on a real base: per layer and head, how much of full attention's output comes from beyond
window + sinks (far share), and how much of that depends on what the document said (content share; see
``modeling_ahn.evaluation.calibration``). Held-out Austen segments A, each with its tokens ``[sinks, prefix)``
replaced by another novel's; scored at queries whose window holds no swapped token.

    python benchmarks/calibration.py [--base DIR] [--pairs 4] [--length 4096] [--prefix 2048] [--window 512]
        [--sinks 64] [--out benchmarks/results/calibration_smollm2]

Writes <out>.json and <out>.png (float32; the base only: no adapter is involved).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_ahn.default.shipped import add_adapter_arguments

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_adapter_arguments(ap, repeatable=False)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--prefix", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "calibration_smollm2"))
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from modeling_ahn import AhnForCausalLM
    from modeling_ahn.benchmarking.bench import machine_info
    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.model import fetch_default
    from modeling_ahn.evaluation.calibration import (
        calibration_report,
        calibration_sums,
        plot_calibration,
        swap_evicted,
    )
    from modeling_ahn.evaluation.probes import segments

    base = args.base or str(fetch_default()["llama"])
    tok = AutoTokenizer.from_pretrained(base)
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents("austen").values()]
    segs = segments(docs, args.length, args.pairs + 1, skip=512)  # round-robin: neighbours are other novels
    if len(segs) < args.pairs + 1:
        raise SystemExit(f"only {len(segs)} held-out segments of {args.length} tokens exist")
    model = AhnForCausalLM.from_base(base, ahn_type="gdn", sliding_window=args.window, num_sinks=args.sinks,
                                     dtype=torch.float32).eval()
    t0 = time.perf_counter()
    sums = [calibration_sums(model, segs[i], swap_evicted(segs[i], segs[i + 1], args.sinks, args.prefix),
                             args.prefix) for i in tqdm(range(args.pairs), desc="calibration pairs")]
    report = calibration_report(sums)
    report.update(machine=machine_info("cpu"), seconds=round(time.perf_counter() - t0, 1), base=Path(base).name,
                  pairs=args.pairs, length=args.length, prefix=args.prefix, window=args.window, sinks=args.sinks,
                  title=f"{Path(base).name}: window {args.window} + {args.sinks} sinks, {args.pairs} Austen pairs")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1))
    plot_calibration(report, Path(args.out + ".png"))
    for i, far, content in zip(report["layers"], report["layer_far_share"], report["layer_content_share"]):
        print(f"layer {i:2d}: far share {far:.3f}  content share {content:.3f}")


if __name__ == "__main__":
    main()
