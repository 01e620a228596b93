"""Does an adapter's memory carry the document? The far-context swap and the repeat probe of
``modeling_ahn.evaluation.content``, each with a 95 % bootstrap interval over segments, on held-out text only.

    python benchmarks/content_probes.py [--adapter DIR --label NAME ...] [--segments 8] [--length 4096]
        [--prefix 2048] [--passage 256] [--gap 1536] [--window 512] [--sinks 64]
        [--out benchmarks/results/content_smollm2]

Far-context swap: held-out Austen segments, tokens ``[sinks, prefix)`` replaced by another novel's, scored at the
queries whose window holds no swapped token. Repeat probe: a ``--passage``-token passage of a held-out Paul Graham
essay recurs ``--gap`` tokens after its start (more than two windows). Float32. Writes <out>.json.
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
    add_adapter_arguments(ap)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--prefix", type=int, default=2048)
    ap.add_argument("--passage", type=int, default=256)
    ap.add_argument("--gap", type=int, default=1536)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(HERE / "results" / "content_smollm2"))
    args = ap.parse_args(argv)
    if args.gap <= 2 * args.window:
        raise SystemExit(f"--gap {args.gap} must exceed two windows ({2 * args.window})")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_ahn.benchmarking.bench import machine_info
    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.model import fetch_default
    from modeling_ahn.default.shipped import adapters_to_compare
    from modeling_ahn.evaluation.content import content_report, repeat_units, swap_units
    from modeling_ahn.evaluation.probes import segments

    base = args.base or str(fetch_default()["llama"])
    tok = AutoTokenizer.from_pretrained(base)

    def tokens(corpus):
        return [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents(corpus).values()]

    segs = segments(tokens("austen"), args.length, args.segments + 1, skip=512)
    essays = [d for d in tokens("pg_essays") if len(d) >= args.gap + 512][: args.segments]
    if len(segs) < args.segments + 1 or len(essays) < args.segments:
        raise SystemExit(f"held-out text too short: {len(segs)} segments, {len(essays)} essays")
    pairs = [(segs[i], segs[i + 1]) for i in range(args.segments)]  # round-robin: neighbours are other novels
    repeats = [d[512:] for d in essays]  # past any front matter
    report = {"machine": machine_info(args.device), "date": time.strftime("%Y-%m-%d"), "base": Path(base).name,
              "settings": {k: getattr(args, k) for k in ("segments", "length", "prefix", "passage", "gap", "window",
                                                          "sinks")}, "adapters": {}}
    for label, adapter in adapters_to_compare(args.adapter, args.label, base):
        model = AutoModelForCausalLM.from_pretrained(adapter, trust_remote_code=True, base_model=base,
                                                     sliding_window=args.window, num_sinks=args.sinks,
                                                     dtype=torch.float32).to(args.device).eval()
        swap = [swap_units(model, [p], args.prefix)[0] for p in tqdm(pairs, desc=f"{label}: far-context swap")]
        rep = [repeat_units(model, [d], args.passage, args.gap)[0] for d in tqdm(repeats, desc=f"{label}: repeat")]
        report["adapters"][label] = dict(content_report(swap, rep, args.draws), units={"swap": swap, "repeat": rep})
        r = report["adapters"][label]
        print(f"{label}: far-context swap effect (nats/token) {r['far_context_swap']['effect_nats']}, "
              f"AHN share of full {r['far_context_swap']['ahn_share_of_full']}; repeat mean log-prob "
              f"{r['repeat']['mean_logprob']}, AHN recovery {r['repeat']['ahn_recovery']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
