"""Why some layers' recall slots miss a fact, and what pooling the score over layers does (``recall_pool``).

    python benchmarks/recall_pool.py [--length 16384] [--depths 0.9,0.7] [--arms layer,oracle_all,oracle_only,mean,max]
        [--out benchmarks/results/recall_pool_smollm2]

The default model (SmolLM2-135M-Instruct + the committed retention classifier runs/smollm2-ahn-gdn-recall, window 512,
64 sinks, 64 slots, float32, one thread) reads the needle probe of benchmarks/recall_slots.py. Arms: ``layer`` (each
layer ranks by its own learned score), ``mean`` (the mean over the AHN layers up to it: the default), ``max`` (the
running maximum, by a hook on the raw scores), ``oracle_all`` (the needle's tokens forced to the top in every layer,
the rest as ``layer``), ``oracle_only`` (the needle's tokens first, every other evicted token below them). Per arm:
the greedy answer (exact = all four key words) and, per layer, how many of the needle's tokens its slots hold after
the prefill. Writes <out>.jsonl (a row per arm as it finishes).
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
from modeling_ahn.recall_slots import rounded_scores

HERE = Path(__file__).resolve().parent
ARMS = ("layer", "oracle_all", "oracle_only", "mean", "max")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--depths", default="0.9,0.7")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--out", default=str(HERE / "results" / "recall_pool_smollm2"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    arms = args.arms.split(",")
    if set(arms) - set(ARMS):
        raise SystemExit(f"--arms: choose from {ARMS}")
    from recall_slots import fact_tokens, greedy
    from transformers import AutoTokenizer

    from modeling_ahn.benchmarking.bench import machine_info
    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.model import fetch_default

    base = str(fetch_default()["llama"])
    model = AhnForCausalLM.from_pretrained(HERE.parent / "runs" / "smollm2-ahn-gdn-recall", base_model=base,
                                           dtype=torch.float32, sliding_window=512, num_sinks=64).eval()
    model.config.recall_score = "learned"
    tok = AutoTokenizer.from_pretrained(base)
    haystack = "\n\n".join(held_out_documents("pg_essays").values())
    own = attention_ahn.raw_scores
    out_path = Path(args.out + ".jsonl")
    for depth in (float(d) for d in args.depths.split(",")):
        _, text = chat_probe(tok, "needle", args.length, depth, haystack)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        facts = fact_tokens(text, NEEDLE, enc["offset_mapping"])
        lo, hi = min(facts), max(facts)
        for arm in arms:
            running = {}

            def hooked(recall, hidden, rpos, sinks, arm=arm, running=running, lo=lo, hi=hi):
                s = own(recall, hidden, rpos, sinks)
                inside = (rpos >= lo) & (rpos <= hi)
                if arm == "oracle_all":
                    return torch.where(inside & torch.isfinite(s), torch.full_like(s, 100.0), s)
                if arm == "oracle_only":
                    return torch.where(torch.isfinite(s), torch.where(inside, 100.0, -50.0), s)
                if arm == "max":  # the layers of one step see the same rpos, the first of them a new one
                    same = running.get("rpos") is not None and torch.equal(running["rpos"], rpos)
                    running.update(rpos=rpos.clone(), top=torch.maximum(running["top"], s) if same else s)
                    return rounded_scores(running["top"], rpos, sinks)
                return s

            attention_ahn.raw_scores = hooked
            t0 = time.time()
            with model.runtime(num_recall_slots=64, recall_pool="mean" if arm == "mean" else "layer"):
                answer, prefilled = greedy(model, ids, 24, {tok.eos_token_id})
            attention_ahn.raw_scores = own
            out = tok.decode(answer, skip_special_tokens=True)
            needle = set(range(lo, hi + 1))
            row = {"length": int(ids.shape[1]), "depth": depth, "arm": arm, "needle_tokens": [lo, hi],
                   "output": out, "score": needle_score(out), "exact": needle_score(out) == 1.0,
                   "needle_tokens_held_per_layer": [len(needle & set(r[0].tolist())) for r in prefilled],
                   "seconds": round(time.time() - t0, 1), "machine": machine_info("cpu")}
            with out_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("depth", "arm", "exact", "needle_tokens_held_per_layer")}),
                  flush=True)


if __name__ == "__main__":
    main()
