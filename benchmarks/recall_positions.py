"""Where recall slots should sit: oracle slots (chosen by position, not by the classifier) at real positions or moved.

    python benchmarks/recall_positions.py [--length 4096] [--depth 0.1]
        [--out benchmarks/results/recall_positions_smollm2]

The default model (SmolLM2-135M-Instruct + the shipped AHN-GDN adapter, window 512, 64 sinks, float32) reads the
needle probe of benchmarks/recall_slots.py. Each arm keeps a chosen range of evicted tokens exactly — the needle's own
tokens, the needle with its neighbourhood, or a long stretch — by replacing the retention score with an oracle (1
inside the range, 0 outside; ``num_recall_slots`` = the range's size, so exactly the range is kept), and places the
kept tokens either at their real positions (``recall_distance=0``) or at one distance from every query. The answer
is greedy, 24 tokens; exact = all four key words. Writes <out>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import modeling_ahn.attention_ahn as attention_ahn
from modeling_ahn import AhnForCausalLM
from modeling_ahn.evaluation.probes import NEEDLE, chat_probe, needle_score

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--depth", type=float, default=0.1)
    ap.add_argument("--out", default=str(HERE / "results" / "recall_positions_smollm2"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from recall_slots import fact_tokens, greedy
    from transformers import AutoTokenizer

    from modeling_ahn.benchmarking.bench import machine_info
    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.model import fetch_default

    base = str(fetch_default()["llama"])
    adapter = HERE.parent / "runs" / "smollm2-ahn-gdn-recall"
    model = AhnForCausalLM.from_pretrained(adapter, base_model=base, dtype=torch.float32, sliding_window=512,
                                           num_sinks=64).eval()
    tok = AutoTokenizer.from_pretrained(base)
    _, text = chat_probe(tok, "needle", args.length, args.depth, "\n\n".join(held_out_documents("pg_essays").values()))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    facts = fact_tokens(text, NEEDLE, enc["offset_mapping"])
    a, b = facts[0], facts[-1]
    last_evicted = ids.shape[1] - 512 - 1
    keep = [0, 0]

    def oracle(recall, hidden, rpos, sinks):  # 1 inside the kept range, 0 elsewhere; -inf for pads and sinks
        inside = (rpos >= keep[0]) & (rpos <= keep[1])
        return torch.where(rpos >= sinks, inside.float(), float("-inf"))

    attention_ahn.raw_scores = oracle
    arms = [("needle only", a, b, 0), ("needle +-100", a - 100, b + 100, 0), ("64 .. needle + 1000", 64, b + 1000, 0),
            ("needle .. window", a, last_evicted, 0)]
    arms += [("needle only", a, b, d) for d in (512, 1024, 2048, 3072)]
    rows = []
    for name, lo, hi, distance in arms:
        keep[:] = [lo, hi]
        t0 = time.time()
        with model.runtime(num_recall_slots=hi - lo + 1):
            model.config.recall_distance, model.config.recall_span = distance, [0, 0]
            answer, _ = greedy(model, ids, 24, {tok.eos_token_id, 2})
        out = tok.decode(answer, skip_special_tokens=True)
        rows.append({"kept": name, "range": [lo, hi], "recall_distance": distance or "real positions",
                     "real_distance_of_needle": int(ids.shape[1] - b), "score": needle_score(out),
                     "exact": needle_score(out) == 1.0, "output": out, "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    report = {"machine": machine_info("cpu"), "length": int(ids.shape[1]), "depth": args.depth,
              "needle_tokens": [a, b], "window": 512, "sinks": 64, "arms": rows}
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
