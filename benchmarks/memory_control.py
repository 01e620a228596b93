"""Is an AHN adapter's gain over sinks+SWA remembered *content*? A control with another document in memory.

    python benchmarks/memory_control.py [--adapter DIR --label NAME ...] [--segments 8] [--length 8192]
        [--prefix 4096] [--out benchmarks/results/memory_control_smollm2]

For held-out Austen segments A (``--length`` tokens) each paired with a segment B of another novel, the
tokens ``[sinks, prefix)`` of A are replaced by B's. Query positions ``t >= prefix + window - 1`` then attend
to the same sinks and the same window in both versions, in every layer; what differs is AHN's memory (which
first folds in B's text) and, for every method, what earlier layers' window positions carried forward from
further back (L stacked windows reach L * window tokens). So each version is scored against its own
sinks+SWA, on those positions:

- AHN's gain over sinks+SWA on the original A (nats/token, and the gap to full attention it closes);
- the same gain on the swapped A ("wrong memory").

A memory that carried nothing document-specific would give the same gain in both; the share of the gain lost
with the wrong memory is the part owed to what it remembered of *this* document. At query ``t = prefix +
window - 1 + d`` the wrong memory has folded in B's tokens and then the ``d + 1`` newest of A's, so the gains
are also reported in bins of ``d``: at small ``d`` the memory is (almost) all B, and an adapter whose memory
is short only shows a difference there.
Writes <out>.json and <out>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_ahn.default.shipped import add_adapter_arguments
from modeling_ahn.evaluation.calibration import first_unswapped_query, swap_evicted

HERE = Path(__file__).resolve().parent
BINS = (0, 16, 64, 256, 1024)  # distance bins past the first scored position


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_adapter_arguments(ap)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--prefix", type=int, default=4096, help="tokens [sinks, prefix) of A are swapped")
    ap.add_argument("--other", default="austen", help="held-out corpus B comes from: austen (another novel), "
                    "gnu_standards or pg_essays (another genre)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "memory_control_smollm2"))
    args = ap.parse_args(argv)
    start = first_unswapped_query(args.prefix, args.window)
    if start >= args.length - 1:
        raise SystemExit(f"--prefix {args.prefix} + --window {args.window} leaves no scored position in "
                         f"{args.length} tokens")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.model import fetch_default
    from modeling_ahn.default.shipped import adapters_to_compare
    from modeling_ahn.evaluation.probes import segments, token_nll

    base = args.base or str(fetch_default()["llama"])
    compared = adapters_to_compare(args.adapter, args.label, base)

    tok = AutoTokenizer.from_pretrained(base)
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents("austen").values()]
    if len(docs) < 2:
        raise SystemExit("the control needs at least two held-out documents")
    # round-robin over the novels: consecutive segments come from different books
    segs = segments(docs, args.length, args.segments + 1, skip=512)
    if len(segs) < args.segments + 1:
        raise SystemExit(f"only {len(segs)} held-out segments of {args.length} tokens exist")
    if args.other == "austen":
        others = segs[1:]
    else:  # only B's first `prefix` tokens are used
        other_docs = [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents(args.other).values()]
        others = segments(other_docs, args.prefix, args.segments)
        if len(others) < args.segments:
            raise SystemExit(f"{args.other} has only {len(others)} segments of {args.prefix} tokens")
    pairs = [(segs[i], swap_evicted(segs[i], others[i], args.sinks, args.prefix)) for i in range(args.segments)]

    def nll(model, mode, ids):
        with model.attention_mode(mode), torch.autocast("cpu", dtype=torch.bfloat16):
            return token_nll(model, torch.tensor([ids]))[start:].double()

    versions = (("original", 0), ("wrong memory", 1))
    model, per_pos = None, {}  # (method, version) -> [segments, scored positions] NLL
    for label, adapter in compared:
        model = AutoModelForCausalLM.from_pretrained(adapter, trust_remote_code=True, base_model=base,
                                                     sliding_window=args.window, num_sinks=args.sinks,
                                                     dtype=torch.bfloat16).eval()
        for kind, k in versions:
            per_pos[(label, kind)] = torch.stack([nll(model, "ahn", p[k])
                                                  for p in tqdm(pairs, desc=f"{label}: AHN, {kind}")])
    for kind, k in versions:
        per_pos[("swa", kind)] = torch.stack([nll(model, "swa", p[k]) for p in tqdm(pairs, desc=f"sinks+SWA, {kind}")])
    per_pos[("full", "original")] = torch.stack([nll(model, "full", p[0])
                                                 for p in tqdm(pairs, desc="full attention")])
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "base": Path(base).name, "segments": args.segments,
              "length": args.length, "prefix": args.prefix, "window": args.window, "sinks": args.sinks,
              "other": args.other, "positions": f"query positions {start}..{args.length - 2}",
              "ppl_full": math.exp(per_pos[("full", "original")].mean()),
              "ppl_swa": {kind: math.exp(per_pos[("swa", kind)].mean()) for kind, _ in versions}, "adapters": {}}
    edges = [e for e in BINS if e < per_pos[("full", "original")].shape[1]] + [per_pos[("full", "original")].shape[1]]
    for label, _ in compared:
        row = {"ppl_ahn": {kind: math.exp(per_pos[(label, kind)].mean()) for kind, _ in versions}}
        swa, full = report["ppl_swa"]["original"], report["ppl_full"]
        row["gap_closed"] = (swa - row["ppl_ahn"]["original"]) / (swa - full)
        gains = {kind: per_pos[("swa", kind)] - per_pos[(label, kind)] for kind, _ in versions}  # nats per token
        row["gain_nats"] = {kind: float(g.mean()) for kind, g in gains.items()}
        row["share_of_gain_from_content"] = content_share(*row["gain_nats"].values())
        # by the number of this document's tokens the wrong memory already holds (the newest ones, d + 1 at d)
        row["by_distance"] = [{"own_tokens_in_wrong_memory": [lo + 1, hi],
                               "positions": int(gains["original"][:, lo:hi].numel()),
                               **{kind: float(g[:, lo:hi].mean()) for kind, g in gains.items()}}
                              for lo, hi in zip(edges, edges[1:])]
        report["adapters"][label] = row
        print(label, json.dumps({k: v for k, v in row.items() if k != "by_distance"}))
        for r in row["by_distance"]:
            print(f"   own tokens {r['own_tokens_in_wrong_memory']}: gain {r['original']:+.4f} (as written) "
                  f"{r['wrong memory']:+.4f} (wrong memory) nats/token over {r['positions']} positions")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    plot(report, Path(args.out + ".png"))


def content_share(gain: float, kept: float) -> float | None:
    """The share of AHN's gain over sinks+SWA lost when the memory holds another document."""
    return (gain - kept) / gain if gain > 0 else None


def plot(rep, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (label, row) in enumerate(rep["adapters"].items()):
        xs = [math.sqrt(r["own_tokens_in_wrong_memory"][0] * r["own_tokens_in_wrong_memory"][1])
              for r in row["by_distance"]]
        color = f"C{i}"
        ax.plot(xs, [r["original"] for r in row["by_distance"]], "o-", color=color, label=f"{label}: as written")
        ax.plot(xs, [r["wrong memory"] for r in row["by_distance"]], "s--", color=color,
                label=f"{label}: older memory from another text")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xscale="log", xlabel="tokens of this document the wrong memory already holds (the newest ones)",
           ylabel="AHN gain over sinks+SWA (nats/token)",
           title=f"{rep['segments']} Austen segments of {rep['length']} tokens, tokens {rep['sinks']}..{rep['prefix']} "
                 f"from {'another novel' if rep.get('other', 'austen') == 'austen' else rep['other']}; "
                 f"window {rep['window']}, {rep['sinks']} sinks")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
